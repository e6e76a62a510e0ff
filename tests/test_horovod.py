"""Multi-process behaviour under the real launcher: horovodrun --gloo -np 2 on loopback."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
pytestmark = pytest.mark.slow


def horovodrun(args, timeout=420, np_=2):
    if shutil.which("horovodrun", path=BIN) is None:
        pytest.skip("horovodrun not installed (make install builds Horovod)")
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [os.path.join(BIN, "horovodrun"), "--gloo", "-np", str(np_), "-H", f"localhost:{np_}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return proc


def sngm_train(args, timeout=300):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([os.path.join(BIN, "sngm-train"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_horovod_layer_inside_workers(tmp_path):
    proc = horovodrun([sys.executable, "tests/hvd_check.py", str(tmp_path)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1))
    assert r0["size"] == r1["size"] == 2
    assert r0["before_broadcast"] != r1["before_broadcast"]  # really different before
    for a, b in zip(r0["after_broadcast"], r1["after_broadcast"]):
        np.testing.assert_array_equal(a, b)
    # Different data on each rank, yet identical weights: gradients were averaged.
    for a, b in zip(r0["trainable_after_fit"], r1["trainable_after_fit"]):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert r0["updates"] == 3 and r0["allreduce_calls"] == 3  # 6 micro-batches, one allreduce per update
    np.testing.assert_allclose(r0["dense_mean"], np.full((2, 2), 1.5))
    np.testing.assert_allclose(r0["sparse_mean_dense"], [[0.5, 0.5], [1.0, 1.0], [0.0, 0.0]])
    assert r0["none_kept"]
    assert r0["averaged_logs"] == r1["averaged_logs"] == {"loss": 1.5, "accuracy": 0.25}


def assert_close_to_scale(got, want, rtol=1e-5):
    """Norm-wise relative error over all trainables: ||got - want|| <= rtol ||want||.
    (Summation order differs between 1 and 2 processes; near-zero entries such as
    fresh biases cannot match element by element.)"""
    g = np.concatenate([np.ravel(x) for x in got])
    w = np.concatenate([np.ravel(x) for x in want])
    assert g.shape == w.shape
    err = np.linalg.norm(g - w) / np.linalg.norm(w)
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"
    assert np.max(np.abs(g - w)) <= 10 * rtol * np.max(np.abs(w))  # and no single outlier


def _load_trainable(run_dir, model_fn, ckpt="ckpt-00001"):
    model = model_fn()
    model.load_weights(os.path.join(run_dir, ckpt, "model.weights.h5"))
    return [w.numpy() for w in model.trainable_weights]


BASE = ["resnet", "--dataset", "synthetic", "--depth", "8", "--train-subset", "256", "--num-classes", "4", "--seed", "3",
        "--lr", "0.3", "--no-verbose", "--log-every", "1"]
RESNET = BASE + ["--epochs", "1", "--steps-per-epoch", "3", "--diagnostics-every", "1"]


@pytest.mark.parametrize("optimizer", ["sngm", "lars"])
def test_resnet_two_workers_equal_one_process(tmp_path, optimizer):
    """2 workers x micro-batch 16 == 1 process x 2 micro-batches of 16 (global batch 32).
    (BatchNorm normalizes per micro-batch, so the reference keeps the micro-batch.)"""
    flags = RESNET + ["--optimizer", optimizer, "--batch-size", "32", "--micro-batch", "16"]
    one = sngm_train(flags + ["--logdir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = horovodrun([os.path.join(BIN, "sngm-train"), *flags, "--logdir", str(tmp_path / "two")])
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    from trainers.models.resnet import cifar_resnet

    a = _load_trainable(tmp_path / "one", lambda: cifar_resnet(8, 4))
    b = _load_trainable(tmp_path / "two", lambda: cifar_resnet(8, 4))
    assert_close_to_scale(b, a)
    h1 = json.load(open(tmp_path / "one" / "history.json"))["history"]
    h2 = json.load(open(tmp_path / "two" / "history.json"))["history"]
    # Averaged training metrics equal the one-process ones. (Validation uses each
    # worker's own BatchNorm moving statistics, which Horovod does not average.)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(h2[key], h1[key], rtol=1e-5, err_msg=key)
    # The noise scale from the 2 workers' gradients equals the one from the one
    # process's 2 micro-batches (same examples in the same small batches).
    assert np.isfinite(h1["noise_scale"][0]) and h1["noise_scale"][0] != 0
    np.testing.assert_allclose(h2["noise_scale"], h1["noise_scale"], rtol=1e-3)
    np.testing.assert_allclose(h2["grad_norm"], h1["grad_norm"], rtol=1e-4)


@pytest.mark.parametrize("optimizer", ["sngm", "lars"])
def test_deepfm_two_workers_equal_one_process(tmp_path, optimizer):
    from trainers.data import planted_ctr

    data = tmp_path / "ctr"
    planted_ctr.generate(str(data), 512, 256, seed=1)
    flags = ["deepfm", "--data", str(data / "train.tsv"), "--test-data", str(data / "test.tsv"), "--optimizer", optimizer,
             "--batch-size", "128", "--epochs", "1", "--steps-per-epoch", "3", "--hash-space", "512", "--embedding-dim", "4",
             "--hidden", "16", "16", "--lr", "0.1", "--no-verbose",
             "--shuffle-buffer", "0"]  # (each worker shuffles only its own rows: equal to one process unshuffled)
    one = sngm_train(flags + ["--micro-batch", "128", "--logdir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = horovodrun([os.path.join(BIN, "sngm-train"), *flags, "--micro-batch", "64", "--logdir", str(tmp_path / "two")])
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    from trainers.models.deepfm import deepfm

    a = _load_trainable(tmp_path / "one", lambda: deepfm(512, 4, (16, 16)))
    b = _load_trainable(tmp_path / "two", lambda: deepfm(512, 4, (16, 16)))
    assert_close_to_scale(b, a)
    h1 = json.load(open(tmp_path / "one" / "history.json"))["history"]
    h2 = json.load(open(tmp_path / "two" / "history.json"))["history"]
    for key in ("loss", "logloss", "val_auc", "val_logloss"):
        np.testing.assert_allclose(h2[key], h1[key], rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("sizes", [[200, 150, 180, 90], [700]])  # by file, by line
def test_criteo_two_workers_read_every_row_exactly_once(tmp_path, sizes):
    import gzip

    files = []
    for f, n in enumerate(sizes):  # row i of file f has I1 = f * 100000 + i; gzipped like the 1TB logs
        files.append(str(tmp_path / f"day_{f}.gz"))
        with gzip.open(files[-1], "wt") as out:
            out.write("".join(f"{i % 2}\t{f * 100000 + i}" + "\t" * 38 + "\n" for i in range(n)))
    proc = horovodrun([sys.executable, "tests/criteo_shard_check.py", str(tmp_path), *files])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1))
    assert r0["size"] == 2 and r0["by"] == r1["by"] == ("file" if len(sizes) > 1 else "line")
    assert not set(r0["ids"]) & set(r1["ids"])
    want = sorted(f * 100000 + i for f, n in enumerate(sizes) for i in range(n))
    assert sorted(r0["ids"] + r1["ids"]) == want


def test_worker_death_stops_job_and_keeps_last_checkpoint(tmp_path):
    if shutil.which("horovodrun", path=BIN) is None:
        pytest.skip("horovodrun not installed")
    import psutil

    from trainers import checkpoint
    run = tmp_path / "run"
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [os.path.join(BIN, "horovodrun"), "--gloo", "-np", "2", "-H", "localhost:2", os.path.join(BIN, "sngm-train"),
           *BASE, "--epochs", "200", "--steps-per-epoch", "2", "--batch-size", "32", "--micro-batch", "16",
           "--logdir", str(run)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while len(checkpoint.list_checkpoints(run)) < 2:
            assert proc.poll() is None and time.time() < deadline, "training did not reach its second checkpoint"
            time.sleep(0.5)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "sngm-train" in " ".join(p.cmdline()) and p.environ().get("HOROVOD_RANK") == "1"]
        assert workers, "rank 1 not found"
        workers[0].kill()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code != 0
    import keras  # the newest complete checkpoint still loads

    from trainers.models.resnet import cifar_resnet
    from trainers import distributed, recipes

    model = cifar_resnet(8, 4)
    inner = recipes.optimizer("sngm", recipes.schedule("poly", 0.3, 400), weight_decay=1e-4)  # as the trainer built it
    opt = distributed.DistributedOptimizer(inner, accumulation_steps=1, micro_batch_size=16)  # 1 worker now, 2 then
    model.compile(optimizer=opt, loss="mse")
    state = checkpoint.restore(checkpoint.latest(run), model, opt)
    assert state["epoch"] >= 2 and keras.ops.all(keras.ops.isfinite(model.weights[0].value))


def test_resume_with_two_workers_within_tolerance(tmp_path):
    """Uninterrupted on 2 workers == 1 epoch in one process, then resumed on 2 workers
    (checkpoints do not depend on the worker count)."""
    flags = BASE + ["--epochs", "3", "--steps-per-epoch", "2", "--batch-size", "32", "--micro-batch", "16"]
    proc = horovodrun([os.path.join(BIN, "sngm-train"), *flags, "--logdir", str(tmp_path / "a")])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    proc = sngm_train(flags + ["--logdir", str(tmp_path / "b"), "--stop-after", "1"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = horovodrun([os.path.join(BIN, "sngm-train"), *flags, "--logdir", str(tmp_path / "b"), "--resume"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    from trainers.models.resnet import cifar_resnet

    a = _load_trainable(tmp_path / "a", lambda: cifar_resnet(8, 4), "ckpt-00003")
    b = _load_trainable(tmp_path / "b", lambda: cifar_resnet(8, 4), "ckpt-00003")
    assert_close_to_scale(b, a, rtol=1e-4)
