"""What the planner reads from a run directory (each missing piece is a `PlanError` naming
the run and what to do):

- `config.json`: task, optimizer, workers, micro-batch, batch (or `auto`), gradient bytes
  (`allreduce_bytes`, after `--compression`), updates per epoch;
- `timing.json` (`keras_sngm_trainers.timing`): median micro-batch, step and update seconds;
- `history.json`: the per-epoch metrics and examples, and with an adaptive batch every
  update's batch (`batch_runs`);
- `train/` events: the noise scale `diagnostics/noise_scale` every `--diagnostics-every`
  updates, read with TensorBoard's reader (else the per-epoch `noise_scale` of the history).
"""

import dataclasses
import json
import math
import os


class PlanError(ValueError):
    """Bad input to the planner: `sngm-train: error:`, exit 2."""


@dataclasses.dataclass
class Run:
    path: str
    config: dict
    timing: dict
    history: dict
    batch_runs: list

    @property
    def adaptive(self):
        return self.config.get("batch_size") == "auto"

    @property
    def batch(self):
        """The fixed global batch (the starting one when adaptive)."""
        return int(self.config["batch_min"] if self.adaptive else self.config["batch_size"])

    @property
    def optimizer(self):
        return self.config["optimizer"]

    def need_timing(self):
        if not self.timing or self.timing.get("last_micro_seconds") is None:
            raise PlanError(f"{self.path} has no update times (timing.json): it was trained before they were recorded, "
                            f"with --elastic, or too briefly (more than 5 updates are needed); train it again, or pass "
                            f"--worker-throughput")
        return self.timing

    def updates_at_examples(self, examples):
        """The updates done when `examples` examples had been seen."""
        if not self.adaptive:
            return examples / self.batch
        for first, n, b, before in self.batch_runs:
            if examples <= before + n * b:
                return first + (examples - before) / b
        first, n, b, before = self.batch_runs[-1]
        return first + n

    def updates_after_epoch(self, epoch):
        """Updates done at the end of 1-based `epoch`."""
        seen = self.history.get("examples")
        if seen and len(seen) >= epoch:
            return self.updates_at_examples(seen[epoch - 1])
        if self.adaptive:
            raise PlanError(f"{self.path}: its history has no per-epoch examples; train it again with this version")
        return epoch * int(self.config["updates_per_epoch"])

    def batch_of_update(self, u):
        """The global batch of update `u` (0-based)."""
        if not self.adaptive:
            return self.batch
        for first, n, b, _ in self.batch_runs:
            if u < first + n:
                return b
        return self.batch_runs[-1][2]

    def noise_trajectory(self):
        """[(update, B_simple)], positive finite values only, by update."""
        points = _tensorboard_scalars(os.path.join(self.path, "train"), "diagnostics/noise_scale")
        if not points:
            per_epoch = self.history.get("noise_scale") or []
            points = [(self.updates_after_epoch(e + 1), v) for e, v in enumerate(per_epoch)]
        points = sorted((u, v) for u, v in points if v is not None and math.isfinite(v) and v > 0)
        if not points:
            raise PlanError(f"{self.path} has no gradient noise scale: it needs two micro-batch gradients per update "
                            f"(--batch-size >= 2 x workers x --micro-batch) and --diagnostics-every > 0; or pass "
                            f"--noise-scale")
        return points


def load(path):
    """Reads run directory `path`."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise PlanError(f"--run {path} is not a run directory of sngm-train (no config.json)")
    files = {}
    for name in ("config", "timing", "history"):
        file = os.path.join(path, f"{name}.json")
        try:
            with open(file) as f:
                files[name] = json.load(f)
        except FileNotFoundError:
            files[name] = {}
        except (OSError, json.JSONDecodeError) as e:
            raise PlanError(f"{file} cannot be read: {e}") from None
    if not files["history"]:
        raise PlanError(f"{path} has no history.json: the run has not finished (or stopped) yet")
    return Run(path, files["config"], files["timing"], files["history"].get("history", {}),
               files["history"].get("batch_runs", []))


def reached(run, metric, value):
    """(updates, 1-based epoch) at the first epoch end where `metric` reached `value`
    (at most for losses, at least otherwise)."""
    values = run.history.get(metric)
    if values is None:
        known = ", ".join(sorted(k for k in run.history if k.startswith("val_") or k.startswith("test_"))) or "none"
        raise PlanError(f"--target {metric}: {run.path} has no such per-epoch metric (it has: {known})")
    lower = "loss" in metric
    for e, v in enumerate(values):
        if (v <= value) if lower else (v >= value):
            return run.updates_after_epoch(e + 1), e + 1
    best = min(values) if lower else max(values)
    raise PlanError(f"--target {metric}={value:g} was never reached by {run.path}: its best was {best:.4g} "
                    f"(epoch {values.index(best) + 1} of {len(values)})")


def after_epochs(run, epochs):
    """(updates, epochs) of `--target-epochs`."""
    done = len(run.history.get("loss", []))
    if done < epochs:
        raise PlanError(f"--target-epochs {epochs}: {run.path} trained {done} epochs only")
    return run.updates_after_epoch(epochs), epochs


def _tensorboard_scalars(logdir, tag):
    """[(step, value)] of a scalar tag in a TensorBoard log directory (the newest value
    per step, as a resumed run may repeat steps)."""
    if not os.path.isdir(logdir):
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir, size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    if tag in tags.get("tensors", []):
        import numpy as np

        events = [(e.step, float(np.asarray(_tensor_value(e.tensor_proto)))) for e in acc.Tensors(tag)]
    elif tag in tags.get("scalars", []):
        events = [(e.step, e.value) for e in acc.Scalars(tag)]
    else:
        return []
    return sorted(dict(events).items())


def _tensor_value(proto):
    from tensorboard.util import tensor_util

    return tensor_util.make_ndarray(proto)
