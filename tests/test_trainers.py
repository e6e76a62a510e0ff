"""Trainer behaviour in one process: resume, checkpoints, TensorBoard, bad input."""

import glob
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from helpers import sngm_train, weights_of

from keras_sngm_trainers import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SMALL = ["resnet", "--dataset", "synthetic", "--depth", "8", "--train-subset", "128", "--num-classes", "4",
         "--batch-size", "32", "--micro-batch", "16", "--lr", "0.3", "--seed", "5", "--no-verbose", "--log-every", "2"]



def _task_flags(task, tmp_path):
    """Small runs of each data path (in memory, Criteo text, streamed ImageNet): 5 updates an epoch."""
    if task == "cifar":
        return SMALL[:6] + ["160", *SMALL[7:]]
    if task == "imagenet":
        import imagenet_fixtures as fx

        data = fx.write_folder(str(tmp_path / "imagenet"), train=40)
        return ["resnet", "--dataset", "imagenet", "--data-dir", data, "--arch", "twoconv", "--image-size", "16",
                "--batch-size", "8", "--micro-batch", "4", "--lr", "0.05", "--eval-batch", "12", "--no-verbose"]
    from keras_sngm_trainers.data import planted_ctr

    planted_ctr.generate(str(tmp_path / "ctr"), 1280, 256, seed=1)
    return ["deepfm", "--data", str(tmp_path / "ctr" / "train.tsv"), "--test-data", str(tmp_path / "ctr" / "test.tsv"),
            "--batch-size", "256", "--micro-batch", "128", "--hash-space", "4096", "--embedding-dim", "4", "--hidden",
            "16", "--shuffle-buffer", "512", "--no-verbose"]


