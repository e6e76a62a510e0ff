"""`SNGMDiagnostics`: the large-batch diagnostics of any `model.fit` in TensorBoard, on
TensorFlow, JAX and PyTorch."""

import os
import warnings

import keras
from keras import ops

from keras_sngm import summary
from keras_sngm.noise_scale import NoiseScaleEstimator

OPTIMIZER_STATE = ("grad_norm", "momentum_norm", "momentum_norm_bound", "update_norm", "skipped_steps")


def keras_sngm_optimizer(optimizer):
    """The keras_sngm optimizer inside `optimizer` (itself, or held by Keras'
    `LossScaleOptimizer` or another wrapper's `inner_optimizer`), or None."""
    while optimizer is not None and not hasattr(optimizer, "diagnostics"):
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return optimizer


def learning_rate_used(optimizer):
    """The learning rate of the update just made: a schedule evaluated where Keras
    evaluated it for that update (at the train-step count before the update's last
    micro-batch: Keras counts a schedule in train steps, micro-batches under
    `gradient_accumulation_steps`), else the current value."""
    inner = optimizer
    while hasattr(inner, "inner_optimizer"):  # (a wrapper's own rate is a placeholder)
        inner = inner.inner_optimizer
    schedule = getattr(inner, "_learning_rate", None)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        done = int(ops.convert_to_numpy(getattr(inner, "_iterations", inner.iterations)))
        return float(ops.convert_to_numpy(schedule(max(done - 1, 0))))
    return float(ops.convert_to_numpy(optimizer.learning_rate))


def optimizer_values(optimizer, learning_rate, batch_size=None):
    """What an optimizer tells about its last update, as `diagnostics/*` scalars and
    histograms: a keras_sngm optimizer's state (`OPTIMIZER_STATE`, and the per-variable
    vectors of BlockSNGM and LARS); for momentum SGD (a non-normalized optimizer with a
    `momentum`) the effective learning rate lr/(1-beta) and, given `batch_size`, the
    temperature lr/(B(1-beta)).

    Returns:
        (scalars, histograms): two dicts keyed by the names of `summary.DIAGNOSTICS`.
    """
    inner = keras_sngm_optimizer(optimizer)
    scalars, hists = {}, {}
    if inner is not None:
        d = inner.diagnostics()
        scalars = {k: float(d[k]) for k in OPTIMIZER_STATE if d.get(k) is not None}  # (no bound: none)
        hists = {k: d[k] for k in inner.per_variable_diagnostics}
    moving = inner if inner is not None else optimizer
    beta = float(getattr(moving, "momentum", 0.0) or 0.0)
    if not getattr(moving, "normalized", False):
        scalars["effective_lr"] = learning_rate / (1.0 - beta)          # momentum SGD's lr/(1-beta)
        if batch_size:
            scalars["temperature"] = learning_rate / (batch_size * (1.0 - beta))
    return scalars, hists


def accumulating(optimizer):
    """The optimizer in the chain that accumulates gradients (Keras'
    `gradient_accumulation_steps`), or None."""
    while optimizer is not None:
        if getattr(optimizer, "gradient_accumulation_steps", None):
            return optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return None


def _variable(shape, dtype, name):
    return keras.Variable(ops.zeros(shape, dtype), trainable=False, name=name)


