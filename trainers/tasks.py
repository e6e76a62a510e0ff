"""What each trainer trains: model, loss, metrics and data, behind one small interface."""

import json
import os
import types

import keras
import numpy as np

from keras_sngm_trainers import engines
from keras_sngm_trainers.data import arrays, criteo, criteo_binary, dense_transform, images, sharding
from keras_sngm_trainers.models import deepfm, resnet, twoconv


def streamed(what):
    """The tf.data module `what` of trainers/data (criteo, criteo_binary, imagenet, ...);
    ValueError naming the install where TensorFlow is missing (the JAX engine trains on
    synthetic and in-memory data without it)."""
    import importlib

    if not arrays.tensorflow_available():
        raise ValueError("this data is read through tf.data, and TensorFlow is not installed: pip install "
                         "tensorflow-cpu (without it, --engine jax trains on synthetic data and CIFAR held in memory)")
    return importlib.import_module(f"keras_sngm_trainers.data.{what}")


class ResNetTask:
    name = "resnet"

    def __new__(cls, cfg):  # `sngm-train resnet --dataset imagenet` streams instead of holding images in memory
        return super().__new__(ImageNetTask if cls is ResNetTask and cfg.dataset == "imagenet" else cls)

    def __init__(self, cfg):
        self.cfg = cfg
        if cfg.dataset == "synthetic":
            x, y = images.synthetic(cfg.train_subset or 4096, cfg.image_size, cfg.num_classes or 10, cfg.seed)
            self.train, self.test, self.num_classes = (x, y), (x[:256], y[:256]), cfg.num_classes or 10
            self.source = "synthetic random images"
        else:
            self.train, self.test, self.num_classes, self.source = images.load(
                cfg.dataset, cfg.data_dir, cfg.tfds_dir, cfg.download, cfg.image_size)
            self.train = _subset(self.train, cfg.train_subset, 0)  # the same subset for every seed and optimizer
            self.test = _subset(self.test, cfg.test_subset, 1)
        self.val = None
        if cfg.validation_split:
            if not 0 < cfg.validation_split < 1:
                raise ValueError(f"--validation-split must be in (0, 1). Received: {cfg.validation_split}")
            x, y = self.train
            idx = np.random.default_rng(2).permutation(len(x))  # a fixed draw: every run tunes on the same examples
            cut = int(round(len(x) * cfg.validation_split))
            self.val = (x[idx[:cut]], y[idx[:cut]])
            self.train = (x[np.sort(idx[cut:])], y[np.sort(idx[cut:])])
        self.image_size = self.train[0].shape[1]
        self.num_train = len(self.train[0])
        self.numpy = not arrays.tensorflow_available()  # NumPy batches (trainers/data/arrays.py), else tf.data
        # tf.data: train_dataset's first_epoch and start may be variables (trainers/segments.py)
        self.position_variables = not self.numpy

    def model(self):
        if self.cfg.arch == "twoconv":
            return twoconv.build(self.num_classes, self.image_size)
        return resnet.build(self.cfg.depth, self.num_classes, self.image_size)

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def metrics(self):
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def train_dataset(self, first_epoch, rank, size, micro_batch, start=0):
        pipeline = arrays.ImageStream if self.numpy else images.train_dataset
        return pipeline(*self.train, self.num_classes, micro_batch, self.cfg.seed, first_epoch, rank, size,
                        augment=self.cfg.augment, micro_steps=self.micro_steps_per_epoch, start=start)

    def _eval(self, data):
        return (arrays.ImageBatches if self.numpy else images.eval_dataset)(*data, self.num_classes, self.cfg.eval_batch)

    def eval_dataset(self):
        """Evaluated every epoch: the validation split when there is one, else the test set."""
        return self._eval(self.val or self.test)

    def test_dataset(self):
        """Evaluated once after training when a validation split was used for tuning."""
        return self._eval(self.test) if self.val else None

    def describe(self):
        return {"data_source": self.source, "train_examples": self.num_train, "test_examples": len(self.test[0]),
                "validation_examples": len(self.val[0]) if self.val else 0,
                "classes": self.num_classes, "image_size": self.image_size}


