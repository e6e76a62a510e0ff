"""Atomic, rotating checkpoints of model weights, optimizer state and progress.

A checkpoint is a directory `ckpt-EEEEE/` (E = epochs completed), or `ckpt-EEEEE-UUUUUUU/`
within an epoch (U = updates done in epoch E + 1), holding `model.weights.h5`,
`optimizer.npz` and `state.json`. A checkpoint within an epoch also holds the epoch's
running metric sums of every rank, the updates done in it (`step_in_epoch`) and the
micro-batches (`micro_in_epoch`): the data position, since each epoch's order is a pure
function of (seed, epoch). With `--batch-size auto` it also holds the batch adapter's
state. It is written under a temporary name and renamed into place only when complete,
so a crash while saving leaves the previous checkpoints intact; stale temporaries are
removed by the next save. A save that cannot be written (a full disk) removes its
temporary and raises `CheckpointWriteError`; the previous checkpoints stay.

`--resume` reads the newest *intact* checkpoint (`newest_intact`): one whose files a
dead node or a full disk left truncated, missing or unparsable is passed over with a
warning, and renamed `<name>.damaged` so that nothing later overwrites or rotates it away.
"""

import glob
import json
import os
import re
import shutil
import time
import zipfile

import keras
import numpy as np

from keras_sngm_trainers import engines

_NAME = re.compile(r"^ckpt-(\d{5})(?:-(\d{7}))?$")
FILES = ("state.json", "model.weights.h5", "optimizer.npz")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, file too large, I/O error); nothing of
    it was kept and the previous checkpoints are intact."""


def list_checkpoints(run_dir):
    """Checkpoints in `run_dir` (directories named as checkpoints, intact or not), oldest first."""
    found = []
    for path in glob.glob(os.path.join(run_dir, "ckpt-*")):
        m = _NAME.match(os.path.basename(path))
        if m and os.path.isdir(path):
            found.append((int(m.group(1)), int(m.group(2) or 0), path))
    return [p for _, _, p in sorted(found)]


def save(run_dir, model, optimizer, epoch, keep=3, extra=None, step=0):
    """Writes checkpoint `ckpt-{epoch}` (or `ckpt-{epoch}-{step}`, `step` updates into the
    next epoch) atomically and keeps the newest `keep`. Refuses
    (ValueError, nothing written or deleted) when a weight or optimizer value is not
    finite, so rotation never replaces a finite checkpoint by a diverged one."""
    opt_vars = optimizer_state(optimizer)
    bad = nonfinite(list(model.weights) + list(opt_vars))
    if bad:
        raise ValueError(f"not saving checkpoint {epoch} in {run_dir}: {len(bad)} tensors hold NaN or Inf "
                         f"(first: {bad[0]})")
    os.makedirs(run_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(run_dir, ".tmp-ckpt-*")):
        shutil.rmtree(stale, ignore_errors=True)
    name = f"ckpt-{epoch:05d}" + (f"-{step:07d}" if step else "")
    final = os.path.join(run_dir, name)
    tmp = os.path.join(run_dir, f".tmp-{name}-{os.getpid()}")
    state = {"epoch": epoch, "step_in_epoch": step, "optimizer_variables": [v.path for v in opt_vars], **(extra or {})}
    try:
        os.makedirs(tmp)
        model.save_weights(os.path.join(tmp, "model.weights.h5"))
        with open(os.path.join(tmp, "optimizer.npz"), "wb") as f:
            np.savez(f, **{str(i): v.numpy() for i, v in enumerate(opt_vars)})
        with open(os.path.join(tmp, "state.json"), "w") as f:  # written last
            json.dump(state, f, indent=1)
        for entry in os.listdir(tmp):
            _fsync(os.path.join(tmp, entry))
    except (OSError, RuntimeError) as e:  # h5py reports a failed write as either
        shutil.rmtree(tmp, ignore_errors=True)
        kept = latest(run_dir)
        raise CheckpointWriteError(f"could not write checkpoint {name} in {run_dir} ({e}): nothing of it was kept; "
                                   f"{'the newest checkpoint is still ' + os.path.basename(kept) if kept else 'no checkpoint was written before'}"
                                   ) from e
    if os.path.exists(final):  # re-saving the same epoch (after a resume)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(run_dir)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_json(path, obj):
    """Writes `obj` as JSON to `path` atomically: a crash or a full disk leaves the old file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def nonfinite(variables):
    """Paths of the variables holding a NaN or an infinity."""
    return [v.path for v in variables if not np.all(np.isfinite(keras.ops.convert_to_numpy(v.value)))]


