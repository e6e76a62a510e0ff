"""The planner (`sngm-train plan`): its equations against hand-computed values, its fits
against known parameters, the update timer's bookkeeping, the allreduce measurement under
horovodrun, and the command on a real run directory made here."""

import json
import math
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from helpers import BIN, ROOT, sngm_train
from keras_sngm_trainers.planning import model


def test_update_time_and_ring_allreduce_by_hand():
    # 100 MB over 8 workers at 12.5 GB/s, alpha 5 us: 2*7/8 * 0.008 s + 14 * 5 us
    assert model.allreduce_seconds(100e6, 8, 12.5e9, 5e-6) == pytest.approx(0.014 + 7e-5, rel=1e-12)
    assert model.allreduce_seconds(100e6, 1, 12.5e9, 5e-6) == 0.0
    # B=8192 on 8 workers, micro-batch 256: 4 passes of 0.1 s, a 10 ms step, the allreduce
    assert model.update_seconds(8192, 8, 256, 0.1, 0.01, 100e6, 12.5e9, 5e-6) == pytest.approx(0.42407, rel=1e-12)
    # 128 examples a worker, under one micro-batch of 256: half a pass
    assert model.update_seconds(1024, 8, 256, 0.1, 0.0, 0, 12.5e9, 0.0) == pytest.approx(0.05, rel=1e-12)
    # 300 examples a worker at micro-batch 256: ceil(300/256) = 2 passes
    assert model.compute_seconds(600, 2, 256, 0.1) == pytest.approx(0.2, rel=1e-12)
    # overlap 1 hides up to one full pass: 0.01407 s of allreduce behind 0.1 s
    assert model.update_seconds(8192, 8, 256, 0.1, 0.01, 100e6, 12.5e9, 5e-6, overlap=1.0) == pytest.approx(0.41)
    # half hidden: 0.01407 - 0.05 < 0, nothing exposed; a 4 GB gradient: 0.56007 - 0.05 exposed
    assert model.update_seconds(8192, 8, 256, 0.1, 0.0, 4e9, 12.5e9, 5e-6, overlap=0.5) == pytest.approx(
        0.4 + 0.56007 - 0.05, rel=1e-12)


def test_updates_and_examples_to_target_by_hand():
    # S_min 1000, B_noise 500: E_min 500,000; S(250) = 1000 (1 + 500/250)
    assert model.updates_to_target(1000, 1000 * 500, 250) == pytest.approx(3000)
    assert model.examples_to_target(1000, 1000 * 500, 250) == pytest.approx(3000 * 250)
    # E = E_min (1 + B/B_noise)
    assert model.examples_to_target(1000, 1000 * 500, 250) == pytest.approx(1000 * 500 * (1 + 250 / 500))
    assert model.updates_to_target(0, 1e6, 250) == 4000  # perfect scaling (B_noise = inf): E_min / B
    # (5): w = 1/(1 + 100/100), 1/(1 + 300/100) = 0.5, 0.25; (0.5*100 + 0.25*300)/0.75
    assert model.effective_noise_scale([100, 300], 100) == pytest.approx(125 / 0.75)
    # (5) makes (4) exact along the run: the reference's own updates come back
    rng = np.random.default_rng(0)
    b_simple = rng.uniform(50, 2000, 400)
    s_min = float(np.sum(model.progress_weights(b_simple, 128)))
    assert model.updates_to_target(s_min, s_min * model.effective_noise_scale(b_simple, 128), 128) == pytest.approx(400)


def test_trajectory_updates_by_hand():
    # constant B_noise 200: a fixed batch of 100 takes S_min (1 + 2) updates
    assert model.trajectory_updates(100, [0, 1e9], [200, 200], lambda u: 100) == pytest.approx(300)
    # batch 100 for 100 updates (progress 100/3), then 200 (1/2 per update): 66.67 / 0.5 more
    assert model.trajectory_updates(100, [0, 1e9], [200, 200], lambda u: 100 if u < 100 else 200) == pytest.approx(
        100 + (100 - 100 / 3) / 0.5)
    # B_noise from 0 to 100 over progress 0..100 read by progress (interpolated), batch 100
    updates = model.trajectory_updates(50, [0, 100], [0, 100], lambda u: 100)
    done, u = 0.0, 0
    while done < 50:  # the same walk, written out
        step = 1 / (1 + np.interp(done, [0, 100], [0, 100]) / 100)
        done, u = done + step, u + 1
    assert u - 1 < updates <= u


