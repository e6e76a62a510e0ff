"""In-memory data as NumPy batches (`keras.utils.PyDataset`), for hosts without
TensorFlow (the JAX engine): the ResNet trainer's images (synthetic, CIFAR), DeepFM's
synthetic rows and Criteo text files small enough to hold (planted data). Where TensorFlow
is installed both engines read through tf.data (trainers/data/images.py,
trainers/data/criteo.py) instead.

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


class Stream(keras.utils.PyDataset):
    """One worker's training micro-batches of `n` examples from micro-batch `start` of epoch
    `first_epoch` on (item i is the (start + i)-th), `micro_steps` per epoch (default: all
    complete ones). Subclasses draw what else an epoch needs (`_draw`) and make a batch
    (`_batch`)."""

    def __init__(self, n, micro_batch, seed, first_epoch, rank=0, size=1, micro_steps=None, start=0):
        super().__init__()
        self.n, self.micro_batch, self.seed, self.first_epoch, self.rank, self.size = (n, micro_batch, seed,
                                                                                       first_epoch, rank, size)
        self.micro_steps = micro_steps or n // (micro_batch * size)
        self.start, self._drawn = start, (None, None)

    def __len__(self):
        return 2**40  # endless: fit's steps_per_epoch ends each call

    def _draw(self, rng):
        return ()

    def __getitem__(self, i):
        position = self.start + i
        epoch, t = self.first_epoch + position // self.micro_steps, position % self.micro_steps
        g = t * self.size + self.rank  # the micro-batch's place in the epoch, over all workers
        if self._drawn[0] != epoch:  # the epoch's order, and what else it draws: from (seed, epoch)
            rng = np.random.default_rng([self.seed, epoch])
            self._drawn = (epoch, (rng.permutation(self.n), *self._draw(rng)))
        order, *drawn = self._drawn[1]
        places = slice(g * self.micro_batch, (g + 1) * self.micro_batch)
        return self._batch(order[places], places, drawn)


class ImageStream(Stream):
    """Images: each example's crop offsets and flip are drawn for its place in the epoch (the
    same whatever the micro-batch and the workers)."""

    def __init__(self, x, y, num_classes, micro_batch, seed, first_epoch, rank=0, size=1, augment=True,
                 micro_steps=None, start=0):
        super().__init__(len(x), micro_batch, seed, first_epoch, rank, size, micro_steps, start)
        self.x, self.y, self.num_classes, self.augment = x, y, num_classes, augment
        self.pad = 4 if x.shape[1] <= 64 else x.shape[1] // 8

    def _draw(self, rng):
        return rng.integers(0, 2 * self.pad + 1, size=(2, self.n)), rng.random(self.n) < 0.5

    def _batch(self, idx, places, drawn):
        offsets, flips = drawn
        images = self.x[idx]
        if self.augment:
            images = self._augmented(images, offsets[:, places], flips[places])
        return normalize(images, self.num_classes), self.y[idx]

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


class RowStream(Stream):
    """Criteo rows held in memory (`load_criteo`): {"dense", "categorical"} and labels."""

    def __init__(self, rows, micro_batch, seed, first_epoch, rank=0, size=1, micro_steps=None, start=0):
        super().__init__(len(rows[1]), micro_batch, seed, first_epoch, rank, size, micro_steps, start)
        self.rows = rows

    def _batch(self, idx, places, drawn):
        (dense, ids), labels = self.rows
        return {"dense": dense[idx], "categorical": ids[idx]}, labels[idx]


class RowBatches(keras.utils.PyDataset):
    """All rows in order, in batches of `batch_size` (evaluation)."""

    def __init__(self, rows, batch_size):
        super().__init__()
        self.rows, self.batch_size = rows, batch_size

    def __len__(self):
        return -(-len(self.rows[1]) // self.batch_size)

    def __getitem__(self, i):
        (dense, ids), labels = self.rows
        part = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return {"dense": dense[part], "categorical": ids[part]}, labels[part]


def load_criteo(files, hash_space, skip_bad_rows=False):
    """Criteo text files (`keras_sngm_trainers.data.criteo`'s formats) read into memory:
    ((dense [n, 13] log(1 + max(x, 0)), 0 when missing; categorical ids [n, 26]), labels
    [n, 1]), and the malformed rows skipped. Categoricals: "C<i>=<value>" hashed by CRC-32
    into `hash_space` buckets (tf.data's reader uses FarmHash: the same buckets only by
    chance). A malformed row is a ValueError naming the file, line and reason, unless
    `skip_bad_rows`."""
    import zlib

    from keras_sngm_trainers.data import criteo

    dense, ids, labels, skipped, buckets = [], [], [], 0, [{} for _ in range(26)]
    for path in files:
        sep = "," if criteo.file_format(path) == "csv" else "\t"
        with criteo._open(path) as f:
            text = f.read().decode("utf-8")
        lines = text.split("\n")
        first = 1 if sep == "," else 0
        for number, line in enumerate(lines[first:], first + 1):
            if not line.strip():
                continue
            fields = line.rstrip("\r").split(sep)
            try:
                if len(fields) > 40:
                    raise ValueError(f"{len(fields)} fields, more than Criteo's 40")
                fields += [""] * (40 - len(fields))
                if fields[0] not in ("0", "1"):
                    raise ValueError(f"label {fields[0]!r} is not 0 or 1")
                values = [float(x) if x else np.nan for x in fields[1:14]]
            except ValueError as e:
                if skip_bad_rows:
                    skipped += 1
                    continue
                raise criteo.CriteoFormatError(f"malformed Criteo row in {path}, line {number}: {e}") from None
            labels.append(float(fields[0]))
            dense.append(values)
            row = []
            for c, value in enumerate(fields[14:]):
                bucket = buckets[c].get(value)
                if bucket is None:
                    bucket = buckets[c][value] = zlib.crc32(f"C{c + 1}={value}".encode()) % hash_space
                row.append(bucket)
            ids.append(row)
    x = np.asarray(dense, np.float64).reshape(-1, 13)
    x = np.where(np.isnan(x), 0.0, np.log1p(np.maximum(np.nan_to_num(x), 0.0))).astype(np.float32)
    return ((x, np.asarray(ids, np.int64).reshape(-1, 26)), np.asarray(labels, np.float32).reshape(-1, 1)), skipped


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
