"""Logging callbacks for the trainers (rank 0 writes).

One step axis: step n is the n-th optimizer update (`optimizer.iterations` after it),
and a value logged at step n is the one that update used or produced (its learning
rate, the norms after it), whatever the number of accumulated micro-batches.
"""

import time

import keras

from keras_sngm.callbacks import learning_rate_used, optimizer_values
from keras_sngm.summary import EventWriter
from keras_sngm_trainers import tb_tags


def lr_used(schedule, optimizer):
    """The learning rate of the update just made: `schedule` (the trainers pass the one
    they built) at the update count before it, as Keras evaluates it. Without a
    schedule, what the optimizer's own rate or schedule gave that update."""
    if schedule is None:
        return learning_rate_used(optimizer)
    if hasattr(schedule, "used"):  # keras_sngm_trainers.lr_scaling.ExamplesSchedule: it follows examples, not updates
        return schedule.used()
    if callable(schedule):
        return float(keras.ops.convert_to_numpy(schedule(max(int(optimizer.iterations) - 1, 0))))
    return float(schedule)


def _clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _batch(source):
    """The global batch now: an int, or the engine's `keras_sngm_trainers.segments.Progress`."""
    return getattr(source, "batch", source)


class ProgressLogger(keras.callbacks.Callback):
    """Learning rate and throughput (examples/s, all workers) to the epoch logs and,
    every `every` updates, to TensorBoard (`<logdir>/train`, tags `step/*`) and, with
    `show`, as a progress line with the estimated time left; after the first updates it
    prints the estimated time of the whole run; with `epoch_lines` (the run's epochs) each
    epoch's results too. Every update also writes `step/batch_size`
    and `step/examples` (examples seen so far); the epoch logs get the examples seen by
    the epoch's end (`examples`).

    `progress` is the engine's `keras_sngm_trainers.segments.Progress` (where each `fit` starts, the
    batch of its updates); `total_examples` is the run's, for the time left."""

    def __init__(self, logdir, progress, every=50, write=True, schedule=None, total_examples=0, total_updates=0,
                 show=False, epoch_lines=0):
        super().__init__()
        self.progress, self.every, self.schedule = progress, every, schedule
        self.total, self.total_updates, self.show = total_examples, total_updates, show
        self.epoch_lines = epoch_lines  # the run's epochs: print each epoch's results (Keras' own line counts one fit)
        self.writer = EventWriter(f"{logdir}/train") if (write and logdir) else None
        self.t_first, self.estimated, self.epoch = None, False, None

    def on_train_begin(self, logs=None):
        self.step = int(self.model.optimizer.iterations)  # then counted here: no variable read per update
        self.examples = self.progress.examples_before
        if self.t_first is None:  # the window runs on across the fit calls of one run
            self.t_window, self.examples_window = time.perf_counter(), 0

    def on_epoch_begin(self, epoch, logs=None):
        if epoch != self.epoch:  # (an epoch may take several fit calls when the batch adapts)
            self.epoch, self.t_epoch = epoch, time.perf_counter()
            self.examples_epoch = 0

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.progress.k:
            return
        now, b = time.perf_counter(), self.progress.batch
        self.examples += b
        self.examples_epoch += b
        self.examples_window += b
        self.step = step = self.step + 1
        if self.writer is not None:
            self.writer.scalar("step/batch_size", b, step, tb_tags.step("batch_size"))
            self.writer.scalar("step/examples", self.examples, step, tb_tags.step("examples"))
        first = self.t_first is None
        if first:  # the first update includes tracing and compilation
            self.t_first, self.examples_first = now, self.examples
        elif self.show and not self.estimated and (self.examples - self.examples_first >= 3 * b or now - self.t_first > 30):
            rate = (self.examples - self.examples_first) / (now - self.t_first)
            to_go = (f"{self.total_updates - step} updates to go" if self.total_updates else
                     f"{self.total - self.examples} examples to go")
            print(f"estimated time for the run: {_clock((self.total - self.examples) / rate)} left "
                  f"({b / rate:.2f} s per update, {to_go})", flush=True)
            self.estimated = True
        if step % self.every:
            if first:  # the rates of the points start after it
                self.t_window, self.examples_window = now, 0
            return
        rate = self.examples_window / (now - self.t_window)
        lr = lr_used(self.schedule, self.model.optimizer)
        if self.writer is not None:
            self.writer.scalar("step/learning_rate", lr, step, tb_tags.step("learning_rate"))
            self.writer.scalar("step/examples_per_sec", rate, step, tb_tags.step("examples_per_sec"))
            for k, v in (logs or {}).items():
                self.writer.scalar(f"step/{k}", float(v), step, tb_tags.step(k))
            self.writer.flush()
        if self.show:
            shown = " ".join(f"{k} {float(v):.4g}" for k, v in (logs or {}).items())
            of = f"/{self.total_updates}" if self.total_updates else ""
            print(f"epoch {self.epoch + 1} update {step}{of}: {shown} B {b} lr {lr:.4g} {rate:.0f} ex/s "
                  f"ETA {_clock(max(self.total - self.examples, 0) / rate)}", flush=True)
        self.t_window, self.examples_window = now, 0

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = lr_used(self.schedule, self.model.optimizer)  # the last update's
            logs["examples_per_sec"] = self.examples_epoch / (time.perf_counter() - self.t_epoch)
            logs["examples"] = float(self.examples)
            if self.epoch_lines and self.progress.segment.closes:
                shown = " - ".join(f"{k}: {float(v):.4g}" for k, v in logs.items())
                print(f"epoch {epoch + 1}/{self.epoch_lines} (update {self.step}, last batch "
                      f"{self.progress.batch}): {shown}", flush=True)