class AccumulatorNoise:
    """The gradient noise scale of an update from Keras' gradient accumulator, read between
    its micro-batches: after micro-batch j < k the accumulator holds g_1 + ... + g_j, so
    the k-1 micro-batch gradients (`batch_size` examples each) and their mean
    ((k-1) * `batch_size`) give two batch sizes (k >= 3; the k-th gradient enters the
    update inside the train step). The estimates are `NoiseScaleEstimator` moving averages.

    Args:
        batch_size: examples per train step (all replicas).
        k: the optimizer's `gradient_accumulation_steps`, >= 3.
        noise_ema: float in [0, 1), decay of the moving averages.
    """

    def __init__(self, batch_size, k, noise_ema=0.95):
        if k < 3:
            raise ValueError(f"the noise scale from the accumulator needs k >= 3 micro-batches per update. Received: k={k}")
        self.k, self.sums = k, None
        self.estimator = NoiseScaleEstimator(batch_size, k - 1, _variable, noise_ema)

    def read(self, optimizer, j):
        """After micro-batch j < k of an update of `optimizer` (itself or a wrapper of the
        accumulating optimizer)."""
        acc = accumulating(optimizer)
        sums = [ops.copy(a.value) for a in acc._accumulated_gradients]
        self.estimator.add_micro(sums if j == 1 else [s - p for s, p in zip(sums, self.sums)])   # |g_j|^2
        self.sums = sums
        if j == self.k - 1:  # k-1 micro-batch gradients against their mean S_(k-1)/(k-1)
            n = self.k - 1
            self.estimator.update(self.estimator.local_mean(n), [s / n for s in sums])
            self.sums = None

    def result(self):
        return self.estimator.result()


