"""`--resume`: a run continues with its own settings, from its newest intact checkpoint.

    sngm-train resnet --logdir runs/x --resume               # every setting from runs/x/config.json
    sngm-train resnet --logdir runs/x --resume --epochs 200  # the same run, extended

The settings come from the run's `config.json`. A flag given with `--resume` that would
change the results (model, data, optimizer, batch, lr, schedule, seed, ...) and differs
from the saved value is refused, naming each; a flag equal to the saved value is
accepted. The flags in `MAY_CHANGE` may differ; `--epochs` moves the run's horizon: from
the resumed update on, the learning rate follows the schedule of a run of the new
`--epochs` (for poly and cosine a longer decay, so the rate steps up where the run is
extended; updates already done keep the rate they had). `config.json` records each such
change under `changed_on_resume`.

This module imports neither TensorFlow nor Keras (`settings` runs before them); `restore`
is called by the engine once the model and optimizer are built.
"""

import dataclasses
import json
import os
import sys

from keras_sngm_trainers import config

MAY_CHANGE = {
    "resume": "the flag itself",
    "logdir": "the run directory (it may have moved)",
    "epochs": "extends (or shortens) the run; the lr schedule from the resumed update on is that of the new --epochs",
    "stop_after": "job slicing: where this invocation ends",
    "stop_after_updates": "job slicing: where this invocation ends",
    "stop_signals": "how this invocation reacts to signals",
    "log_every": "logging only",
    "diagnostics_every": "logging only (the weights do not depend on it)",
    "verbose": "logging only",
    "ckpt_every": "when checkpoints are written, not what training does",
    "ckpt_every_steps": "when checkpoints are written, not what training does",
    "ckpt_every_minutes": "when checkpoints are written, not what training does",
    "keep": "how many checkpoints are kept",
    "hang_timeout": "when a hung run is given up, not what training does",
    "threads": "the host's cores: a resumed run may land on another machine",
    "tfds_dir": "where tensorflow-datasets keeps the same prepared data",
    "download": "whether tensorflow-datasets may fetch the same data",
}
# Of those, the ones that belong to one invocation: taken from the command line (or their
# defaults), never from config.json; the others keep their saved value unless given.
PER_INVOCATION = ("resume", "logdir", "stop_after", "stop_after_updates")


def settings(cfg, given, task):
    """The configuration to resume `cfg.logdir` with: its `config.json`'s settings, with the
    `given` flags (field names) that may change. Returns `cfg` unchanged when the
    directory has no `config.json` (a new run). Raises ValueError naming every flag that
    differs from the run's own setting, and for a run of another task."""
    path = os.path.join(cfg.logdir, "config.json")
    if not os.path.isfile(path):
        return cfg
    try:
        with open(path) as f:
            saved = json.load(f)
    except ValueError as e:
        raise ValueError(f"--resume: {path} is unreadable ({e}); it holds the run's settings") from None
    if saved.get("task", task) != task:
        raise ValueError(f"--resume: {cfg.logdir} is a run of `sngm-train {saved['task']}`, not of `sngm-train {task}`")
    fields = {f.name for f in config.fields_of(task)}
    kept = {name: saved[name] for name in fields if name in saved and name not in MAY_CHANGE}
    differing = [name for name in sorted(given) if name in kept and _differs(kept[name], getattr(cfg, name))]
    if differing:
        shown = ", ".join(f"{config.flag(n)} {_text(getattr(cfg, n))} (the run's: {_text(kept[n])})" for n in differing)
        raise ValueError(f"--resume continues {cfg.logdir} with the settings in its config.json, and these flags "
                         f"would change its results: {shown}. Resume without them, or start a new run in another "
                         f"--logdir. Flags that may change on resume: "
                         f"{', '.join(config.flag(n) for n in MAY_CHANGE if n in fields)}")
    values = dict(kept)
    for name in MAY_CHANGE:
        if name in fields and name in saved and name not in given and name not in PER_INVOCATION:
            values[name] = saved[name]
    return dataclasses.replace(cfg, **values)


