"""In-memory data as NumPy batches (`keras.utils.PyDataset`), for hosts without
TensorFlow (the JAX engine): the ResNet trainer's images (synthetic, CIFAR) and DeepFM's
synthetic rows. Where TensorFlow is installed both engines read through tf.data
(trainers/data/images.py, trainers/data/criteo.py) instead.

The rules are tf.data's, drawn from NumPy's generator: epoch e is a pure function of
(seed, e), a permutation cut into micro-batches, micro-batch t to rank t % size, and each
example's augmentation (pad + random crop, horizontal flip) drawn from (seed, e) for its
place in the epoch.
So N workers see the micro-batches of one process with the same global batch, and a
resumed run sees what an uninterrupted one would have. The order is not tf.data's
(another generator).
"""

import keras
import numpy as np

from keras_sngm_trainers.data.images import CIFAR_MEAN, CIFAR_STD


def tensorflow_available():
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def normalize(x, num_classes):
    mean = np.asarray(CIFAR_MEAN.get(num_classes, (0.5, 0.5, 0.5)), np.float32)
    std = np.asarray(CIFAR_STD.get(num_classes, (0.25, 0.25, 0.25)), np.float32)
    return (x.astype(np.float32) / 255.0 - mean) / std


class ImageStream(keras.utils.PyDataset):
    """One worker's training micro-batches from micro-batch `start` of epoch `first_epoch`
    on (item i is the (start + i)-th), `micro_steps` per epoch (default: all complete ones)."""

    def __init__(self, x, y, num_classes, micro_batch, seed, first_epoch, rank=0, size=1, augment=True,
                 micro_steps=None, start=0):
        super().__init__()
        self.x, self.y, self.num_classes, self.micro_batch = x, y, num_classes, micro_batch
        self.seed, self.first_epoch, self.rank, self.size, self.augment = seed, first_epoch, rank, size, augment
        self.micro_steps = micro_steps or len(x) // (micro_batch * size)
        self.start, self.pad = start, 4 if x.shape[1] <= 64 else x.shape[1] // 8
        self._order = (None, None)

    def __len__(self):
        return 2**40  # endless: fit's steps_per_epoch ends each call

    def _epoch(self, epoch):
        """The epoch's order, and each place's crop offsets and flip: drawn from (seed, epoch)."""
        if self._order[0] != epoch:
            rng, n = np.random.default_rng([self.seed, epoch]), len(self.x)
            self._order = (epoch, (rng.permutation(n), rng.integers(0, 2 * self.pad + 1, size=(2, n)), rng.random(n) < 0.5))
        return self._order[1]

    def __getitem__(self, i):
        position = self.start + i
        epoch, t = self.first_epoch + position // self.micro_steps, position % self.micro_steps
        g = t * self.size + self.rank  # the micro-batch's place in the epoch, over all workers
        places = slice(g * self.micro_batch, (g + 1) * self.micro_batch)
        order, offsets, flips = self._epoch(epoch)
        images = self.x[order[places]]
        if self.augment:  # (drawn per place in the epoch: the same whatever the micro-batch and the workers)
            images = self._augmented(images, offsets[:, places], flips[places])
        return normalize(images, self.num_classes), self.y[order[places]]

    def _augmented(self, images, offsets, flips):
        n, h, w, _ = images.shape
        p = self.pad
        padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        dy, dx = offsets
        out = np.stack([padded[k, dy[k]:dy[k] + h, dx[k]:dx[k] + w] for k in range(n)])
        out[flips] = out[flips, :, ::-1]
        return out


class ImageBatches(keras.utils.PyDataset):
    """All of (x, y) in batches of `batch_size`, in order (evaluation: every worker all of it)."""

    def __init__(self, x, y, num_classes, batch_size):
        super().__init__()
        self.x, self.y, self.num_classes, self.batch_size = x, y, num_classes, batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, i):
        part = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return normalize(self.x[part], self.num_classes), self.y[part]


class SyntheticRows(keras.utils.PyDataset):
    """An endless stream of random Criteo-shaped rows (benchmarks): dense values log1p of
    log-normal counts, ids skewed towards small buckets, labels 1 with probability 0.25,
    independent of x; batch i drawn from (seed, rank, i)."""

    def __init__(self, batch_size, hash_space, seed=0, rank=0):
        super().__init__()
        self.batch_size, self.hash_space, self.seed, self.rank = batch_size, hash_space, seed, rank

    def __len__(self):
        return 2**40

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.rank, i])
        b = self.batch_size
        counts = np.floor(np.exp(rng.normal(1.5, 1.5, size=(b, 13))))
        u = rng.random((b, 26))
        ids = np.floor(u * u * u * self.hash_space).astype(np.int64)
        y = (rng.random((b, 1)) < 0.25).astype(np.float32)
        return {"dense": np.log1p(counts).astype(np.float32), "categorical": ids}, y
