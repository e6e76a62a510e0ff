"""A small Keras 3 layer over `horovod.tensorflow`.

Horovod's own Keras module does not work with Keras 3 (its DistributedOptimizer
silently stops averaging, its callbacks use removed Keras 2 APIs), so we own:
process setup, a distributed optimizer wrapper, and the broadcast and metric-averaging
callbacks. Every Horovod call is on a line marked `# HVD`. Without Horovod installed
(or outside `horovodrun`) everything runs as one process.
"""

import os

import keras
import tensorflow as tf

try:
    import horovod.tensorflow as hvd  # HVD
except ImportError:  # pragma: no cover - exercised on machines without Horovod
    hvd = None

COMPRESSIONS = ("none", "fp16")


def init():
    """Initializes Horovod (when present) and sets threads per process.

    Must run before TensorFlow creates its thread pools (before any op runs).
    """
    if hvd is not None:
        hvd.init()  # HVD
    # Processes on one host share its cores: each gets cores / local_size threads.
    threads = max(1, (os.cpu_count() or 1) // local_size())
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    except RuntimeError:
        pass  # TensorFlow already initialized (e.g. inside tests): keep its pools.
    return threads


def _on():
    return hvd is not None and hvd.is_initialized() and hvd.size() > 1  # HVD


def rank():
    return hvd.rank() if _on() else 0  # HVD


def size():
    return hvd.size() if _on() else 1  # HVD


def local_size():
    return hvd.local_size() if hvd is not None and hvd.is_initialized() else 1  # HVD


def is_chief():
    return rank() == 0


def broadcast_variables(variables, root_rank=0):
    """Copies `variables` (Keras variables) from `root_rank` to every process."""
    if _on() and variables:
        hvd.broadcast_variables([v.value for v in variables], root_rank=root_rank)  # HVD


def broadcast_object(obj, root_rank=0):
    return hvd.broadcast_object(obj, root_rank=root_rank) if _on() else obj  # HVD


def allreduce_mean(values, name=None):
    """Averages a list of float scalars over processes (returns Python floats)."""
    if not _on():
        return [float(v) for v in values]
    out = hvd.allreduce(tf.constant(values, tf.float64), op=hvd.Average, name=name)  # HVD
    return [float(v) for v in out.numpy()]


def allreduce_gradients(grads, compression="none", sparse_as_dense=False):
    """Averages gradients over processes: one grouped allreduce for the dense ones,
    one grouped allgather-based reduction for the IndexedSlices (mixing both in one
    group is buggy upstream, horovod issue 3994)."""
    if not _on():
        return list(grads)
    grads = [tf.convert_to_tensor(g) if sparse_as_dense and isinstance(g, tf.IndexedSlices) else g for g in grads]
    comp = hvd.Compression.fp16 if compression == "fp16" else hvd.Compression.none  # HVD
    out = list(grads)
    dense = [i for i, g in enumerate(grads) if g is not None and not isinstance(g, tf.IndexedSlices)]
    sparse = [i for i, g in enumerate(grads) if isinstance(g, tf.IndexedSlices)]
    for group in (dense, sparse):
        if group:
            reduced = hvd.grouped_allreduce([grads[i] for i in group], op=hvd.Average, compression=comp)  # HVD
            for i, r in zip(group, reduced):
                out[i] = r
    return out


@keras.saving.register_keras_serializable(package="keras_sngm")
class DistributedOptimizer(keras.optimizers.Optimizer):
    """Wraps any Keras optimizer: averages gradients over Horovod processes.

    With `accumulation_steps=k`, gradients of k micro-batches are summed locally and
    averaged over processes once per update (one allreduce per update, not per
    micro-batch); the inner optimizer then sees the mean gradient of the global batch
    and steps once. Checkpoints hold the accumulators and the inner optimizer state.

    Args:
        inner_optimizer: the `keras.optimizers.Optimizer` that updates the weights.
        accumulation_steps: int >= 1, micro-batches per update. Defaults to `1`.
        compression: `"none"` or `"fp16"` (allreduce in half precision).
            Defaults to `"none"`.
        sparse_as_dense: reduce `IndexedSlices` gradients as dense tensors.
            Defaults to `False`.
        name: String. Defaults to `None`.

    References:
        - [Sergeev and Del Balso, 2018](https://arxiv.org/abs/1802.05799), "Horovod:
          fast and easy distributed deep learning in TensorFlow".
    """

    def __init__(self, inner_optimizer, accumulation_steps=1, compression="none", sparse_as_dense=False, name=None):
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise ValueError(f"`inner_optimizer` must be a keras.optimizers.Optimizer. Received: inner_optimizer={inner_optimizer!r}")
        if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(f"`accumulation_steps` must be an int >= 1. Received: accumulation_steps={accumulation_steps!r}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"`compression` must be one of {COMPRESSIONS}. Received: compression={compression!r}")
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer
        self.accumulation_steps = accumulation_steps
        self.compression = compression
        self.sparse_as_dense = bool(sparse_as_dense)

    def build(self, var_list):
        if self.built:
            return
        self.inner_optimizer.build(var_list)
        if self.accumulation_steps > 1:
            self.micro_step = self.add_variable(shape=(), dtype="int64", name="micro_step")
            self.accumulators = self.add_optimizer_variables(var_list, "accumulator")
        super().build(var_list)

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    def apply(self, grads, trainable_variables=None):
        if trainable_variables is None:
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        if not self.built:
            self.build(trainable_variables)
        pairs = [(g, v) for g, v in zip(grads, trainable_variables) if g is not None]
        grads, variables = [g for g, _ in pairs], [v for _, v in pairs]
        reduce = lambda gs: allreduce_gradients(gs, self.compression, self.sparse_as_dense)  # noqa: E731
        if self.accumulation_steps == 1:
            self.inner_optimizer.apply(reduce(grads), variables)
            return
        accs = [self.accumulators[self._get_variable_index(v)] for v in variables]
        for acc, g in zip(accs, grads):
            acc.assign_add(tf.convert_to_tensor(g))
        self.micro_step.assign_add(1)

        def update():
            mean = [acc / self.accumulation_steps for acc in accs]
            self.inner_optimizer.apply(reduce(mean), variables)
            for acc in accs:
                acc.assign(tf.zeros_like(acc))
            return tf.constant(True)

        tf.cond(self.micro_step % self.accumulation_steps == 0, update, lambda: tf.constant(False))

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "accumulation_steps": self.accumulation_steps,
            "compression": self.compression,
            "sparse_as_dense": self.sparse_as_dense,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(config.pop("inner_optimizer"), custom_objects=custom_objects)
        return cls(inner, **config)


class BroadcastCallback(keras.callbacks.Callback):
    """Copies model and optimizer variables from rank 0 to all processes when training
    starts (after they are built, and after a resume has loaded rank 0's checkpoint)."""

    def on_train_begin(self, logs=None):
        self.model.optimizer.build(self.model.trainable_variables)
        broadcast_variables(self.model.variables + self.model.optimizer.variables)


class MetricAverageCallback(keras.callbacks.Callback):
    """Averages epoch logs over processes, so every rank (and TensorBoard, checkpoints,
    History) sees global values. Exact for mean metrics (loss, accuracy) over equal
    shards; metrics that are not means of per-example values (AUC) should be
    evaluated on unsharded data (the trainers' validation is)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not _on():
            return
        keys = sorted(k for k, v in logs.items() if isinstance(v, (int, float)) or hasattr(v, "dtype"))
        for k, v in zip(keys, allreduce_mean([float(logs[k]) for k in keys], name=f"metric_average_{epoch}")):
            logs[k] = v
