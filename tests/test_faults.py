"""Preemption and faults in one process: a signal stops cleanly and --resume continues
exactly; a damaged newest checkpoint is passed over; a full disk keeps the previous
checkpoint; --resume takes the run's own settings."""

import dataclasses
import json
import os
import resource
import signal
import subprocess
import time

import numpy as np
import pytest

from helpers import BIN, ROOT, sngm_train, weights_of

from keras_sngm_trainers import checkpoint, config, resume

# 8 updates an epoch; a constant lr, so that runs of different --epochs share their first epochs.
FLAGS = ["resnet", "--dataset", "synthetic", "--depth", "8", "--train-subset", "256", "--num-classes", "4",
         "--batch-size", "32", "--micro-batch", "16", "--lr", "0.1", "--schedule", "constant", "--seed", "3",
         "--deterministic", "--diagnostics-every", "0", "--log-every", "1"]


# The JAX engine needs Keras' JAX backend (the suite's own processes run on TensorFlow).
ENGINE_ENV = {"horovod": {}, "jax": {"KERAS_BACKEND": "jax"}}


def assert_same_weights(a, b):
    wa, wb = weights_of(a), weights_of(b)
    assert [n for n, _ in wa] == [n for n, _ in wb] and len(wa) > 4
    for (name, x), (_, y) in zip(wa, wb):
        np.testing.assert_array_equal(x, y, err_msg=name)


def history(run):
    h = json.load(open(os.path.join(run, "history.json")))["history"]
    h.pop("examples_per_sec")
    return h


@pytest.mark.parametrize("engine", ["horovod", "jax"])
def test_sigterm_mid_run_stops_cleanly_and_resume_is_exact(tmp_path, engine):
    """SIGTERM once the run is at update 5 of 80, then again every 50 ms until it exits (a
    second signal during the save): exit 143, the message names the signal and the
    checkpoint, which is intact; no final.json. `--resume` given only --logdir (and a
    shorter --epochs) then ends at the weights and epoch logs of an uninterrupted run."""
    flags, engine_env = FLAGS + ["--engine", engine], ENGINE_ENV[engine]
    straight = sngm_train(flags + ["--epochs", "3", "--no-verbose", "--logdir", str(tmp_path / "a")], **engine_env)
    assert straight.returncode == 0, straight.stderr[-2000:]
    run = tmp_path / "b"
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **engine_env}
    out = open(tmp_path / "out.txt", "w")
    proc = subprocess.Popen([os.path.join(BIN, "sngm-train"), *flags, "--epochs", "10", "--logdir", str(run)],
                            cwd=ROOT, env=env, stdout=out, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while "update 5/80" not in open(tmp_path / "out.txt").read():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.02)
    while proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
    err = proc.stderr.read()
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM received: stopping at the end of the update in flight" in err, err[-2000:]
    line = [x for x in err.splitlines() if "stopped by SIGTERM after update" in x]
    assert len(line) == 1, err[-2000:]
    update = int(line[0].split("after update ")[1].split()[0])
    named = line[0].split("checkpoint ")[1].split(";")[0]
    assert 5 <= update < 24 and os.path.basename(named) == os.path.basename(checkpoint.latest(run)), (update, named)
    assert checkpoint.problem(named) is None and not list(run.glob(".tmp-*"))
    state = json.load(open(os.path.join(named, "state.json")))
    assert state["epoch"] * 8 + state["step_in_epoch"] == update  # the checkpoint is at the update stopped at
    assert not (run / "final.json").exists()

    rest = sngm_train(["resnet", "--logdir", str(run), "--resume", "--epochs", "3"], **engine_env)
    assert rest.returncode == 0, rest.stderr[-2000:]
    assert f"resuming {run} from {os.path.basename(named)}" in rest.stdout, rest.stdout[:3000]
    assert_same_weights(tmp_path / "a" / "ckpt-00003", run / "ckpt-00003")
    assert history(run) == history(tmp_path / "a")
    assert json.load(open(run / "config.json"))["changed_on_resume"] == {"epochs": [10, 3]}


def _file_size_limit(limit):
    def apply():  # in the child: writes past `limit` bytes fail with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("engine", ["horovod", "jax"])