def changes(previous, resolved):
    """`changed_on_resume` for the new config.json: the previous record, plus each
    `MAY_CHANGE` setting that now differs, as [old, new] (the run's history of them)."""
    record = dict(previous.get("changed_on_resume", {}))
    for name in MAY_CHANGE:
        if name not in PER_INVOCATION and name in previous and _differs(previous[name], resolved.get(name)):
            record.setdefault(name, [previous[name]]).append(resolved.get(name))
    return record


def restore(cfg, model, opt, rank, size, updates_per_epoch, workers=None):
    """Loads the newest intact checkpoint of `cfg.logdir` (rank 0 picks it and reads it, or
    every process does where the engine says so; the position is broadcast). Damaged newer checkpoints are passed over with a warning and kept as
    `<name>.damaged`. Returns (first epoch, updates done in it, micro-batches done in
    it per worker, the epoch logs before it, this rank's running metric sums of the epoch
    entered mid-way or None, the batch adapter's state or None). `workers`: the
    data-parallel replicas (default `size`, one device per process)."""
    from keras_sngm_trainers import checkpoint, engines

    eng = engines.current()
    path, damaged = checkpoint.newest_intact(cfg.logdir) if rank == 0 else (None, [])
    for where, wrong in damaged:
        name = os.path.basename(where).split(".damaged")[0]
        print(f"sngm-train: warning: checkpoint {name} is damaged ({wrong}): passed over, and kept as {where}",
              file=sys.stderr, flush=True)
    if rank == 0 and not path and cfg.verbose:
        what = "no intact checkpoint" if damaged else "no checkpoint"
        print(f"--resume: {what} in {cfg.logdir}: starting from scratch", flush=True)
    if eng.every_process_loads:  # (the engine's assignments are collective: every process loads rank 0's pick)
        path = eng.broadcast_object(path)
    found, past = None, {}
    if path and (rank == 0 or eng.every_process_loads):
        state = checkpoint.restore(path, model, opt)
        past = state.get("history", {})
        start = state.get("step_in_epoch", 0)
        found = {"path": path, "epoch": state["epoch"], "start": start,
                 "rounds": state.get("micro_in_epoch", 0), "metrics": state.get("epoch_metrics"),
                 "by_rank": state.get("epoch_metrics_by_rank"),
                 "adapted": state.get("batch_adapter"),
                 "workers": state.get("config", {}).get("workers", size), "updates": int(opt.iterations)}
    found = eng.broadcast_object(found)  # every rank resumes at rank 0's position
    if found is None:
        return 0, 0, 0, past, None, None
    where = os.path.basename(found["path"])
    workers = workers or size  # data-parallel replicas: the processes times the devices each feeds
    if found["start"] and found["workers"] != workers:
        raise ValueError(f"{where} was saved within an epoch by {found['workers']} workers, and each worker's data "
                         f"position is its own: resume it with {found['workers']} workers (horovodrun -np "
                         f"{found['workers']}, or processes x devices = {found['workers']}), not {workers}")
    if found["start"] and cfg.elastic:
        raise ValueError(f"{where} was saved within an epoch (update {found['start']}); --elastic resumes from epoch "
                         f"ends only: resume without --elastic to the epoch's end first")
    if found["epoch"] + (1 if found["start"] else 0) > cfg.epochs:
        raise ValueError(f"--epochs {cfg.epochs} ends before {where}, which is in epoch "
                         f"{found['epoch'] + (1 if found['start'] else 0)}: pass a larger --epochs to extend the run")
    if rank == 0 and cfg.verbose:
        at = (f"epoch {found['epoch'] + 1}, update {found['start']} of {updates_per_epoch}" if found["start"]
              else f"after epoch {found['epoch']} of {cfg.epochs}")
        print(f"resuming {cfg.logdir} from {where}: {at} ({found['updates']} updates done)", flush=True)
    metrics = None
    if found["start"] or found["rounds"]:  # entered mid-way: this rank's own running sums (older checkpoints: rank 0's)
        metrics = found["by_rank"][rank] if len(found["by_rank"] or ()) == size else found["metrics"]
    return found["epoch"], found["start"], found["rounds"], past, metrics, found["adapted"]


def _differs(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) != float(b)
    return a != b


def _text(value):
    return " ".join(str(v) for v in value) if isinstance(value, list) else str(value)
