"""Atomic, rotating checkpoints of model weights, optimizer state and progress.

A checkpoint is a directory `ckpt-EEEEE/` (E = epochs completed) holding
`model.weights.h5`, `optimizer.npz` and `state.json`. It is written under a temporary
name and renamed into place only when complete, so a crash while saving leaves the
previous checkpoints intact; stale temporaries are removed by the next save.
"""

import glob
import json
import os
import re
import shutil

import keras
import numpy as np

_NAME = re.compile(r"^ckpt-(\d{5})$")


def list_checkpoints(run_dir):
    """Complete checkpoints in `run_dir`, oldest first."""
    found = []
    for path in glob.glob(os.path.join(run_dir, "ckpt-*")):
        m = _NAME.match(os.path.basename(path))
        if m and os.path.isfile(os.path.join(path, "state.json")):
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def save(run_dir, model, optimizer, epoch, keep=3, extra=None):
    """Writes checkpoint `ckpt-{epoch}` atomically and keeps the newest `keep`. Refuses
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
    final = os.path.join(run_dir, f"ckpt-{epoch:05d}")
    tmp = os.path.join(run_dir, f".tmp-ckpt-{epoch:05d}-{os.getpid()}")
    os.makedirs(tmp)
    model.save_weights(os.path.join(tmp, "model.weights.h5"))
    with open(os.path.join(tmp, "optimizer.npz"), "wb") as f:
        np.savez(f, **{str(i): v.numpy() for i, v in enumerate(opt_vars)})
    state = {"epoch": epoch, "optimizer_variables": [v.path for v in opt_vars], **(extra or {})}
    with open(os.path.join(tmp, "state.json"), "w") as f:  # written last: marks completeness
        json.dump(state, f, indent=1)
    for name in os.listdir(tmp):
        _fsync(os.path.join(tmp, name))
    if os.path.exists(final):  # re-saving the same epoch (after a resume)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(run_dir)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


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
    (trainers.distributed.DistributedOptimizer), else all its variables."""
    return optimizer.checkpoint_variables() if hasattr(optimizer, "checkpoint_variables") else optimizer.variables


def latest(run_dir):
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointCallback(keras.callbacks.Callback):
    """Saves every `every` epochs (and at the end). Construct it on rank 0 only."""

    def __init__(self, run_dir, every=1, keep=3, extra=None, history=None):
        super().__init__()
        self.run_dir, self.every, self.keep, self.extra = run_dir, every, keep, extra or {}
        self.history = {k: list(v) for k, v in (history or {}).items()}  # epochs before a resume

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        logs = {k: float(v) for k, v in (logs or {}).items()}
        for k, v in logs.items():  # every epoch's logs so far travel in the checkpoint
            self.history[k] = self.history.get(k, [])[:epoch] + [v]
        if done % self.every == 0 or done == self.params.get("epochs"):  # (fit's epochs: includes --stop-after)
            save(self.run_dir, self.model, self.model.optimizer, done, self.keep,
                 {**self.extra, "logs": logs, "history": self.history})