def test_full_disk_and_damaged_newest_checkpoint(tmp_path, engine):
    """A file-size limit (made here with RLIMIT_FSIZE, below the weights file's size) makes
    the epoch-3 save fail: exit 4, a message naming the checkpoint and the error, the
    previous checkpoint intact, no temporary left. Then the newest checkpoint is damaged
    (its weights file truncated): --resume passes it over with a warning, keeps it as
    ckpt-00002.damaged byte for byte, resumes from ckpt-00001 (an epoch checkpoint), and
    ends bit for bit where an uninterrupted run ends, with its epoch logs. A further
    --resume of the finished run changes nothing."""
    flags, engine_env = FLAGS + ["--epochs", "3", "--no-verbose", "--keep", "0", "--engine", engine], ENGINE_ENV[engine]
    straight = sngm_train(flags + ["--logdir", str(tmp_path / "a")], **engine_env)
    assert straight.returncode == 0, straight.stderr[-2000:]
    run = tmp_path / "b"
    part = sngm_train(flags + ["--logdir", str(run), "--stop-after", "2"], **engine_env)
    assert part.returncode == 0, part.stderr[-2000:]
    limit = os.path.getsize(run / "ckpt-00002" / "model.weights.h5") // 2
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **engine_env}
    full = subprocess.run([os.path.join(BIN, "sngm-train"), "resnet", "--logdir", str(run), "--resume"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(limit))
    assert full.returncode == 4, full.stderr[-3000:]
    assert "could not write checkpoint ckpt-00003" in full.stderr and "File too large" in full.stderr, full.stderr[-2000:]
    assert "the newest checkpoint is still ckpt-00002" in full.stderr
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(run)] == ["ckpt-00001", "ckpt-00002"]
    assert checkpoint.problem(str(run / "ckpt-00002")) is None and not list(run.glob(".tmp-*"))

    weights = run / "ckpt-00002" / "model.weights.h5"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # a node died while a non-atomic file system wrote it
    rest = sngm_train(["resnet", "--logdir", str(run), "--resume", "--verbose"], **engine_env)  # (was --no-verbose)
    assert rest.returncode == 0, rest.stderr[-2000:]
    assert "warning: checkpoint ckpt-00002 is damaged (model.weights.h5 is unreadable" in rest.stderr, rest.stderr
    assert f"kept as {run / 'ckpt-00002.damaged'}" in rest.stderr
    assert "from ckpt-00001: after epoch 1 of 3" in rest.stdout, rest.stdout[:3000]
    assert (run / "ckpt-00002.damaged" / "model.weights.h5").read_bytes() == data[: len(data) // 2]
    assert_same_weights(tmp_path / "a" / "ckpt-00003", run / "ckpt-00003")
    assert history(run) == history(tmp_path / "a")  # every epoch, across the resumes
    assert json.load(open(run / "final.json"))["test_accuracy"] == json.load(open(tmp_path / "a" / "final.json"))[
        "test_accuracy"]
    # Resuming a finished run changes nothing and says so.
    before = {f: (run / f).read_text() for f in ("final.json", "history.json", "config.json")}
    again = sngm_train(["resnet", "--logdir", str(run), "--resume", "--verbose"], **engine_env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already finished all 3 epochs: nothing to do" in again.stdout
    assert {f: (run / f).read_text() for f in before} == before


def test_each_kind_of_damage_is_named(tmp_path):
    """`checkpoint.problem` on copies of a real checkpoint: intact, a missing file, JSON
    cut short, a truncated optimizer file, a truncated weights file; `newest_intact` skips
    the damaged newer ones and sets them aside without deleting anything."""
    import shutil

    run = tmp_path / "r"
    proc = sngm_train(FLAGS + ["--epochs", "1", "--no-verbose", "--logdir", str(run)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    good = run / "ckpt-00001"
    assert checkpoint.problem(str(good)) is None
    damage = {
        2: ("optimizer.npz is missing", lambda d: (d / "optimizer.npz").unlink()),
        3: ("state.json is unreadable", lambda d: (d / "state.json").write_text('{"epoch": 3, "hist')),
        4: ("optimizer.npz is unreadable", lambda d: (d / "optimizer.npz").write_bytes(
            (d / "optimizer.npz").read_bytes()[:-300])),
        5: ("model.weights.h5 is unreadable", lambda d: (d / "model.weights.h5").write_bytes(
            (d / "model.weights.h5").read_bytes()[:4096])),
    }
    for epoch, (message, harm) in damage.items():
        copy = run / f"ckpt-{epoch:05d}"
        shutil.copytree(good, copy)
        harm(copy)
        assert checkpoint.problem(str(copy)).startswith(message), (epoch, checkpoint.problem(str(copy)))
    path, damaged = checkpoint.newest_intact(str(run))
    assert path == str(good)
    assert [(os.path.basename(p), w.split(" (")[0]) for p, w in damaged] == \
        [(f"ckpt-{e:05d}.damaged", damage[e][0]) for e in (5, 4, 3, 2)]
    assert sorted(os.listdir(run / "ckpt-00002.damaged")) == ["model.weights.h5", "state.json"]


def _saved_config(tmp_path, **changes):
    run = tmp_path / "run"
    run.mkdir()
    saved = {**dataclasses.asdict(config.defaults("resnet")), "task": "resnet", "workers": 1, **changes}
    (run / "config.json").write_text(json.dumps(saved))
    return run, saved


def test_resume_refuses_flags_that_change_the_run(tmp_path):
    """As a user tried it: an SNGM run (B=256) resumed with --optimizer msgd --batch-size 512
    --lr 0.1 --epochs 5. Refused before TensorFlow is imported, naming each flag with both
    values; config.json is left as it was. Flags equal to the run's are accepted."""
    run, saved = _saved_config(tmp_path, batch_size=256, micro_batch=128, dataset="synthetic", epochs=3)
    before = (run / "config.json").read_text()
    t = time.perf_counter()
    proc = sngm_train(["resnet", "--logdir", str(run), "--resume", "--optimizer", "msgd", "--batch-size", "512",
                       "--lr", "0.1", "--epochs", "5"])
    assert time.perf_counter() - t < 10
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    for text in ("--batch-size 512 (the run's: 256)", "--lr 0.1 (the run's: 1.6)", "--optimizer msgd (the run's: sngm)"):
        assert text in err, err
    assert "--epochs" not in err.split("would change its results:")[1].split("Resume without")[0]
    assert (run / "config.json").read_text() == before

    given = {"optimizer", "batch_size", "epochs", "log_every", "resume", "logdir", "stop_after"}
    cfg = dataclasses.replace(config.defaults("resnet"), optimizer="sngm", batch_size=256, epochs=7, log_every=5,
                              resume=True, logdir=str(run), stop_after=1)
    merged = resume.settings(cfg, given, "resnet")
    assert (merged.batch_size, merged.micro_batch, merged.dataset) == (256, 128, "synthetic")  # the run's own
    assert (merged.epochs, merged.log_every, merged.stop_after) == (7, 5, 1)  # may change on resume
    with pytest.raises(ValueError, match="run of `sngm-train resnet`, not of `sngm-train deepfm`"):
        resume.settings(dataclasses.replace(config.defaults("deepfm"), logdir=str(run), resume=True), set(), "deepfm")


def test_a_longer_run_on_resume_follows_the_longer_schedule(tmp_path):
    """--epochs 2 of a poly schedule, then --resume --epochs 4: the first 16 updates had the
    2-epoch schedule's lr, the next 16 the 4-epoch schedule's (lr (1 - t/T)^p, t the
    updates before), read back from TensorBoard; config.json records the change."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    flags = [f for f in FLAGS if f not in ("constant",)]
    flags[flags.index("--schedule") + 1:flags.index("--schedule") + 1] = ["poly"]
    run = tmp_path / "r"
    first = sngm_train(flags + ["--epochs", "2", "--power", "2", "--no-verbose", "--logdir", str(run)])
    assert first.returncode == 0, first.stderr[-2000:]
    more = sngm_train(["resnet", "--logdir", str(run), "--resume", "--epochs", "4"])
    assert more.returncode == 0, more.stderr[-2000:]
    acc = EventAccumulator(str(run / "train"), size_guidance={"tensors": 0})
    acc.Reload()
    import tensorflow as tf

    lr = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("step/learning_rate")}
    assert sorted(lr) == list(range(1, 33))
    expected = {u: 0.1 * (1 - (u - 1) / (16 if u <= 16 else 32)) ** 2 for u in lr}
    np.testing.assert_allclose([lr[u] for u in sorted(lr)], [expected[u] for u in sorted(lr)], rtol=1e-5)
    saved = json.load(open(run / "config.json"))
    assert saved["epochs"] == 4 and saved["changed_on_resume"] == {"epochs": [2, 4]} and saved["power"] == 2