class ImageNetTask(ResNetTask):
    """ImageNet read from disk as training goes (trainers/data/imagenet.py finds it,
    trainers/data/imagenet_input.py streams it); the ImageNet ResNets at any --image-size."""
    position_variables = False  # (its epochs are long: one dataset per fit call costs little)

    def __init__(self, cfg):
        self.cfg = cfg
        self.data = streamed("imagenet").find(cfg.data_dir, cfg.tfds_dir, cfg.download, cfg.verbose)
        self.num_classes, self.image_size = self.data.num_classes, cfg.image_size
        self.num_train, self.source = self.data.train.size, self.data.description
        self.bad_rows = streamed("criteo").BadRowCounter() if cfg.skip_bad_images else None

    def updates_per_epoch(self, global_batch, micro_batch, workers):
        """Updates every worker can fill from its own share (the smallest share decides)."""
        records = min(streamed("imagenet_input").records_of_worker(self.data.train, r, workers, micro_batch) for r in range(workers))
        return records // (global_batch // workers)

    def model(self):
        if self.cfg.arch == "twoconv":  # cheap runs on ImageNet-format data (the tests, CPU studies)
            return twoconv.build(self.num_classes, self.image_size)
        return resnet.imagenet_resnet(self.cfg.depth, self.num_classes, (self.image_size, self.image_size, 3))

    def train_dataset(self, first_epoch, rank, size, micro_batch, start=0):
        c = self.cfg
        return streamed("imagenet_input").train_dataset(self.data.train, self.image_size, micro_batch, c.seed, first_epoch, c.epochs,
                                            rank, size, self.micro_steps_per_epoch, c.shuffle_buffer, c.augment,
                                            c.skip_bad_images, self.bad_rows, start)

    def eval_dataset(self):
        """The validation split, each worker its share (the epoch logs are averaged over workers)."""
        return streamed("imagenet_input").eval_dataset(self.data.validation, self.image_size, self.cfg.eval_batch,
                                           engines.current().rank(), engines.current().size(), self.cfg.skip_bad_images,
                                           self.bad_rows)

    def test_dataset(self):
        return None

    def describe(self):
        return {"data_source": self.source, "train_examples": self.num_train,
                "validation_examples": self.data.validation.size, "classes": self.num_classes,
                "image_size": self.image_size, "train_files": len(self.data.train.files)}


def _subset(data, n, seed):
    """A class-stratified-by-chance fixed subset (the same for every optimizer and batch size)."""
    x, y = data
    if not n or n >= len(x):
        return data
    idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:n])
    return x[idx], y[idx]