def restore(path, model, optimizer):
    """Loads a checkpoint into a built model and optimizer; returns its state dict."""
    with open(os.path.join(path, "state.json")) as f:
        state = json.load(f)
    model.load_weights(os.path.join(path, "model.weights.h5"))
    optimizer.build(model.trainable_variables)
    opt_vars = optimizer_state(optimizer)
    with np.load(os.path.join(path, "optimizer.npz")) as data:
        if len(data.files) != len(opt_vars):
            raise ValueError(
                f"Checkpoint {path} holds {len(data.files)} optimizer variables but the optimizer has "
                f"{len(opt_vars)}: it was written with another optimizer or model configuration."
            )
        for i, v in enumerate(opt_vars):
            value = data[str(i)]
            if tuple(value.shape) != tuple(v.shape):
                raise ValueError(
                    f"Checkpoint {path}: optimizer variable {state['optimizer_variables'][i]!r} has shape "
                    f"{value.shape}, expected {tuple(v.shape)} for {v.path!r}."
                )
        for i, v in enumerate(opt_vars):
            v.assign(data[str(i)])
    return state


def optimizer_state(optimizer):
    """What to checkpoint: `checkpoint_variables()` where the optimizer defines it
    (keras_sngm_trainers.distributed.DistributedOptimizer), else all its variables."""
    return optimizer.checkpoint_variables() if hasattr(optimizer, "checkpoint_variables") else optimizer.variables