@pytest.mark.parametrize("task", ["cifar", "imagenet", "deepfm"])
def test_resume_mid_epoch_equals_uninterrupted(tmp_path, task):
    """Stopped after 7 updates (2 into the second epoch) with checkpoints every 3, then
    resumed: the same weights, optimizer state and epoch logs as one uninterrupted run."""
    flags = _task_flags(task, tmp_path) + ["--epochs", "2", "--deterministic", "--diagnostics-every", "0"]
    straight = sngm_train(flags + ["--logdir", str(tmp_path / "a")])
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert json.load(open(tmp_path / "a" / "config.json"))["updates_per_epoch"] == 5
    part = sngm_train(flags + ["--logdir", str(tmp_path / "b"), "--ckpt-every-steps", "3", "--stop-after-updates", "7",
                               "--keep", "0"])
    assert part.returncode == 0, part.stderr[-2000:]
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(tmp_path / "b")] == \
        ["ckpt-00000-0000003", "ckpt-00001", "ckpt-00001-0000002"]  # epoch 1 update 3, epoch 1's end, the stop
    final = json.load(open(tmp_path / "b" / "final.json"))
    assert final["epochs_done"] == 1 and final["stopped_at"] == {"epoch": 2, "update_in_epoch": 2}
    rest = sngm_train(flags + ["--logdir", str(tmp_path / "b"), "--resume"])
    assert rest.returncode == 0, rest.stderr[-2000:]
    cfg = json.load(open(tmp_path / "b" / "config.json"))
    assert (cfg["first_epoch"], cfg["first_update_in_epoch"]) == (1, 2)
    a, b = weights_of(tmp_path / "a" / "ckpt-00002"), weights_of(tmp_path / "b" / "ckpt-00002")
    assert [n for n, _ in a] == [n for n, _ in b] and len(a) > 4
    for (name, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(x, y, err_msg=name)  # exact in one process
    with np.load(tmp_path / "a" / "ckpt-00002" / "optimizer.npz") as oa, \
            np.load(tmp_path / "b" / "ckpt-00002" / "optimizer.npz") as ob:
        for key in oa.files:
            np.testing.assert_array_equal(oa[key], ob[key])
    ha = json.load(open(tmp_path / "a" / "history.json"))["history"]
    hb = json.load(open(tmp_path / "b" / "history.json"))["history"]
    del ha["examples_per_sec"], hb["examples_per_sec"]
    assert hb == ha and len(hb["loss"]) == 2  # the resumed epoch's logs too (its metric sums travel in the checkpoint)


def test_checkpoint_every_minutes_saves_within_epochs(tmp_path):
    proc = sngm_train(SMALL + ["--epochs", "2", "--logdir", str(tmp_path / "r"), "--ckpt-every-minutes", "1e-6",
                               "--keep", "0"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = [os.path.basename(p) for p in checkpoint.list_checkpoints(tmp_path / "r")]
    # 4 updates an epoch: a checkpoint after every update, the epoch ends as epoch checkpoints
    assert names == ["ckpt-00000-0000001", "ckpt-00000-0000002", "ckpt-00000-0000003", "ckpt-00001",
                     "ckpt-00001-0000001", "ckpt-00001-0000002", "ckpt-00001-0000003", "ckpt-00002"]
    state = json.load(open(tmp_path / "r" / "ckpt-00001-0000002" / "state.json"))
    assert state["epoch"] == 1 and state["step_in_epoch"] == 2 and len(state["history"]["loss"]) == 1
    assert len(state["epoch_metrics"]) >= 4  # loss and accuracy: totals and counts


def test_segments_cover_the_run_exactly():
    from keras_sngm_trainers.segments import update_ranges as segments

    assert segments(0, 0, 3, 5) == [(0, 3, 0, 5)]
    assert segments(0, 0, 3, 5, max_updates=7) == [(0, 1, 0, 5), (1, 2, 0, 2)]
    assert segments(1, 2, 3, 5) == [(1, 2, 2, 5), (2, 3, 0, 5)]
    assert segments(1, 2, 3, 5, max_updates=2) == [(1, 2, 2, 4)]
    assert segments(1, 2, 4, 5, max_updates=9) == [(1, 2, 2, 5), (2, 3, 0, 5), (3, 4, 0, 1)]
    assert segments(3, 0, 3, 5) == []
    for first, start, max_updates in [(0, 0, 0), (0, 3, 11), (1, 4, 6), (2, 1, 0)]:  # updates add up
        plan = segments(first, start, 4, 5, max_updates)
        done = sum((stop - begin - 1) * 5 + last - first_u for begin, stop, first_u, last in plan)
        assert done == min(max_updates or 10**9, 4 * 5 - (first * 5 + start))


def test_run_directory_has_config_checkpoints_and_tensorboard(tmp_path):
    run = tmp_path / "run"
    proc = sngm_train(SMALL + ["--epochs", "4", "--keep", "2", "--log-every", "1", "--logdir", str(run)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = json.load(open(run / "config.json"))
    assert cfg["optimizer"] == "sngm" and cfg["micro_batches_per_update"] == 2 and cfg["updates_per_epoch"] == 4
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(run)] == ["ckpt-00003", "ckpt-00004"]  # keep 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for d in ("train", "test"):  # (no validation split: the per-epoch evaluation is the test set)
        acc = EventAccumulator(str(run / d))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"]) | set(acc.Tags().get("tensors", []))
    for tag in ("epoch_loss", "epoch_accuracy", "step/learning_rate", "step/examples_per_sec"):
        assert tag in tags, (tag, sorted(tags))
    assert "epoch_learning_rate" not in tags  # logged once: per update, as step/learning_rate
    # The poly schedule is at lr0 * (1 - t/T)^1.1 after update 4 (the end of epoch 1, of T = 16),
    # in the logs, and its last update's rate in the epoch's history.
    acc = EventAccumulator(str(run / "train"), size_guidance={"tensors": 0})
    acc.Reload()
    lr = {e.step: float(np.asarray(__import__("tensorflow").make_ndarray(e.tensor_proto))) for e in acc.Tensors("step/learning_rate")}
    assert lr[5] == pytest.approx(0.3 * (1 - 4 / 16) ** 1.1, rel=1e-5)
    assert json.load(open(run / "history.json"))["history"]["learning_rate"][1] == pytest.approx(
        0.3 * (1 - 7 / 16) ** 1.1, rel=1e-5)


def test_micro_batch_unset_is_the_papers_rule(tmp_path):
    """--micro-batch unset: each worker computes B/workers examples in one pass, and
    accumulates micro-batches of 128 only above that (the paper's protocol). --batch-size 64
    on one process trains in one pass of 64; 256 is two micro-batches of 128."""
    from keras_sngm_trainers import config

    rule = {(64, 1): 64, (256, 1): 128, (4096, 8): 128, (64, 2): 32, (8192, 8): 1024}
    for (batch, workers), micro in rule.items():
        task = "deepfm" if batch == 8192 else "resnet"
        got = config.micro_batch_of(config.dataclasses.replace(config.defaults(task), batch_size=batch), task, workers)
        assert got == micro, (batch, workers, got)
    flags = [f for f in SMALL if f not in ("--micro-batch", "16")]
    run = tmp_path / "run"
    proc = sngm_train(flags[:flags.index("--batch-size")] + ["--batch-size", "64", "--epochs", "1", "--logdir", str(run)]
                      + flags[flags.index("--batch-size") + 2:])
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = json.load(open(run / "config.json"))
    assert (cfg["micro_batch"], cfg["micro_batches_per_update"], cfg["updates_per_epoch"]) == (64, 1, 2)


SAVER = r'''
import os, sys, time
import numpy as np, keras
from keras_sngm_trainers import checkpoint
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
    # a folder named but empty: that folder, and tensorflow-datasets is not tried
    (tmp_path / "nothing").mkdir()
    proc = sngm_train(["resnet", "--data-dir", str(tmp_path / "nothing"), "--tfds-dir", str(tmp_path / "tfds"),
                       "--no-download", "--logdir", str(tmp_path / "run")])
    assert proc.returncode == 2
    assert str(tmp_path / "nothing") in proc.stderr and str(tmp_path / "tfds") not in proc.stderr
    # no folder named, nothing prepared and no download: where it looked
    proc = sngm_train(["resnet", "--tfds-dir", str(tmp_path / "tfds"), "--no-download", "--logdir",
                       str(tmp_path / "run")])
    assert proc.returncode == 2
    assert str(tmp_path / "tfds") in proc.stderr and "Provide --data-dir" in proc.stderr


def test_criteo_missing_files(tmp_path):
    proc = sngm_train(["deepfm", "--data", str(tmp_path / "none.tsv"), "--logdir", str(tmp_path / "run")])
    assert proc.returncode == 2 and f"--data matches no file or directory. Received: '{tmp_path / 'none.tsv'}'" in proc.stderr