@keras.saving.register_keras_serializable(package="keras_sngm")
class SummedOverBatch(keras.losses.Loss):
    """The log loss summed over the global batch of an update (DeepCTR-Torch's
    `reduction='sum'`): each micro-batch's mean times `global_batch`. The engine averages
    the micro-batch gradients of an update over micro-batches and workers, so the update's
    gradient is that of the sum over all its `global_batch` examples."""

    def __init__(self, global_batch, name="summed_log_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.global_batch = global_batch

    def call(self, y_true, y_pred):
        return self.global_batch * keras.losses.binary_crossentropy(y_true, y_pred, from_logits=True)

    def get_config(self):
        return {**super().get_config(), "global_batch": self.global_batch}


class DeepFMTask:
    name = "deepfm"

    def __init__(self, cfg):
        self.cfg = cfg
        self.synthetic = cfg.data == "synthetic"
        # Without TensorFlow, text files are held in memory as arrays (trainers/data/arrays.py); else tf.data.
        self.numpy = not arrays.tensorflow_available()
        self.bad_rows = criteo.BadRowCounter() if cfg.skip_bad_rows and not self.numpy else None
        self.truth, self.rows, self.loaded = None, None, {}
        if self.synthetic:  # random rows of the right shape: no files, no parsing (benchmarks)
            self.train_files, self.file_lines = [], []
            self.num_train = cfg.train_rows or 2**20
            self.dense = dense_transform.LOG1P
        elif criteo_binary.is_prepared(cfg.data):  # `sngm-train prep-criteo` output: no parsing
            if self.numpy:
                streamed("criteo_binary")  # (its records are read through tf.data: names the install)
            meta = criteo_binary.load_meta(cfg.data, cfg.hash_space, cfg.dense_transform)
            self.train_files = criteo_binary.shards(cfg.data)
            self.file_lines = [s["rows"] for s in meta["shards"]]
            self.num_train = cfg.train_rows or meta["rows"]
            self.train_source = cfg.data
            self.dense = meta.get("dense_transform", dense_transform.LOG1P)
        elif self.numpy:
            self.train_files = self.train_source = criteo.resolve_files(cfg.data)
            if cfg.dense_transform == "minmax":
                raise ValueError("--dense-transform minmax is fitted through tf.data, and TensorFlow is not installed: "
                                 "pip install tensorflow-cpu (or --dense-transform log1p)")
            self.rows = self._load(self.train_files)
            self.file_lines, self.num_train, self.dense = [], len(self.rows[1]), dense_transform.LOG1P
        else:
            self.train_files = criteo.resolve_files(cfg.data)
            size = sum(os.path.getsize(f) for f in self.train_files)
            if not cfg.train_rows and size > 2**28 and cfg.verbose:
                print(f"counting rows in {len(self.train_files)} files ({size / 1e9:.1f} GB on disk; pass --train-rows "
                      "to skip this pass)", flush=True)
            self.file_lines = [] if cfg.train_rows else [criteo.count_lines(f) for f in self.train_files]
            self.num_train = cfg.train_rows or sum(self.file_lines)
            self.train_source = self.train_files
            # min-max: fitted on the training files, one pass (every worker makes the same one)
            self.dense = (criteo.fit_minmax(self.train_files, cfg.skip_bad_rows)
                          if cfg.dense_transform == "minmax" else dense_transform.LOG1P)
        if self.train_files and not criteo_binary.is_prepared(cfg.data):  # text: gen-criteo's truth.json beside it
            truth = os.path.join(os.path.dirname(self.train_files[0]), "truth.json")
            self.truth = json.load(open(truth)) if os.path.isfile(truth) else None
        self.test_files = self._source(cfg.test_data)
        self.val_files = self._source(cfg.val_data)

    def _load(self, files):
        """Text files as in-memory arrays (no TensorFlow), read once; the rows skipped are counted."""
        key = tuple(files)
        if key not in self.loaded:
            self.loaded[key], skipped = arrays.load_criteo(files, self.cfg.hash_space, self.cfg.skip_bad_rows)
            if self.cfg.skip_bad_rows:
                self.bad_rows = self.bad_rows or types.SimpleNamespace(count=0)
                self.bad_rows.count += skipped
        return self.loaded[key]

    def _source(self, path):
        """A prepared folder (kept as its path) or Criteo text files; None when not given.
        A prepared folder's dense transform must be the training data's."""
        if not path:
            return None
        if criteo_binary.is_prepared(path):
            if self.numpy:
                streamed("criteo_binary")
            meta = criteo_binary.load_meta(path, self.cfg.hash_space, self.cfg.dense_transform)
            if not dense_transform.same(meta.get("dense_transform"), self.dense):
                raise criteo.CriteoFormatError(
                    f"{path} was prepared with another min-max fit than the training data's ({self.cfg.data}): "
                    f"prepare it with `prep-criteo --dense-transform minmax --fit-data <the training files>`")
            return path
        return criteo.resolve_files(path)

    def _rows(self, source, batch, rank=0, size=1, shuffle=0, epoch=0, drop_remainder=True):
        """Batches from a prepared folder (a path) or text files (a list)."""
        c = self.cfg
        if isinstance(source, str):
            return criteo_binary.dataset(source, batch, rank, size, shuffle, c.seed, epoch, drop_remainder=drop_remainder)
        return criteo.dataset(source, batch, c.hash_space, rank, size, c.skip_bad_rows, self.bad_rows, shuffle, c.seed,
                              epoch, drop_remainder=drop_remainder, dense=self.dense)

    def updates_per_epoch(self, global_batch, micro_batch, workers):
        """Updates every worker can fill from its own shard (the smallest shard decides)."""
        if not self.file_lines or workers == 1:
            return self.num_train // global_batch
        rows = min(sharding.rows_of_worker(self.file_lines, r, workers, micro_batch) for r in range(workers))
        return rows // (global_batch // workers)

    def model(self):
        c = self.cfg
        if c.deepfm_variant == "deepctr":
            return deepfm.deepctr_deepfm(c.hash_space, c.embedding_dim, tuple(c.hidden), c.dropout)
        return deepfm.deepfm(c.hash_space, c.embedding_dim, tuple(c.hidden), c.dropout)

    @property
    def loss(self):
        if self.cfg.loss_reduction == "sum":
            return SummedOverBatch(self.cfg.batch_size)
        return keras.losses.BinaryCrossentropy(from_logits=True)

    def metrics(self):
        return [keras.metrics.AUC(from_logits=True, num_thresholds=2000, name="auc"),
                keras.metrics.BinaryCrossentropy(from_logits=True, name="logloss")]

    def train_dataset(self, first_epoch, rank, size, micro_batch, start=0):
        """This worker's micro-batches from epoch `first_epoch`, its first `start` skipped."""
        c = self.cfg
        if self.synthetic:
            if self.numpy:
                return arrays.SyntheticRows(micro_batch, c.hash_space, c.seed, rank)
            return criteo.synthetic(micro_batch, c.hash_space, c.seed, rank)
        if self.numpy:
            return arrays.RowStream(self.rows, micro_batch, c.seed, first_epoch, rank, size, self.micro_steps_per_epoch,
                                    start)
        # One pipeline per epoch (its shuffle seed depends on the epoch), chained.
        per_epoch = [self._rows(self.train_source, micro_batch, rank, size, c.shuffle_buffer, e).take(self.micro_steps_per_epoch)
                     for e in range(first_epoch, max(c.epochs, first_epoch + 1))]
        ds = per_epoch[0].skip(start)  # (parsed, then dropped: the position within the epoch)
        for more in per_epoch[1:]:
            ds = ds.concatenate(more)
        return ds.repeat()  # fit stops after epochs x steps; Keras may look one batch ahead

    def _eval(self, source):
        if not source:
            return None
        if self.numpy:
            return arrays.RowBatches(self._load(source), self.cfg.eval_batch)
        return self._rows(source, self.cfg.eval_batch, drop_remainder=False)

    def eval_dataset(self):
        """Evaluated every epoch: --val-data when given, else --test-data."""
        return self._eval(self.val_files or self.test_files)

    def test_dataset(self):
        """Evaluated once after training when --val-data was used for tuning."""
        return self._eval(self.test_files) if self.val_files else None

    def describe(self):
        d = {"train_files": self.train_files or "synthetic", "test_files": self.test_files, "train_rows_found": self.num_train,
             "dense": self.dense}
        if self.truth:
            d["best_test_auc"] = self.truth.get("best_test_auc")
        return d


TASKS = {"resnet": ResNetTask, "deepfm": DeepFMTask}
