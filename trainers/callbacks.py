"""Logging callbacks for the trainers (rank 0 writes)."""

import time

import keras
import tensorflow as tf


class ProgressLogger(keras.callbacks.Callback):
    """Learning rate and throughput (examples/s, all workers) to the epoch logs and,
    every `every` updates, straight to TensorBoard (`<logdir>/train`)."""

    def __init__(self, logdir, global_batch, micro_steps_per_update, every=50, write=True):
        super().__init__()
        self.global_batch, self.k, self.every = global_batch, micro_steps_per_update, every
        self.writer = tf.summary.create_file_writer(f"{logdir}/train") if (write and logdir) else None

    def _lr(self):
        opt = self.model.optimizer
        lr = opt.learning_rate
        return float(keras.ops.convert_to_numpy(lr))

    def on_epoch_begin(self, epoch, logs=None):
        self.t_epoch = self.t_window = time.perf_counter()
        self.updates_epoch = self.updates_window = 0

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.k:
            return
        self.updates_epoch += 1
        self.updates_window += 1
        if self.writer is not None and self.updates_window >= self.every:
            now = time.perf_counter()
            step = int(self.model.optimizer.iterations)
            with self.writer.as_default(step=step):
                tf.summary.scalar("step/learning_rate", self._lr())
                tf.summary.scalar("step/examples_per_sec", self.updates_window * self.global_batch / (now - self.t_window))
                for k, v in (logs or {}).items():
                    tf.summary.scalar(f"step/{k}", float(v))
            self.writer.flush()
            self.t_window, self.updates_window = now, 0

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self._lr()
            logs["examples_per_sec"] = self.updates_epoch * self.global_batch / (time.perf_counter() - self.t_epoch)


class DiagnosticsLogger(keras.callbacks.Callback):
    """Large-batch diagnostics to TensorBoard every `every` updates (rank 0 writes):

    - optimizer state (keras_sngm optimizers): ||g_t||, ||u_t|| beside its Lemma 2
      bound 1/(1-beta), the update norm, skipped steps; histograms of per-variable
      gradient norms (BlockSNGM, LARS) and trust ratios (LARS);
    - effective learning rate (Smith et al. 2020): for momentum SGD lr/(1-beta) and the
      temperature lr/(B(1-beta)); for SNGM-type optimizers the step length lr*||u||;
    - gradient noise scale (from `DistributedOptimizer`): |G|^2, tr(Sigma), B_simple
      (the critical batch estimate) next to the batch in use, and Yin et al.'s
      diversity bound.
    The latest values also go into the epoch logs (`noise_scale`, `grad_norm`, ...).
    """

    def __init__(self, logdir, global_batch, every=50, write=True):
        super().__init__()
        self.global_batch, self.every = global_batch, every
        self.writer = tf.summary.create_file_writer(f"{logdir}/train") if (write and logdir) else None
        self._last = -1

    def on_train_begin(self, logs=None):
        inner = self._inner()
        if hasattr(inner, "diagnostics_every"):  # refresh ||u|| exactly on the steps we log
            inner.diagnostics_every = self.every

    def _inner(self):
        return getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)

    def values(self):
        inner, opt = self._inner(), self.model.optimizer
        lr = float(keras.ops.convert_to_numpy(opt.learning_rate))
        scalars, hists = {"learning_rate": lr}, {}
        beta = getattr(inner, "momentum", 0.0) or 0.0
        if hasattr(inner, "diagnostics"):
            d = inner.diagnostics()
            for k in ("grad_norm", "momentum_norm", "momentum_norm_bound", "update_norm", "skipped_steps"):
                scalars[k] = float(d[k])
            scalars["step_length"] = lr * float(d["momentum_norm"])  # SNGM's effective step
            hists = {k: d[k] for k in getattr(inner, "per_variable_diagnostics", ())}
        else:
            scalars["effective_lr"] = lr / (1.0 - beta)  # momentum SGD
            scalars["temperature"] = lr / (self.global_batch * (1.0 - beta))
        noise = opt.noise_scale() if hasattr(opt, "noise_scale") else None
        if noise:
            scalars.update({"noise_g2": noise["g2"], "noise_trace_sigma": noise["trace"], "noise_scale": noise["b_simple"],
                            "gradient_diversity_bound": noise["diversity_bound"], "batch_size": noise["batch"]})
        return scalars, hists

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        if self.writer is None or step < 1 or step == self._last or (step - 1) % self.every:
            return  # log right after the update whose diagnostics were refreshed
        self._last = step
        scalars, hists = self.values()
        with self.writer.as_default(step=step):
            for k, v in scalars.items():
                tf.summary.scalar(f"diagnostics/{k}", v)
            for k, v in hists.items():
                tf.summary.histogram(f"diagnostics/{k}", v)
        self.writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            scalars, _ = self.values()
            for k in ("grad_norm", "momentum_norm", "noise_scale", "gradient_diversity_bound"):
                if k in scalars:
                    logs[k] = scalars[k]