def test_fits_recover_known_parameters():
    # a ring of 4 workers, alpha 20 us, busbw 2 GB/s, times with 3% noise
    sizes = 1024 * 4 ** np.arange(10)
    rng = np.random.default_rng(1)
    times = [model.allreduce_seconds(s, 4, 2e9, 20e-6) * rng.uniform(0.97, 1.03) for s in sizes]
    alpha, busbw, rms = model.fit_allreduce(sizes, times, 4)
    assert alpha == pytest.approx(20e-6, rel=0.05) and busbw == pytest.approx(2e9, rel=0.05) and rms < 0.03
    # exact data: exact parameters
    alpha, busbw, rms = model.fit_allreduce(sizes, [model.allreduce_seconds(s, 2, 1e9, 1e-4) for s in sizes], 2)
    assert (alpha, busbw) == (pytest.approx(1e-4, rel=1e-9), pytest.approx(1e9, rel=1e-9)) and rms < 1e-9
    batches = [128, 256, 512, 1024, 2048]
    updates = [model.updates_to_target(1000, 600_000, b) for b in batches]
    assert model.fit_s_min_and_noise(updates, batches) == (pytest.approx(1000), pytest.approx(600))
    assert model.fit_scaling(updates, batches, 600) == (pytest.approx(1000), pytest.approx(600_000))
    # perfect scaling: S = E_min / B; 1000 updates at 128 and 260 at 512: E_min by least squares
    e_min = (1000 / 128 + 260 / 512) / (1 / 128 ** 2 + 1 / 512 ** 2)
    assert model.fit_scaling([1000, 260], [128, 512], math.inf) == (0.0, pytest.approx(e_min))
    with pytest.raises(ValueError, match="two batch sizes"):
        model.fit_s_min_and_noise([10, 11], [128, 128])
    with pytest.raises(ValueError, match="at least 2 workers"):
        model.fit_allreduce(sizes, times, 1)