class SNGMDiagnostics(keras.callbacks.Callback):
    """Large-batch diagnostics of any `model.fit` to TensorBoard, on every backend.

    Every `update_freq` optimizer updates (after updates 1, 1 + update_freq, ...), it
    writes to `log_dir/train`, at the update's number:

    - `step/learning_rate` (the rate the update used) and, given `batch_size`,
      `step/batch_size` (examples per update: `batch_size` times the accumulation steps);
    - with a keras_sngm optimizer (also inside Keras' `LossScaleOptimizer`):
      `diagnostics/grad_norm`, `momentum_norm` beside `momentum_norm_bound` (Lemma 2),
      `update_norm` (the step taken, at the update it was measured, see the optimizer's
      `diagnostics_every`), `skipped_steps`, and the histograms `block_grad_norms` and
      `trust_ratios` (BlockSNGM, LARS);
    - for momentum SGD (`keras_sngm.MSGD`, `keras.optimizers.SGD`): `effective_lr`
      lr/(1-beta) and `temperature` lr/(B(1-beta));
    - the gradient noise scale (McCandlish et al.): `noise_g2` (|G|^2), `noise_trace_sigma`
      (tr(Sigma)), `noise_scale` (B_simple) and `gradient_diversity_bound`, with any
      optimizer built with `gradient_accumulation_steps=k`, k >= 3, or with a keras_sngm
      optimizer under a `tf.distribute` strategy of several replicas.

    The noise scale needs the gradient at two batch sizes. Under gradient accumulation the
    optimizer's accumulator holds the running sum of the micro-batch gradients, so on each
    logged update the callback reads it after micro-batches 1, ..., k-1 and compares those
    k-1 gradients (`batch_size` examples each) with their mean ((k-1) * `batch_size`). The
    k-th micro-batch's gradient goes into the update inside the same train step, before
    any callback runs, hence k >= 3. Under a `tf.distribute` strategy (e.g.
    `MirroredStrategy`) of R replicas, a keras_sngm optimizer built in its scope keeps the
    replicas' mean |g_r|^2, taken before their gradients are summed, and |sum|^2: R
    gradients of `batch_size`/R examples against their mean. JAX's `DataParallel` sums
    the devices' gradients inside the compiled step, so there is no per-device gradient
    to compare; use accumulation there. The estimates are moving averages (`noise_ema`)
    over the logged updates, computed by the same
    `keras_sngm.noise_scale.NoiseScaleEstimator` as the trainers'.
    What cannot be given (no keras_sngm optimizer, no accumulation, no `batch_size`) is
    said once, as a warning; the rest is written.

    The event files also hold a custom-scalars layout (TensorBoard's "Custom Scalars" tab)
    that puts B_simple beside the batch in use, ||u|| beside its bound, and the learning
    rate beside the step taken.

    Example:

    >>> import os, tempfile, numpy as np, keras, keras_sngm
    >>> log_dir = tempfile.mkdtemp()
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer=keras_sngm.SNGM(0.1, gradient_accumulation_steps=4), loss="mse")
    >>> x = np.random.default_rng(0).normal(size=(256, 3)).astype("float32")
    >>> callback = keras_sngm.callbacks.SNGMDiagnostics(log_dir, update_freq=2, batch_size=16)
    >>> _ = model.fit(x, x @ np.ones((3, 1), "float32"), batch_size=16, callbacks=[callback], verbose=0)
    >>> sorted(os.listdir(os.path.join(log_dir, "train")))[0].startswith("events.out.tfevents")
    True
    >>> callback.latest["noise_scale"] > 0
    True

    Args:
        log_dir: the directory of the run's event files (as `keras.callbacks.TensorBoard`'s
            `log_dir`; they go to `log_dir/train`). Made if missing; it must be writable.
        update_freq: int > 0, write every this many optimizer updates. Defaults to `100`,
            the keras_sngm optimizers' `diagnostics_every`.
        batch_size: the `batch_size` given to `fit` (examples per train step, all
            replicas). Needed for the noise scale and the batch in use. Defaults to `None`.
        noise_ema: float in [0, 1), decay of the noise estimates' moving averages.
            Defaults to `0.95`.

    References:
        - [McCandlish et al., 2018](https://arxiv.org/abs/1812.06162), "An Empirical
          Model of Large-Batch Training", appendix A.
        - [Zhao, Xie and Li, 2020](https://arxiv.org/abs/2007.13985), Lemma 2.
    """

    def __init__(self, log_dir, update_freq=100, batch_size=None, noise_ema=0.95):
        super().__init__()
        if isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq <= 0:
            raise ValueError(f"`update_freq` must be an int > 0 (updates between writes). "
                             f"Received: update_freq={update_freq!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"`batch_size` must be an int >= 1 or None. Received: batch_size={batch_size!r}")
        if isinstance(noise_ema, bool) or not isinstance(noise_ema, (int, float)) or not 0 <= noise_ema < 1:
            raise ValueError(f"`noise_ema` must be a float in [0, 1). Received: noise_ema={noise_ema!r}")
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise ValueError(f"`log_dir` must be a directory path. Received: log_dir={log_dir!r}")
        self.log_dir, self.update_freq = os.fspath(log_dir), update_freq
        self.batch_size, self.noise_ema = batch_size, float(noise_ema)
        summary.check_writable(self.log_dir)
        self.latest = {}  # the values last written, by name (as in summary.DIAGNOSTICS and STEP)
        self._writer, self._layout_written, self._said = None, False, set()
        self._noise, self._update_norm_at = None, 0

    def _say(self, message):
        if message not in self._said:
            self._said.add(message)
            warnings.warn(f"SNGMDiagnostics: {message}", stacklevel=3)

    def on_train_begin(self, logs=None):
        opt = self.model.optimizer
        self._writer = summary.EventWriter(os.path.join(self.log_dir, "train"))
        if not self._layout_written:
            self._writer.layout()
            self._layout_written = True
        inner = keras_sngm_optimizer(opt)
        if inner is not None and inner.diagnostics_every != self.update_freq:
            self._say(f"{type(inner).__name__} measures update_norm every {inner.diagnostics_every} updates "
                      f"(diagnostics_every), and it is written at those updates only; build it with "
                      f"diagnostics_every={self.update_freq} to have it at every write")
        if inner is None:
            self._say(f"{type(opt).__name__} is not a keras_sngm optimizer (SNGM, BlockSNGM, LARS, MSGD): no "
                      f"{', '.join(OPTIMIZER_STATE)}, block_grad_norms or trust_ratios; the learning rate and the "
                      "noise scale are written")
        acc = accumulating(opt)
        self._k = int(acc.gradient_accumulation_steps) if acc is not None else 1
        counter = acc._iterations if acc is not None else opt.iterations  # micro-batches (train steps) done
        self._micro, self._last_batch = int(ops.convert_to_numpy(counter)), -1
        spe = int(getattr(self.model, "steps_per_execution", 1) or 1)
        strategy = getattr(self.model, "distribute_strategy", None)
        replicas = int(getattr(strategy, "num_replicas_in_sync", 1) or 1)
        # Replicas (tf.distribute): each one's gradient norm, taken by a keras_sngm optimizer
        # before the sum. Otherwise the accumulator, read between micro-batches.
        self._replicas = replicas > 1 and inner is not None and "replica_grad_sq" in inner._state
        missing = ("pass the fit's batch_size to SNGMDiagnostics" if self.batch_size is None else
                   None if self._replicas else
                   f"with {replicas} replicas it needs a keras_sngm optimizer, built inside the strategy's scope "
                   "(it takes each replica's gradient norm before their sum)" if replicas > 1 else
                   "it needs gradient accumulation: build the optimizer with gradient_accumulation_steps=k, k >= 3 "
                   "(a callback sees k-1 micro-batch gradients of each update; this fit has "
                   f"{self._k} gradient{'s' if self._k > 1 else ''} per update), or several replicas "
                   "(tf.distribute; JAX's DataParallel sums them inside the compiled step)" if self._k < 3 else
                   f"it needs steps_per_execution=1 (the accumulator is read between train steps; got {spe})"
                   if spe > 1 else None)
        if missing:
            self._say(f"no gradient noise scale: {missing}")
        elif self._noise is None and self._replicas:  # B/R examples per replica against B (per update)
            self._noise = NoiseScaleEstimator(self.batch_size * self._k // replicas, replicas, _variable,
                                              self.noise_ema)
        elif self._noise is None:
            self._noise = AccumulatorNoise(self.batch_size, self._k, self.noise_ema)

    def on_epoch_begin(self, epoch, logs=None):
        self._last_batch = -1

    def on_train_batch_end(self, batch, logs=None):
        # Counted here (no device read per step): micro-batch m of the fit, of update t.
        self._micro += batch - self._last_batch
        self._last_batch = batch
        t, j = divmod(self._micro - 1, self._k)    # update t (from 0), its micro-batch j + 1
        if t % self.update_freq:
            return
        if self._noise is not None and not self._replicas and j + 1 < self._k:
            self._noise.read(self.model.optimizer, j + 1)   # (`self.model` syncs JAX's state)
        elif j + 1 == self._k:
            self._write(t + 1)

    def _write(self, step):
        opt = self.model.optimizer
        lr = learning_rate_used(opt)
        batch = self.batch_size * self._k if self.batch_size else None
        scalars, hists = optimizer_values(opt, lr, batch)
        inner = keras_sngm_optimizer(opt)
        if inner is not None:  # the step length belongs to the update it was measured at
            at = int(inner.diagnostics()["refreshed_at_update"])
            update_norm = scalars.pop("update_norm")
            if at > self._update_norm_at:
                self._update_norm_at = at
                self._writer.scalar("diagnostics/update_norm", update_norm, at, summary.DIAGNOSTICS["update_norm"])
                self.latest["update_norm"] = update_norm
        if isinstance(opt, keras.optimizers.LossScaleOptimizer) and opt.built:
            scalars["loss_scale"] = float(ops.convert_to_numpy(opt.dynamic_scale))
        if self._noise is not None and self._replicas:  # this update's norms, taken inside the step
            d = inner.diagnostics()
            self._noise.update_from_norms(float(d["replica_grad_sq"]), float(d["global_grad_sq"]))
        if self._noise is not None:
            noise = self._noise.result()
            if noise["estimates"]:
                scalars.update({"noise_g2": noise["g2"], "noise_trace_sigma": noise["trace"],
                                "noise_scale": noise["b_simple"], "gradient_diversity_bound": noise["diversity_bound"]})
        steps = {"learning_rate": lr, **({"batch_size": batch} if batch else {})}
        for k, v in steps.items():
            self._writer.scalar(f"step/{k}", v, step, summary.STEP[k])
        for k, v in scalars.items():
            self._writer.scalar(f"diagnostics/{k}", v, step, summary.DIAGNOSTICS[k])
        for k, v in hists.items():
            self._writer.histogram(f"diagnostics/{k}", v, step, summary.DIAGNOSTICS[k])
        self._writer.flush()
        self.latest.update({**steps, **scalars, **hists})

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
