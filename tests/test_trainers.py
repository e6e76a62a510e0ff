"""Trainer behaviour in one process: resume, checkpoints, TensorBoard, bad input."""

import glob
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from helpers import sngm_train

from trainers import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SMALL = ["resnet", "--dataset", "synthetic", "--depth", "8", "--train-subset", "128", "--num-classes", "4",
         "--batch-size", "32", "--micro-batch", "16", "--lr", "0.3", "--seed", "5", "--no-verbose", "--log-every", "2"]



def weights_of(ckpt):
    import h5py

    out = []
    with h5py.File(os.path.join(ckpt, "model.weights.h5")) as f:
        f.visititems(lambda name, obj: out.append((name, obj[()])) if hasattr(obj, "shape") else None)
    return out


def test_resume_equals_uninterrupted(tmp_path):
    flags = SMALL + ["--epochs", "3", "--deterministic"]
    straight = sngm_train(flags + ["--logdir", str(tmp_path / "a")])
    assert straight.returncode == 0, straight.stderr[-2000:]
    part = sngm_train(flags + ["--logdir", str(tmp_path / "b"), "--stop-after", "2"])
    assert part.returncode == 0, part.stderr[-2000:]
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(tmp_path / "b")] == ["ckpt-00001", "ckpt-00002"]
    rest = sngm_train(flags + ["--logdir", str(tmp_path / "b"), "--resume"])
    assert rest.returncode == 0, rest.stderr[-2000:]
    assert json.load(open(tmp_path / "b" / "config.json"))["first_epoch"] == 2
    a, b = weights_of(tmp_path / "a" / "ckpt-00003"), weights_of(tmp_path / "b" / "ckpt-00003")
    assert [n for n, _ in a] == [n for n, _ in b] and len(a) > 10
    for (name, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(x, y, err_msg=name)  # exact in one process
    ha = json.load(open(tmp_path / "a" / "history.json"))["history"]
    hb = json.load(open(tmp_path / "b" / "history.json"))["history"]
    assert len(hb["loss"]) == 3 and hb["loss"] == ha["loss"]  # every epoch, across the resume
    assert hb["val_accuracy"] == ha["val_accuracy"]
    # Resuming a finished run changes nothing and says so.
    before = {f: open(tmp_path / "b" / f).read() for f in ("final.json", "history.json")}
    again = sngm_train([f for f in flags if f != "--no-verbose"] + ["--logdir", str(tmp_path / "b"), "--resume"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already finished all 3 epochs: nothing to do" in again.stdout
    assert {f: open(tmp_path / "b" / f).read() for f in before} == before
    assert json.load(open(tmp_path / "b" / "final.json"))["val_accuracy"] == ha["val_accuracy"][-1]


def test_run_directory_has_config_checkpoints_and_tensorboard(tmp_path):
    run = tmp_path / "run"
    proc = sngm_train(SMALL + ["--epochs", "4", "--keep", "2", "--logdir", str(run)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = json.load(open(run / "config.json"))
    assert cfg["optimizer"] == "sngm" and cfg["micro_batches_per_update"] == 2 and cfg["updates_per_epoch"] == 4
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(run)] == ["ckpt-00003", "ckpt-00004"]  # keep 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for d in ("train", "validation"):
        acc = EventAccumulator(str(run / d))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"]) | set(acc.Tags().get("tensors", []))
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_learning_rate", "epoch_examples_per_sec",
                "step/learning_rate", "step/examples_per_sec"):
        assert tag in tags, (tag, sorted(tags))
    # The poly schedule is at lr0 * (1 - t/T)^1.1 at the end of epoch 1 (t = 4 of T = 16).
    acc = EventAccumulator(str(run / "train"), size_guidance={"tensors": 0})
    acc.Reload()
    lr = {e.step: float(np.asarray(__import__("tensorflow").make_ndarray(e.tensor_proto))) for e in acc.Tensors("epoch_learning_rate")}
    assert lr[0] == pytest.approx(0.3 * (1 - 4 / 16) ** 1.1, rel=1e-5)


SAVER = r'''
import os, sys, time
import numpy as np, keras
from trainers import checkpoint
m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
m.compile(optimizer="sgd", loss="mse"); m.optimizer.build(m.trainable_variables)
checkpoint.save(sys.argv[1], m, m.optimizer, 1)
print("saved 1", flush=True)
m.layers[0].kernel.assign(np.ones((3, 2)))
real = np.savez
def slow(*a, **k):
    print("saving 2", flush=True); time.sleep(60); real(*a, **k)
np.savez = slow
checkpoint.save(sys.argv[1], m, m.optimizer, 2)
'''


def test_checkpoint_killed_while_saving_leaves_previous_intact(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True)
    lines = []
    while "saving 2" not in "".join(lines):
        line = proc.stdout.readline()
        assert line, "saver exited early"
        lines.append(line)
    proc.send_signal(signal.SIGKILL)  # a crash in the middle of writing checkpoint 2
    proc.wait()
    assert glob.glob(str(tmp_path / ".tmp-ckpt-00002-*"))  # the half-written one
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(tmp_path)] == ["ckpt-00001"]
    import keras

    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    m.compile(optimizer="sgd", loss="mse")
    state = checkpoint.restore(checkpoint.latest(tmp_path), m, m.optimizer)
    assert state["epoch"] == 1 and not np.allclose(m.layers[0].kernel.numpy(), 1.0)
    checkpoint.save(str(tmp_path), m, m.optimizer, 2)  # the next save cleans up
    assert not glob.glob(str(tmp_path / ".tmp-ckpt-*"))


def test_restore_rejects_a_checkpoint_of_another_optimizer(tmp_path):
    import keras

    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    m.compile(optimizer=keras.optimizers.SGD(momentum=0.9), loss="mse")
    m.optimizer.build(m.trainable_variables)
    path = checkpoint.save(str(tmp_path), m, m.optimizer, 1)
    m2 = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    m2.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    with pytest.raises(ValueError, match="optimizer variables"):
        checkpoint.restore(path, m2, m2.optimizer)


@pytest.mark.parametrize("flags,needle", [
    (["--batch-size", "100", "--micro-batch", "16"], "--batch-size 100 is not divisible by workers x micro-batch = 1 x 16"),
    (["--batch-size", "256", "--micro-batch", "16"], "larger than the 128 training examples"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--depth", "21"], "--depth must be 6n+2 (20, 32, 44, 56, 110) for --image-size 32. Received: 21"),
    (["--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
    (["--schedule", "linear"], "argument --schedule: invalid choice: 'linear'"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--steps-per-epoch", "5"], "--steps-per-epoch 5 is more than the 4 updates one pass over the training data gives"),
])
def test_bad_flags_give_clear_errors(tmp_path, flags, needle):
    base = [f for f in SMALL]
    proc = sngm_train(base + ["--epochs", "1", "--logdir", str(tmp_path)] + flags)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr, proc.stderr[-2000:]


def test_no_data_found_names_where_it_looked(tmp_path):
    (tmp_path / "nothing").mkdir()
    proc = sngm_train(["resnet", "--data-dir", str(tmp_path / "nothing"), "--tfds-dir", str(tmp_path / "tfds"),
                       "--no-download", "--logdir", str(tmp_path / "run")])
    assert proc.returncode == 2
    assert str(tmp_path / "nothing") in proc.stderr and str(tmp_path / "tfds") in proc.stderr
    assert "Provide --data-dir" in proc.stderr


def test_criteo_missing_files(tmp_path):
    proc = sngm_train(["deepfm", "--data", str(tmp_path / "none.tsv"), "--logdir", str(tmp_path / "run")])
    assert proc.returncode == 2 and f"--data matches no file or directory. Received: '{tmp_path / 'none.tsv'}'" in proc.stderr