def test_update_timer_bookkeeping(tmp_path):
    """Micro-batches 10 ms, update-closing ones 30 ms, k = 3: the medians, the first
    updates and each fit's and epoch's first update left out."""
    from keras_sngm_trainers.timing import UpdateTimer

    now = [0.0]
    progress = types.SimpleNamespace(k=3)
    timer = UpdateTimer(str(tmp_path), progress, skip=2, facts={"workers": 1}, clock=lambda: now[0])
    timer.on_train_begin()
    for epoch in range(2):
        timer.on_epoch_begin(epoch)
        for batch in range(30):  # 10 updates an epoch
            now[0] += 0.030 if batch % 3 == 2 else 0.010
            if epoch == 1 and batch == 4:
                now[0] += 5.0  # a stall inside one update: only that update's median sample
            timer.on_train_batch_end(batch)
    timer.on_train_end()
    t = json.load(open(tmp_path / "timing.json"))
    # epoch 1: the invocation's first 2 updates skipped (the first has no start), 8 timed;
    # epoch 2: its first update left out (evaluation before it), 9 timed, one with the stall
    assert t["updates_timed"] == 17 and t["by_micro_batches"]["3"]["updates"] == 17
    assert t["micro_seconds"] == pytest.approx(0.010) and t["last_micro_seconds"] == pytest.approx(0.030)
    assert t["step_seconds"] == pytest.approx(0.020) and t["by_micro_batches"]["3"]["update_seconds"] == pytest.approx(0.05)
    assert t["workers"] == 1


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A real run: 512 synthetic images, B=64 of 4 micro-batches of 16, 2 epochs (16 updates)."""
    run = tmp_path_factory.mktemp("plan") / "run"
    proc = sngm_train(["resnet", "--dataset", "synthetic", "--depth", "8", "--train-subset", "512", "--num-classes",
                       "4", "--batch-size", "64", "--micro-batch", "16", "--lr", "0.3", "--epochs", "2",
                       "--diagnostics-every", "4", "--no-verbose", "--logdir", str(run)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run


def plan(args):
    return sngm_train(["plan", *args])


def test_plan_on_a_real_run_by_hand(small_run, tmp_path):
    out, png = tmp_path / "plan.json", tmp_path / "plan.png"
    proc = plan(["--run", str(small_run), "--target-epochs", "2", "--workers", "1,2,8", "--batch-sizes", "64,256",
                 "--bandwidth", "2", "--latency", "50", "--json", str(out), "--plot", str(png), "--max-workers", "2"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.load(open(out))
    rows = {(r["workers"], r["batch_size"]): r for r in result["rows"]}
    assert set(rows) == {(n, b) for n in (1, 2, 8) for b in (64, 256)}
    for r in rows.values():
        assert {"workers", "batch_size", "update_seconds", "updates", "hours", "worker_hours"} <= set(r)
    # every number from the run's own files, by hand
    timing = json.load(open(small_run / "timing.json"))
    config = json.load(open(small_run / "config.json"))
    assert config["allreduce_bytes"] == 4 * config["trainable_parameters"]
    t_micro, t_step = timing["micro_seconds"], max(timing["step_seconds"], 0.0)  # (a median may dip below)
    comm = 2 * 1 / 2 * config["allreduce_bytes"] / 2e9 + 2 * 1 * 50e-6  # N=2
    r = rows[(2, 256)]
    assert r["update_seconds"] == pytest.approx(8 * t_micro + t_step + comm, rel=1e-9)  # 128 a worker: 8 passes
    assert r["micro_batches"] == 8
    from keras_sngm_trainers.planning.measured import _tensorboard_scalars

    noise = [v for _, v in _tensorboard_scalars(str(small_run / "train"), "diagnostics/noise_scale") if v > 0]
    assert noise, "the run logged its noise scale"
    b_simple = np.interp(np.arange(16), [u for u, v in _tensorboard_scalars(str(small_run / "train"),
                                                                               "diagnostics/noise_scale") if v > 0], noise)
    w = 1 / (1 + b_simple / 64)
    b_noise, s_min = np.sum(w * b_simple) / np.sum(w), np.sum(w)  # 16 updates reach the target
    assert result["model"]["b_noise"] == pytest.approx(b_noise, rel=1e-9)
    assert result["model"]["s_min"] == pytest.approx(s_min, rel=1e-9)
    assert rows[(1, 64)]["updates"] == pytest.approx(16, rel=1e-9)
    assert r["updates"] == pytest.approx(s_min * (1 + b_noise / 256), rel=1e-9)
    assert result["model"]["e_min"] == pytest.approx(s_min * b_noise, rel=1e-9)
    assert r["hours"] == pytest.approx(r["update_seconds"] * r["updates"] / 3600, rel=1e-12)
    assert r["examples"] == pytest.approx(256 * r["updates"], rel=1e-12)
    assert r["worker_hours"] == pytest.approx(2 * r["hours"], rel=1e-12)
    assert r["efficiency"] == pytest.approx(rows[(1, 256)]["update_seconds"] / (2 * r["update_seconds"]), rel=1e-9)
    fastest = result["best"]["fastest (at most 2 workers)"]
    assert fastest["workers"] <= 2 and fastest["hours"] == min(
        x["hours"] for x in rows.values() if x["workers"] <= 2)
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "| 2 | 256 | 8 |" in proc.stdout and "fastest (at most 2 workers): " in proc.stdout
    # --worker-throughput replaces the measured compute: 1600 ex/s at micro-batch 16 = 10 ms a pass
    # and an assumed recipe with perfect scaling: 1000 updates at 64 are 250 at 256
    proc = plan(["--run", str(small_run), "--updates-to-target", "1000@64", "--noise-scale", "inf", "--workers", "1",
                 "--batch-sizes", "64,256", "--worker-throughput", "1600", "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.load(open(out))["rows"]
    assert rows[0]["update_seconds"] == pytest.approx(4 * 0.01, rel=1e-12)
    assert [r["updates"] for r in rows] == [pytest.approx(1000), pytest.approx(250)]


def test_msgd_is_not_extrapolated_past_its_measured_batches(small_run, tmp_path):
    run = tmp_path / "msgd"
    shutil.copytree(small_run, run)
    config = json.load(open(run / "config.json"))
    json.dump({**config, "optimizer": "msgd"}, open(run / "config.json", "w"))
    out = tmp_path / "plan.json"
    proc = plan(["--run", str(run), "--target-epochs", "2", "--workers", "1", "--batch-sizes", "32,64,128",
                 "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["batch_size"]: r for r in json.load(open(out))["rows"]}
    assert rows[32]["updates"] is not None and rows[64]["updates"] == pytest.approx(16)
    assert rows[128]["updates"] is None and rows[128]["hours"] is None
    assert rows[128]["note"] == "unsupported: msgd measured up to B=64"


BAD = [
    (["--bandwidth", "-1"], "--bandwidth must be a positive number of GB/s. Received: -1.0"),
    (["--latency", "nan"], "--latency must be >= 0 microseconds. Received: nan"),
    (["--workers", "0,8"], "--workers must be a comma-separated list of positive integers. Received: '0,8'"),
    (["--batch-sizes", "big"], "--batch-sizes must be a comma-separated list of positive integers. Received: 'big'"),
    (["--overlap", "2"], "--overlap must be in [0, 1]. Received: 2.0"),
    (["--workers", "1,8", "--bandwidth", "0"], "--bandwidth and --latency (or --allreduce FILE) are needed to plan "
                                               "for more than one worker. Received: --workers 1,8"),
    (["--target", "accuracy"], "--target must be METRIC=VALUE, e.g. val_accuracy=0.58. Received: 'accuracy'"),
]


@pytest.mark.parametrize("flags, message", BAD, ids=[" ".join(f) for f, _ in BAD])
def test_bad_flags(tmp_path, flags, message):
    goal = [] if "--target" in flags else ["--target-epochs", "1"]
    proc = plan(["--run", str(tmp_path), "--workers", "1", *goal, *flags])
    assert proc.returncode == 2 and proc.stderr.strip() == f"sngm-train: error: {message}", proc.stderr[-1500:]


def test_bad_runs_and_targets(small_run, tmp_path):
    def error(*args):
        proc = plan(["--workers", "1", *args])
        assert proc.returncode == 2, proc.stdout[-1500:] + proc.stderr[-1500:]
        assert proc.stderr.startswith("sngm-train: error: ") and proc.stderr.count("\n") == 1, proc.stderr
        return proc.stderr

    assert "is not a run directory of sngm-train (no config.json)" in error("--run", str(tmp_path),
                                                                            "--target-epochs", "1")
    bare = tmp_path / "bare"  # a run from before the planner's measurements
    shutil.copytree(small_run, bare)
    os.remove(bare / "timing.json")
    assert f"{bare} has no update times (timing.json)" in error("--run", str(bare), "--target-epochs", "1")
    assert ("--target val_accuracy=1.01 was never reached by " in error("--run", str(small_run), "--target",
                                                                        "val_accuracy=1.01"))
    assert "--target val_auc: " in error("--run", str(small_run), "--target", "val_auc=0.8")
    assert "trained 2 epochs only" in error("--run", str(small_run), "--target-epochs", "3")


@pytest.mark.slow
def test_measure_allreduce_under_horovodrun(tmp_path):
    out = tmp_path / "fit.json"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([os.path.join(BIN, "horovodrun"), "--gloo", "-np", "2", "-H", "localhost:2",
                           os.path.join(BIN, "sngm-train"), "plan", "--measure-allreduce", "--out", str(out),
                           "--max-bytes", str(16 << 20), "--repeats", "5"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    fit = json.load(open(out))
    assert fit["workers"] == 2 and fit["backend"] == "gloo" and fit["device"] == "cpu"
    assert [r["bytes"] for r in fit["sizes"]] == [1024 * 4 ** i for i in range(8)]
    for r in fit["sizes"]:  # NCCL-tests' convention, from the measured time
        assert r["busbw_gbs"] == pytest.approx(r["bytes"] / r["seconds"] / 1e9 * 2 * 1 / 2, rel=1e-9)
    # the fit is that of the measured times, by the planner's own least squares
    alpha, busbw, rms = model.fit_allreduce([r["bytes"] for r in fit["sizes"]], [r["seconds"] for r in fit["sizes"]], 2)
    assert (fit["alpha_seconds"], fit["busbw_bytes_per_second"]) == (pytest.approx(alpha), pytest.approx(busbw))
    assert busbw > 1e7 and rms < 1.0
    assert "fit: alpha" in proc.stdout
    # outside horovodrun: a clear error, before TensorFlow
    proc = plan(["--measure-allreduce", "--out", str(out)])
    assert proc.returncode == 2 and "needs at least 2 workers" in proc.stderr