def latest(run_dir):
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def problem(path):
    """What makes checkpoint `path` unusable (a missing file, unreadable JSON, a truncated
    weights or optimizer file), or None when every file reads back whole."""
    for name in FILES:
        if not os.path.isfile(os.path.join(path, name)):
            return f"{name} is missing"
    try:
        with open(os.path.join(path, "state.json")) as f:
            state = json.load(f)
        if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
            return "state.json holds no epoch"
    except (OSError, ValueError) as e:
        return f"state.json is unreadable ({e})"
    try:
        import h5py

        with h5py.File(os.path.join(path, "model.weights.h5"), "r") as f:  # every array read: truncation shows
            f.visititems(lambda _, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        return f"model.weights.h5 is unreadable ({e})"
    try:
        with np.load(os.path.join(path, "optimizer.npz")) as data:  # zip CRCs checked as each array is read
            for key in data.files:
                data[key]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        return f"optimizer.npz is unreadable ({e})"
    return None


def newest_intact(run_dir, set_aside=True):
    """(the newest intact checkpoint or None, [(damaged checkpoint, what is wrong), ...]
    newer than it). With `set_aside` each damaged one is renamed `<name>.damaged` (kept,
    never deleted; `.damaged-2`, ... if taken), and the list gives the new names."""
    damaged = []
    for path in reversed(list_checkpoints(run_dir)):
        wrong = problem(path)
        if wrong is None:
            return path, damaged
        if set_aside:
            target, n = path + ".damaged", 1
            while os.path.exists(target):
                n += 1
                target = f"{path}.damaged-{n}"
            os.replace(path, target)
            path = target
        damaged.append((path, wrong))
    return None, damaged


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointCallback(keras.callbacks.Callback):
    """Saves every `every` epochs (and at the end), and within epochs every `every_steps`
    updates or `every_minutes`, and where `stop` (a `keras_sngm_trainers.preemption.StopRequest`)
    has agreed to stop. Construct it on every rank: the ranks decide together (the
    minutes by any rank's clock), each rank's running metric sums go into a checkpoint
    within an epoch, and rank 0 (`write`) writes it.

    `progress` is the engine's `keras_sngm_trainers.segments.Progress`: where the `fit` in flight
    starts, with how many micro-batches per update, whether it runs to its epoch's end and
    whether the invocation stops after it (then its end is saved as a checkpoint within the
    epoch). A checkpoint within an epoch records the updates done in it (`step_in_epoch`,
    its name) and the micro-batches (`micro_in_epoch`, the data position). `state(updates)`
    adds what the engine wants saved, given the updates done in the `fit` so far."""

    def __init__(self, run_dir, progress, every=1, keep=3, extra=None, history=None, every_steps=0, every_minutes=0.0,
                 state=None, write=True, stop=None):
        super().__init__()
        self.run_dir, self.progress, self.every, self.keep, self.extra = run_dir, progress, every, keep, extra or {}
        self.history = {k: list(v) for k, v in (history or {}).items()}  # epochs before a resume
        self.every_steps, self.every_seconds = every_steps, every_minutes * 60
        self.state = state or (lambda updates: {})
        self.write, self.stop = write, stop
        self.epoch, self.in_fit = 0, 0
        self.last_save = time.monotonic()

    def on_train_begin(self, logs=None):
        self.in_fit = 0  # updates done in this fit

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _stopping(self):
        return bool(self.stop and self.stop.agreed)

    def on_train_batch_end(self, batch, logs=None):
        seg = self.progress.segment
        if (batch + 1) % seg.k:
            return  # inside an update's accumulation
        self.in_fit += 1
        step, micro = self.progress.position(self.epoch, batch)
        if batch + 1 == seg.steps and seg.closes:
            return  # an epoch's end: on_epoch_end
        late = bool(self.every_seconds) and time.monotonic() - self.last_save >= self.every_seconds
        if self.every_seconds and engines.current().size() > 1:  # engine: any rank's clock decides for all
            late = engines.current().allreduce_max([float(late)], name="checkpoint_clock")[0] > 0
        due = (self.every_steps and step % self.every_steps == 0) or late
        ends_fit = batch + 1 == seg.steps and self.epoch + 1 == seg.epochs
        if self._stopping() or (due and not (ends_fit and seg.last)):
            self._save(self.epoch, step, micro)  # (the invocation's stop: on_epoch_end)

    def on_epoch_end(self, epoch, logs=None):
        seg = self.progress.segment
        if not seg.closes and epoch + 1 == seg.epochs:
            if seg.last:  # the invocation stops inside this epoch
                self._save(epoch, *self.progress.position(epoch, seg.steps - 1))
            return
        done = epoch + 1
        logs = {k: float(v) for k, v in (logs or {}).items()}
        for k, v in logs.items():  # every epoch's logs so far travel in the checkpoint
            self.history[k] = self.history.get(k, [])[:epoch] + [v]
        if done % self.every == 0 or (epoch + 1 == seg.epochs and seg.last) or self._stopping():
            self._written(lambda: save(self.run_dir, self.model, self.model.optimizer, done, self.keep,
                                       {**self.extra, **self.state(self.in_fit), "logs": logs,
                                        "history": self.history}))

    def _save(self, epoch, step, micro):
        metrics = [v.numpy().tolist() for v in metric_variables(self.model)]
        by_rank = engines.current().allgather_object(metrics)  # engine: every rank's own running sums
        self._written(lambda: save(
            self.run_dir, self.model, self.model.optimizer, epoch, self.keep,
            {**self.extra, **self.state(self.in_fit), "history": {k: v[:epoch] for k, v in self.history.items()},
             "epoch_metrics": metrics, "epoch_metrics_by_rank": by_rank, "micro_in_epoch": micro}, step=step))

    def _written(self, write):
        if self.write:
            with engines.current().chief_io():
                path = write()
            if self._stopping():
                self.stop.saved = path
        self.last_save = time.monotonic()


def metric_variables(model):
    """The running sums behind the epoch's logs (loss and compiled metrics)."""
    return [v for m in model.metrics for v in m.variables]


class RestoreEpochMetrics(keras.callbacks.Callback):
    """Resuming within an epoch: adds the epoch's running metric sums saved with the
    checkpoint to those of the first resumed step, so the epoch's logs are those of an
    uninterrupted run. (Keras builds the compiled metrics in the first step, and their
    states are sums: loss and accuracy totals and counts, AUC's confusion counts.)"""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_train_batch_end(self, batch, logs=None):
        if self.values is not None:
            variables = metric_variables(self.model)
            if len(variables) != len(self.values):
                raise ValueError(f"the checkpoint holds {len(self.values)} metric sums, the model has {len(variables)}: "
                                 f"it was written with other metrics")
            for v, value in zip(variables, self.values):
                v.assign_add(np.asarray(value, v.dtype))
            self.values = None
