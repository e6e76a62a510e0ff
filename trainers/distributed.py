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

from keras_sngm.noise_scale import NoiseScaleEstimator
from keras_sngm_trainers.wrapper import Wrapper

try:
    import horovod.tensorflow as hvd  # HVD
except ImportError:  # pragma: no cover - exercised on machines without Horovod
    hvd = None

COMPRESSIONS = ("none", "fp16")


def init(threads=0):
    """Initializes Horovod (when present), gives this process the GPU of its local rank
    (`pin_gpu`), and sets threads per process: `threads`, or when 0 the host's cores /
    local processes. Returns the threads.

    Must run before TensorFlow creates its thread pools (before any op runs).
    """
    if hvd is not None:
        hvd.init()  # HVD
    pin_gpu()
    # Processes on one host share its cores: each gets cores / local_size threads.
    threads = threads or max(1, (os.cpu_count() or 1) // local_size())
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    except RuntimeError:
        pass  # TensorFlow already initialized (e.g. inside tests): keep its pools.
    return threads


def local_rank():
    return hvd.local_rank() if hvd is not None and hvd.is_initialized() else 0  # HVD


def pin_gpu():
    """One GPU per local process (the GPU of its local rank), memory allocated as it grows, so
    N processes on an N-GPU host neither share GPU 0 nor take each other's memory. Returns
    the GPU kept, or None on a host without one. Must run before TensorFlow uses a GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    mine = gpus[local_rank() % len(gpus)]
    try:
        tf.config.set_visible_devices(mine, "GPU")
        tf.config.experimental.set_memory_growth(mine, True)
    except RuntimeError:
        pass  # TensorFlow already initialized its GPUs (e.g. inside tests): keep its placement.
    return mine


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


def agreed(obj, what):
    """Raises RuntimeError unless every process holds the same `obj`; returns the number of
    processes that agreed."""
    if not _on():
        return 1
    seen = hvd.allgather_object(obj)  # HVD
    if any(other != seen[0] for other in seen):
        differing = [r for r, other in enumerate(seen) if other != seen[0]]
        raise RuntimeError(f"the workers disagree on {what}: ranks {differing} differ from rank 0")
    return len(seen)


def allreduce_mean(values, name=None):
    """Averages a list of float scalars over processes (returns Python floats)."""
    if not _on():
        return [float(v) for v in values]
    out = hvd.allreduce(tf.constant(values, tf.float64), op=hvd.Average, name=name)  # HVD
    return [float(v) for v in out.numpy()]


def allreduce_max(values, name=None):
    """The largest of each float scalar over processes (returns Python floats): a verdict
    any one rank can raise."""
    if not _on():
        return [float(v) for v in values]
    out = hvd.allreduce(tf.constant(values, tf.float64), op=hvd.Max, name=name)  # HVD
    return [float(v) for v in out.numpy()]


def allgather_object(obj):
    """Every process's `obj`, in rank order (a one-item list in one process)."""
    return hvd.allgather_object(obj) if _on() else [obj]  # HVD


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


def _scaled(g, factor):
    """g * factor, keeping IndexedSlices sparse."""
    if isinstance(g, tf.IndexedSlices):
        return tf.IndexedSlices(g.values * tf.cast(factor, g.values.dtype), g.indices, g.dense_shape)
    return g * tf.cast(factor, g.dtype)


@keras.saving.register_keras_serializable(package="keras_sngm")
class DistributedOptimizer(Wrapper, keras.optimizers.Optimizer):
    """Wraps any Keras optimizer: averages gradients over Horovod processes.

    With `accumulation_steps=k`, gradients of k micro-batches are summed locally and
    averaged over processes once per update (one allreduce per update, not per
    micro-batch); the inner optimizer then sees the mean gradient of the global batch
    and steps once. Checkpoints (`checkpoint_variables()`) hold the inner optimizer state
    and the noise-scale averages, not the accumulators: a run can resume on another
    number of workers.

    Args:
        inner_optimizer: the `keras.optimizers.Optimizer` that updates the weights.
        accumulation_steps: int >= 1, micro-batches per update. Defaults to `1`.
        compression: `"none"` or `"fp16"` (allreduce in half precision).
            Defaults to `"none"`.
        sparse_as_dense: reduce `IndexedSlices` gradients as dense tensors.
            Defaults to `False`.
        micro_batch_size: examples in one micro-batch on one worker. When given and
            there are several micro-batches per update (accumulation or workers), the
            gradient noise scale is estimated from the micro-batch gradients and the
            averaged one (see `noise_scale()`); its one scalar travels in the same
            allreduce as the gradients. Defaults to `None` (off).
        noise_ema: EMA decay of the noise-scale estimates. Defaults to `0.95`.
        skip_nonfinite: skip (and count in `skipped_steps`) an update whose averaged
            gradient holds a NaN or Inf, for inner optimizers that would apply it
            (Keras' own); the keras_sngm optimizers skip such steps themselves.
            Defaults to `False`.
        dynamic_loss_scale: float16 training. The loss is multiplied by a scale
            (`scale_loss`, which Keras' train step calls), each micro-batch gradient is
            divided by it, and after the allreduce a non-finite averaged gradient skips
            the update and halves the scale; `growth_interval` finite updates in a row
            double it. The verdict is taken on the averaged gradient, so every worker
            skips the same updates and keeps the same scale, and the inner optimizer
            (SNGM's norm included) sees the unscaled average. Defaults to `False`.
        initial_scale: the first loss scale. Defaults to `2**15`.
        growth_interval: finite updates before the scale doubles. Defaults to `2000`.
        adaptive: the batch may change between `fit` calls (`--batch-size auto`, see
            trainers/batch_adapter.py). The micro-batches per update are then a variable
            (`set_accumulation_steps`), so the traced train function stays valid, and
            `examples` counts the examples of all updates so far (what the learning-rate
            schedule follows). Defaults to `False`.
        name: String. Defaults to `None`.

    References:
        - [Sergeev and Del Balso, 2018](https://arxiv.org/abs/1802.05799), "Horovod:
          fast and easy distributed deep learning in TensorFlow".
    """

    def __init__(self, inner_optimizer, accumulation_steps=1, compression="none", sparse_as_dense=False,
                 micro_batch_size=None, noise_ema=0.95, skip_nonfinite=False, dynamic_loss_scale=False,
                 initial_scale=2.0**15, growth_interval=2000, adaptive=False, name=None):
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise ValueError(f"`inner_optimizer` must be a keras.optimizers.Optimizer. Received: inner_optimizer={inner_optimizer!r}")
        if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(f"`accumulation_steps` must be an int >= 1. Received: accumulation_steps={accumulation_steps!r}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"`compression` must be one of {COMPRESSIONS}. Received: compression={compression!r}")
        if micro_batch_size is not None and (isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int) or micro_batch_size < 1):
            raise ValueError(f"`micro_batch_size` must be an int >= 1 or None. Received: micro_batch_size={micro_batch_size!r}")
        if not 0 <= noise_ema < 1:
            raise ValueError(f"`noise_ema` must be in [0, 1). Received: noise_ema={noise_ema!r}")
        super().__init__(learning_rate=0.0, name=name)
        self.micro_batch_size, self.noise_ema = micro_batch_size, float(noise_ema)
        self.inner_optimizer = inner_optimizer
        self.accumulation_steps = accumulation_steps
        self.compression = compression
        self.sparse_as_dense = bool(sparse_as_dense)
        self.skip_nonfinite = bool(skip_nonfinite)
        if not (initial_scale >= 1 and growth_interval >= 1):
            raise ValueError(f"`initial_scale` must be >= 1 and `growth_interval` >= 1. Received: "
                             f"initial_scale={initial_scale!r}, growth_interval={growth_interval!r}")
        self.dynamic_loss_scale = bool(dynamic_loss_scale)
        self.initial_scale, self.growth_interval = float(initial_scale), int(growth_interval)
        self.adaptive = bool(adaptive)

    def build(self, var_list):
        if self.built:
            return
        self.inner_optimizer.build(var_list)
        if self.accumulation_steps > 1 or self.adaptive:
            self.micro_step = self.add_variable(shape=(), dtype="int64", name="micro_step")
            self.accumulators = self.add_optimizer_variables(var_list, "accumulator")
        if self.adaptive:  # the batch of the next update, and the examples of all updates so far
            self.accumulation = self.add_variable(shape=(), dtype="int64", name="accumulation",
                                                  initializer=keras.initializers.Constant(self.accumulation_steps))
            self.examples = self.add_variable(shape=(), dtype="int64", name="examples")
        # Micro-batch gradients per update over all workers: the noise-scale ratio B_b/B_s.
        # The noise state exists whenever asked for, so checkpoints do not depend on the
        # number of workers; it is updated only when there are two batch sizes (ratio > 1).
        self.skipped_steps = self.add_variable(shape=(), dtype="int64", name="skipped_steps")
        if self.dynamic_loss_scale:
            self.loss_scale = self.add_variable(shape=(), dtype="float32", name="loss_scale",
                                                initializer=keras.initializers.Constant(self.initial_scale))
            self.good_steps = self.add_variable(shape=(), dtype="int64", name="good_steps")
        self._ratio = self.accumulation_steps * size()
        self.noise = None
        if self.micro_batch_size:
            self.noise = NoiseScaleEstimator(self.micro_batch_size, self._ratio, self.add_variable, self.noise_ema)
        super().build(var_list)

    def checkpoint_variables(self):
        """The state worth saving: the inner optimizer's, the noise-scale EMAs and, when
        `adaptive`, the examples seen. The accumulators and counters are zero at update
        boundaries and depend on the number of workers, so they are left out: a run can
        resume on another worker count (the batch in use is the engine's to restore)."""
        return (self.inner_optimizer.variables + (self.noise.state_variables() if self.noise else [])
                + ([self.examples] if self.adaptive else []))

    def set_accumulation_steps(self, k):
        """Micro-batches per worker in each following update (`adaptive` only). Call it
        between `fit` calls, at an update boundary; the train function is not retraced."""
        if not self.adaptive:
            raise ValueError("set_accumulation_steps needs DistributedOptimizer(adaptive=True)")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"`k` must be an int >= 1. Received: k={k!r}")
        if int(self.micro_step.numpy()):
            raise ValueError(f"set_accumulation_steps({k}) inside an update ({int(self.micro_step.numpy())} "
                             f"micro-batches accumulated): call it at an update boundary")
        self.accumulation_steps = k
        self.accumulation.assign(k)

    def _k(self):
        """Micro-batches per worker in this update: a variable when the batch adapts."""
        return self.accumulation if self.adaptive else self.accumulation_steps

    def batch_size(self):
        """The global batch of an update now (examples over all workers)."""
        return self.accumulation_steps * size() * (self.micro_batch_size or 1)

    def examples_seen(self):
        """Examples in all updates so far (`adaptive` only), a Python int."""
        return int(self.examples.numpy())

    def traced_position(self, ref_batch):
        """The examples before this update in updates of `ref_batch` examples, a float32
        tensor (`adaptive` only; what `lr_scaling.ExamplesSchedule` follows)."""
        return tf.cast(tf.cast(self.examples, tf.float64) / ref_batch, tf.float32)

    def traced_batch_size(self):
        """`batch_size()` read from the `adaptive` variable: what a traced step must use (the
        Python count is fixed at tracing time)."""
        return self.accumulation * (size() * (self.micro_batch_size or 1))

    def apply(self, grads, trainable_variables=None):
        if trainable_variables is None:
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        if not self.built:
            self.build(trainable_variables)
        pairs = [(g, v) for g, v in zip(grads, trainable_variables) if g is not None]
        grads, variables = [g for g, _ in pairs], [v for _, v in pairs]
        if self.dynamic_loss_scale:  # unscaled at once: accumulators and noise scale see true gradients
            grads = [_scaled(g, 1.0 / self.loss_scale) for g in grads]
        if self.noise and (self._ratio > 1 or self.adaptive):
            self.noise.add_micro(grads)
        if self.accumulation_steps == 1 and not self.adaptive:
            self._update(grads, variables)
            return
        accs = [self.accumulators[self._get_variable_index(v)] for v in variables]
        for acc, g in zip(accs, grads):
            acc.assign_add(tf.convert_to_tensor(g))
        self.micro_step.assign_add(1)
        k = self._k()

        def update():
            self._update([acc / tf.cast(k, acc.dtype) for acc in accs], variables)
            for acc in accs:
                acc.assign(tf.zeros_like(acc))
            self.micro_step.assign(0)
            return tf.constant(True)

        tf.cond(self.micro_step >= tf.cast(k, tf.int64), update, lambda: tf.constant(False))

    def _update(self, grads, variables):
        """Averages `grads` (this worker's mean over its micro-batches) over workers and
        steps the inner optimizer once."""
        if not (self.noise and (self._ratio > 1 or self.adaptive)):
            self._step_inner(allreduce_gradients(grads, self.compression, self.sparse_as_dense), variables)
            self._count_examples()
            return
        k = self._k()
        small = self.noise.local_mean(tf.cast(k, tf.float32))  # travels in the gradients' allreduce
        reduced = allreduce_gradients(grads + [tf.reshape(small, [1])], self.compression, self.sparse_as_dense)
        if self.adaptive:  # an epoch's last update may hold a single micro-batch gradient in all: no estimate
            ratio = k * size()
            tf.cond(ratio >= 2, lambda: self._estimate(reduced, ratio), self._no_estimate)
        else:
            self.noise.update(reduced[-1][0], reduced[:-1])
        self._step_inner(reduced[:-1], variables)
        self._count_examples()

    def _estimate(self, reduced, ratio):
        self.noise.update(reduced[-1][0], reduced[:-1], micro_batches=ratio)
        return tf.constant(True)

    def _no_estimate(self):
        self.noise.discard_micro()
        return tf.constant(False)

    def _count_examples(self):
        if self.adaptive:  # after the step: the schedule read the examples before this update
            self.examples.assign_add(self.traced_batch_size())

    def _step_inner(self, grads, variables):
        """Steps the inner optimizer on the averaged gradient. With `skip_nonfinite` or the
        dynamic loss scale, a non-finite one is skipped instead (the same verdict on every
        worker); the loss scale then halves, and `growth_interval` good updates double it."""
        if not (self.skip_nonfinite or self.dynamic_loss_scale):
            self.inner_optimizer.apply(grads, variables)
            return
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(g))) for g in grads])

        def step():
            self.inner_optimizer.apply(grads, variables)
            if self.dynamic_loss_scale:
                grown = self.good_steps + 1 >= self.growth_interval
                self.loss_scale.assign(tf.where(grown, self.loss_scale * 2.0, self.loss_scale))
                self.good_steps.assign(tf.where(grown, tf.constant(0, tf.int64), self.good_steps + 1))
            return tf.constant(True)

        def skip():
            self.skipped_steps.assign_add(1)
            if self.dynamic_loss_scale:  # an overflow: the schedule still advances
                self.inner_optimizer.iterations.assign_add(1)
                self.loss_scale.assign(tf.maximum(self.loss_scale / 2.0, 1.0))
                self.good_steps.assign(0)
            return tf.constant(False)

        tf.cond(finite, step, skip)

    def noise_scale(self):
        """{"g2", "trace"} (EMAs, bias-corrected), "b_simple" (the critical batch size
        estimate), "diversity_bound" (Yin et al.'s n * Delta), "batch" (B in use);
        or None when off (no micro_batch_size, or one micro-batch per update in all)."""
        if not self.noise or (self._ratio < 2 and not self.adaptive):
            return None
        return {**self.noise.result(), "batch": self.batch_size()}

    def scale_loss(self, loss):
        if self.dynamic_loss_scale:
            return loss * tf.cast(self.loss_scale, loss.dtype)
        return self.inner_optimizer.scale_loss(loss)

    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "accumulation_steps": self.accumulation_steps,
            "compression": self.compression,
            "sparse_as_dense": self.sparse_as_dense,
            "micro_batch_size": self.micro_batch_size,
            "noise_ema": self.noise_ema,
            "skip_nonfinite": self.skip_nonfinite,
            "dynamic_loss_scale": self.dynamic_loss_scale,
            "initial_scale": self.initial_scale,
            "growth_interval": self.growth_interval,
            "adaptive": self.adaptive,
        }


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