class DiagnosticsLogger(keras.callbacks.Callback):
    """Large-batch diagnostics to TensorBoard every `every` updates (rank 0 writes):

    - optimizer state (keras_sngm optimizers): ||g_t||, ||u_t|| beside its Lemma 2
      bound 1/(1-beta), the update norm, skipped steps; histograms of per-variable
      gradient norms (BlockSNGM, LARS) and trust ratios (LARS);
    - effective learning rate (Smith et al. 2020): for momentum SGD lr/(1-beta) and the
      temperature lr/(B(1-beta)); for SNGM-type optimizers the step length lr*||u||;
    - gradient noise scale (from the engine's optimizer: Horovod's `DistributedOptimizer`,
      the JAX engine's `Accumulation`): |G|^2, tr(Sigma), B_simple
      (the critical batch estimate) next to the batch in use, and Yin et al.'s
      diversity bound.
    The latest values also go into the epoch logs (`noise_scale`, `grad_norm`, ...).
    """

    def __init__(self, logdir, global_batch, every=50, write=True, schedule=None):
        super().__init__()
        self.global_batch, self.every, self.schedule = global_batch, every, schedule
        self.writer = EventWriter(f"{logdir}/train") if (write and logdir) else None
        self._last = -1

    def on_train_begin(self, logs=None):
        inner = self._inner()
        if getattr(inner, "diagnostics_every", self.every) != self.every:
            raise ValueError(f"DiagnosticsLogger(every={self.every}) logs the norms the optimizer refreshes every "
                             f"{inner.diagnostics_every} updates: build the optimizer with diagnostics_every={self.every}")

    def _inner(self):
        return getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)

    def values(self):
        opt = self.model.optimizer
        lr = lr_used(self.schedule, opt)  # what the last update used
        # the optimizer's own state, as SNGMDiagnostics writes it for a user's fit
        scalars, hists = optimizer_values(self._inner(), lr, _batch(self.global_batch))
        scalars["learning_rate"] = lr
        if getattr(opt, "dynamic_loss_scale", False):  # float16: the scale and the overflowed updates skipped
            scalars["loss_scale"] = float(keras.ops.convert_to_numpy(opt.loss_scale))
            scalars["overflow_skips"] = float(keras.ops.convert_to_numpy(opt.skipped_steps))
        elif isinstance(opt, keras.optimizers.LossScaleOptimizer):  # (the JAX engine's float16)
            scalars["loss_scale"] = float(keras.ops.convert_to_numpy(opt.dynamic_scale))
        noise = opt.noise_scale() if hasattr(opt, "noise_scale") else None
        if noise:
            scalars.update({"noise_g2": noise["g2"], "noise_trace_sigma": noise["trace"], "noise_scale": noise["b_simple"],
                            "gradient_diversity_bound": noise["diversity_bound"]})
        return scalars, hists

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        if step < 1 or step == self._last or (step - 1) % self.every:
            return  # log right after the update whose diagnostics were refreshed
        self._last = step
        scalars, hists = self.values()  # (on every rank: on the JAX engine reading the state is SPMD work)
        if self.writer is None:
            return
        for k, v in scalars.items():
            if k != "learning_rate":  # logged once, as step/learning_rate
                self.writer.scalar(f"diagnostics/{k}", v, step, tb_tags.DIAGNOSTICS[k])
        for k, v in hists.items():
            self.writer.histogram(f"diagnostics/{k}", v, step, tb_tags.DIAGNOSTICS[k])
        self.writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            scalars, _ = self.values()
            for k in ("grad_norm", "momentum_norm", "noise_scale", "gradient_diversity_bound", "loss_scale",
                      "overflow_skips"):
                if k in scalars:
                    logs[k] = scalars[k]


class EpochLogger(keras.callbacks.Callback):
    """The epoch logs to TensorBoard, as Keras' TensorBoard callback writes them
    (`<logdir>/train/epoch_<name>`, and `val_<name>` as `<logdir>/<evaluation>/epoch_<name>`,
    step = epoch index), with descriptions, and without what is already logged per update
    (`tb_tags.PER_UPDATE`: it stays in the logs and history.json). `evaluation` names the
    per-epoch evaluation set: "validation", or "test" when it is the test set (no
    validation split), so that the dashboard says which it is."""

    def __init__(self, logdir, evaluation="validation"):
        super().__init__()
        self.evaluation = evaluation
        self.writers = {False: EventWriter(f"{logdir}/train"),
                        True: EventWriter(f"{logdir}/{evaluation}")}

    def on_epoch_end(self, epoch, logs=None):
        for k, v in (logs or {}).items():
            validation = k.startswith("val_")
            name = k[4:] if validation else k
            if name in tb_tags.PER_UPDATE:
                continue
            self.writers[validation].scalar(f"epoch_{name}", float(v), epoch,
                                            tb_tags.epoch(name, self.evaluation if validation else None))
        for w in self.writers.values():
            w.flush()
