"""The JAX engine (`--engine jax`, Keras' distribution API): one process against two
(started by `sngm-train launch` on loopback, no mocks) against one process with two host
devices; a SIGKILL and --resume; the divergence guard; the same run as the Horovod engine;
no TensorFlow; bad input. The tests that need no TensorFlow also run under Python 3.12 with
JAX 0.11 (`make test` runs this file in a second venv, .venv-jax)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import BIN, ROOT, sngm_train, weights_of

JAX = {"KERAS_BACKEND": "jax", "SNGM_CONNECT_TIMEOUT": "60"}
HIDE_TF = "import sys; sys.modules['tensorflow'] = None; "
MAIN = "from keras_sngm_trainers.cli import main; sys.exit(main(sys.argv[1:]))"
# ResNet-8 (batch normalization: one mean over the global batch on this engine), 5 updates an
# epoch of 2 micro-batches of 16 per device.
FLAGS = ["resnet", "--engine", "jax", "--dataset", "synthetic", "--depth", "8", "--image-size", "16", "--num-classes",
         "4", "--train-subset", "320", "--batch-size", "64", "--lr", "0.2", "--seed", "2", "--no-verbose",
         "--log-every", "1", "--diagnostics-every", "1"]


def has_tensorflow():
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def run(args, launch=0, hide_tf=False, timeout=300, **env):
    """`sngm-train ARGS` (under `sngm-train launch -np LAUNCH` when given), as a subprocess;
    with `hide_tf`, in an interpreter where `import tensorflow` fails."""
    command = [sys.executable, "-c", HIDE_TF + MAIN] if hide_tf else [os.path.join(BIN, "sngm-train")]
    if launch:
        command = [os.path.join(BIN, "sngm-train"), "launch", "-np", str(launch), *command]
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **JAX, **env}
    return subprocess.run([*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def assert_close_weights(a, b, rtol=2e-5, atol=2e-6):
    """The weights and optimizer state of two checkpoints. The optimizer's scalars (counters,
    and the noise-scale averages: differences of nearly equal squared norms, which amplify
    float32 reassociation) within 1e-3."""
    wa, wb = weights_of(a), weights_of(b)
    assert [n for n, _ in wa] == [n for n, _ in wb] and len(wa) >= 4
    for (name, x), (_, y) in zip(wa, wb):
        scalar = name.startswith("optimizer/") and np.ndim(x) == 0
        np.testing.assert_allclose(x, y, rtol=1e-3 if scalar else rtol, atol=atol, err_msg=name)


def scalars(logdir, tag):
    """{step: value} of `tag` in `logdir`'s event files, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    return {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}


def tags(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    return set(acc.Tags()["tensors"])


def test_one_process_two_processes_and_two_devices_train_the_same_weights(tmp_path):
    """A BN-free net: the same global batch of 64 as 1 process x 1 device x 2 micro-batches of 32, as 2
    processes (the launcher, Gloo on loopback) x 1 device x 2 of 16 each, and as 1 process x
    2 host devices x 2 of 16: the same weights within float32 rounding after 2 epochs. Each
    process feeds its own shard: a shard fed twice, or the devices' gradients summed instead
    of averaged, would not match. Then SIGTERM to the launcher of a second 2-process run:
    both processes stop after the same update (exit 143), rank 0 with a checkpoint, and
    --resume under the launcher ends where the uninterrupted run did."""
    # 10 updates an epoch, BN-free: batch normalization's backward pass over 2 shards (here, one mean over the
    # global batch) amplifies float32's reassociation on these random images to 1e-4 within a few updates
    # A constant lr: the stopped run below is started for 10 epochs and resumed for 2.
    flags = FLAGS + ["--train-subset", "640", "--arch", "twoconv", "--lr", "0.05", "--schedule", "constant"]
    one = run(flags + ["--epochs", "2", "--micro-batch", "32", "--logdir", str(tmp_path / "one")], hide_tf=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(flags + ["--epochs", "2", "--micro-batch", "16", "--logdir", str(tmp_path / "two")], launch=2, hide_tf=True)
    assert two.returncode == 0, two.stderr[-3000:]
    devices = run(flags + ["--epochs", "2", "--micro-batch", "16", "--logdir", str(tmp_path / "devices")], hide_tf=True,
                  XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert devices.returncode == 0, devices.stderr[-3000:]
    for name, processes, workers in (("one", 1, 1), ("two", 2, 2), ("devices", 1, 2)):
        cfg = json.load(open(tmp_path / name / "config.json"))
        assert (cfg["engine"], cfg["processes"], cfg["workers"], cfg["micro_batches_per_update"]) == \
            ("jax", processes, workers, 2), name
    assert_close_weights(tmp_path / "one" / "ckpt-00002", tmp_path / "two" / "ckpt-00002")
    assert_close_weights(tmp_path / "one" / "ckpt-00002", tmp_path / "devices" / "ckpt-00002")
    losses = [scalars(tmp_path / name / "train", "step/loss") for name in ("one", "two", "devices")]
    assert sorted(losses[0]) == list(range(1, 21))
    for other in losses[1:]:
        np.testing.assert_allclose([other[s] for s in range(1, 21)], [losses[0][s] for s in range(1, 21)], rtol=1e-6)

    stopped = tmp_path / "stopped"
    out = open(tmp_path / "out.txt", "w")
    env = {**os.environ, "PYTHONPATH": ROOT, **JAX}
    proc = subprocess.Popen([os.path.join(BIN, "sngm-train"), "launch", "-np", "2", sys.executable, "-c", HIDE_TF + MAIN,
                             *flags, "--epochs", "10", "--micro-batch", "16", "--verbose", "--logdir", str(stopped)],
                            cwd=ROOT, env=env, stdout=out, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while "update 3/100" not in open(tmp_path / "out.txt").read():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=240)[1]
    assert proc.returncode == 143, err[-3000:]
    lines = [x for x in err.splitlines() if "stopped by SIGTERM after update" in x]
    assert len(lines) == 2 and sum("rank 1" in x for x in lines) == 1, err[-3000:]
    assert sum("; checkpoint " in x for x in lines) == 1, err[-3000:]
    updates = {int(x.split("after update ")[1].split()[0].rstrip(",")) for x in lines}
    assert len(updates) == 1 and 3 <= min(updates) < 20, lines  # the same update on both
    assert not (stopped / "final.json").exists()
    rest = run(["resnet", "--logdir", str(stopped), "--resume", "--epochs", "2"], launch=2, hide_tf=True)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert_close_weights(tmp_path / "two" / "ckpt-00002", stopped / "ckpt-00002")


KILLER = r'''
import os, signal, sys
from keras_sngm_trainers import checkpoint
real, saves = checkpoint.save, []
def save(*args, **kwargs):
    path = real(*args, **kwargs)
    saves.append(path)
    if len(saves) == 2:  # after the second checkpoint is complete: no clean-up of any kind
        os.kill(os.getpid(), signal.SIGKILL)
    return path
checkpoint.save = save
'''


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    """Killed (SIGKILL) right after its checkpoint at update 6 (2 accumulated micro-batches
    an update, checkpoints every 3), then --resume: the weights of an uninterrupted run, bit
    for bit, and its epoch logs."""
    flags = FLAGS + ["--epochs", "2", "--micro-batch", "32", "--ckpt-every-steps", "3", "--keep", "0", "--deterministic"]
    straight = run(flags + ["--logdir", str(tmp_path / "a")], hide_tf=True)
    assert straight.returncode == 0, straight.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": ROOT, **JAX}
    killed = subprocess.run([sys.executable, "-c", HIDE_TF + KILLER + MAIN, *flags, "--logdir", str(tmp_path / "b")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "b"))[:2] == ["ckpt-00000-0000003", "ckpt-00001"]
    rest = run(["resnet", "--logdir", str(tmp_path / "b"), "--resume", "--verbose"], hide_tf=True)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert "from ckpt-00001: after epoch 1 of 2 (5 updates done)" in rest.stdout, rest.stdout[-3000:]
    for (name, x), (_, y) in zip(weights_of(tmp_path / "a" / "ckpt-00002"), weights_of(tmp_path / "b" / "ckpt-00002")):
        np.testing.assert_array_equal(x, y, err_msg=name)
    history = [json.load(open(tmp_path / r / "history.json"))["history"] for r in "ab"]
    for h in history:
        h.pop("examples_per_sec")
    assert history[0] == history[1]


def test_accumulation_with_a_changing_k_matches_numpy():
    """The accumulation under `--batch-size auto` (tests/accumulation_check.py), stepped as
    Keras' JAX train step steps it: 2 then 3 micro-batches per update from one compiled
    step, SNGM at an examples-following schedule's rate, the noise-scale averages and the
    examples count against NumPy; float16's overflowed update skipped as a whole."""
    env = {**os.environ, "PYTHONPATH": ROOT, **JAX}
    script = "import runpy; runpy.run_path('tests/accumulation_check.py', run_name='__main__')"
    proc = subprocess.run([sys.executable, "-c", HIDE_TF + script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    a = out["adaptive"]
    assert a["max_dw"] < 1e-6 * a["w_scale"] * 10, a
    for key in ("g2", "trace"):
        assert a[key][0] == pytest.approx(a[key][1], rel=1e-4, abs=1e-5), (key, a)
    assert a["estimates"] == 4 and a["batch"] == 12 and a["examples"] == [40, 40] and a["updates"] == 4
    assert "inside an update (1 micro-batches accumulated)" in a["inside"]
    assert out["traces"] == [1, 1]  # a new k is not a new compiled step
    f = out["float16"]
    assert f["after_skip"] == {"w": [1.0, 1.0, 1.0], "scale": 2.0 ** 14, "skipped": 1, "updates": 1}
    np.testing.assert_allclose(f["w"], f["expected_w"], rtol=1e-6)


# A run whose batch grows (test_adaptive.py's, on this engine): B_simple ~ 2.4 on these images, and a factor
# of 30 doubles the batch at the first trusted decision.
AUTO = ["resnet", "--engine", "jax", "--dataset", "synthetic", "--arch", "twoconv", "--train-subset", "512",
        "--num-classes", "4", "--micro-batch", "16", "--lr", "0.1", "--seed", "2", "--no-verbose", "--log-every", "1",
        "--batch-size", "auto", "--batch-min", "32", "--batch-max", "128", "--adapt-every", "5", "--adapt-factor", "30",
        "--epochs", "3", "--schedule", "poly", "--power", "2", "--deterministic", "--ckpt-every-steps", "4"]


def test_adaptive_batch_resume_and_two_processes(tmp_path):
    """--batch-size auto: the rate of every update is the fixed-batch schedule at the examples
    before it; a run stopped mid-epoch after the batch changed and resumed twice ends bit for
    bit where the uninterrupted one did; 2 processes (the launcher) take the same decisions."""
    straight = run(AUTO + ["--logdir", str(tmp_path / "a")], hide_tf=True)
    assert straight.returncode == 0, straight.stderr[-3000:]
    final = json.load(open(tmp_path / "a" / "final.json"))
    assert final["batch_trajectory"] and final["examples"] == 1536 and final["updates"] < 48, final
    lr, batch, examples = (scalars(tmp_path / "a" / "train", f"step/{t}") for t in ("learning_rate", "batch_size",
                                                                                       "examples"))
    assert len(set(batch.values())) > 1
    for n in lr:  # poly, power 2, over 3 epochs of 16 updates of 32: read at the examples before update n
        t = (examples[n] - batch[n]) / 32
        assert lr[n] == pytest.approx(0.1 * (1 - t / 48) ** 2, rel=1e-5, abs=1e-9), n
    b = str(tmp_path / "b")
    for extra in (["--stop-after-updates", "23"], ["--resume", "--stop-after-updates", "3"], ["--resume"]):
        part = run(AUTO + ["--logdir", b, *extra], hide_tf=True)
        assert part.returncode == 0, part.stderr[-3000:]
    for (name, x), (_, y) in zip(weights_of(tmp_path / "a" / "ckpt-00003"), weights_of(tmp_path / "b" / "ckpt-00003")):
        np.testing.assert_array_equal(x, y, err_msg=name)
    with np.load(tmp_path / "a" / "ckpt-00003" / "optimizer.npz") as oa, \
            np.load(tmp_path / "b" / "ckpt-00003" / "optimizer.npz") as ob:
        assert oa.files == ob.files
        for key in oa.files:
            np.testing.assert_array_equal(oa[key], ob[key])
    assert json.load(open(os.path.join(b, "final.json"))) == final
    two = run(AUTO + ["--batch-min", "64", "--batch-max", "256", "--logdir", str(tmp_path / "c")], launch=2,
              hide_tf=True)
    assert two.returncode == 0, two.stderr[-3000:]
    c = json.load(open(tmp_path / "c" / "final.json"))
    assert c["workers_agreeing_on_batches"] == 2 and c["batch_trajectory"][0]["from"] == 64, c


def test_divergence_guard_exit_3_and_nothing_saved(tmp_path):
    """MSGD at lr 1e6 overflows in epoch 1: exit 3 naming the epoch, no checkpoint, and
    final.json says the run diverged."""
    from keras_sngm_trainers import checkpoint

    proc = run(FLAGS + ["--epochs", "3", "--micro-batch", "32", "--optimizer", "msgd", "--lr", "1e6",
                        "--logdir", str(tmp_path / "r")], hide_tf=True)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "sngm-train: error: training diverged:" in proc.stderr and "epoch 1" in proc.stderr, proc.stderr[-3000:]
    assert "no checkpoint was written" in proc.stderr
    assert checkpoint.list_checkpoints(str(tmp_path / "r")) == []
    final = json.load(open(tmp_path / "r" / "final.json"))
    assert final["diverged"] is True and final["epochs_done"] == 0


def test_without_tensorflow_trains_and_writes_tensorboard(tmp_path):
    """A host with JAX and no TensorFlow (`import tensorflow` fails): DeepFM on synthetic
    rows trains and its event files are read back by TensorBoard's reader and by
    tools/show_run.py; DeepFM on planted Criteo files (held in memory) learns; a streamed
    dataset (ImageNet shards) is one line naming the install, exit 2."""
    proc = run(["deepfm", "--engine", "jax", "--data", "synthetic", "--train-rows", "2048", "--batch-size", "512",
                "--micro-batch", "128", "--hash-space", "1000", "--embedding-dim", "4", "--hidden", "8", "--epochs",
                "1", "--no-verbose", "--log-every", "1", "--diagnostics-every", "1", "--logdir", str(tmp_path / "d")],
               hide_tf=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(scalars(tmp_path / "d" / "train", "diagnostics/noise_scale")) == [1, 2, 3, 4]
    assert {"step/learning_rate", "step/batch_size", "diagnostics/grad_norm", "diagnostics/momentum_norm"} <= \
        tags(tmp_path / "d" / "train")
    shown = subprocess.run([sys.executable, "-c", HIDE_TF + "import runpy; sys.argv = ['show_run', sys.argv[1]]; "
                            "runpy.run_path('tools/show_run.py', run_name='__main__')", str(tmp_path / "d")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "diagnostics/noise_scale" in shown.stdout, shown.stderr[-3000:]

    from keras_sngm_trainers.data import planted_ctr

    planted_ctr.generate(str(tmp_path / "ctr"), 4096, 1024, seed=1)
    planted = run(["deepfm", "--engine", "jax", "--data", str(tmp_path / "ctr" / "train.tsv"), "--test-data",
                   str(tmp_path / "ctr" / "test.tsv"), "--batch-size", "256", "--micro-batch", "128", "--hash-space",
                   "4096", "--embedding-dim", "4", "--hidden", "16", "--lr", "0.5", "--epochs", "3", "--no-verbose",
                   "--logdir", str(tmp_path / "p")], hide_tf=True)
    assert planted.returncode == 0, planted.stderr[-3000:]
    final = json.load(open(tmp_path / "p" / "final.json"))
    best = json.load(open(tmp_path / "ctr" / "truth.json"))["best_test_auc"]
    assert 0.6 < final["test_auc"] <= best, (final, best)  # it learned, and not past what the data allows

    shards = tmp_path / "imagenet"
    shards.mkdir()
    for name in ("train-00000-of-00001", "validation-00000-of-00001"):
        (shards / name).write_bytes(b"")
    streamed = run(["resnet", "--engine", "jax", "--dataset", "imagenet", "--data-dir", str(shards), "--arch",
                    "twoconv", "--logdir", str(tmp_path / "s")], hide_tf=True)
    assert streamed.returncode == 2 and streamed.stderr.count("\n") == 1, streamed.stderr[-3000:]
    assert "read through tf.data, and TensorFlow is not installed: pip install tensorflow-cpu" in streamed.stderr


@pytest.mark.skipif(not has_tensorflow(), reason="the Horovod engine needs TensorFlow")
@pytest.mark.parametrize("task", ["twoconv", "deepfm", "imagenet"])
def test_the_same_run_on_both_engines(tmp_path, task):
    """A BN-free model from the same initial weights (saved on the JAX backend, loaded by
    each engine) and the same data, read through tf.data on both (synthetic images, planted
    Criteo text, an ImageNet folder streamed and augmented per image): per-update losses and
    gradient norms within float32 tolerance over 20 updates, and the same TensorBoard tags."""
    init = str(tmp_path / "init.weights.h5")
    if task == "twoconv":
        build = "from keras_sngm_trainers.models import twoconv; m = twoconv.build(4, 16)"
        flags = ["resnet", "--dataset", "synthetic", "--arch", "twoconv", "--image-size", "16", "--num-classes", "4",
                 "--train-subset", "480", "--batch-size", "48", "--micro-batch", "16", "--lr", "0.05", "--epochs", "2"]
    elif task == "imagenet":
        import imagenet_fixtures as fx

        build = "from keras_sngm_trainers.models import twoconv; m = twoconv.build(3, 16)"
        flags = ["resnet", "--dataset", "imagenet", "--data-dir", fx.write_folder(str(tmp_path / "in"), train=60),
                 "--arch", "twoconv", "--image-size", "16", "--batch-size", "12", "--micro-batch", "4", "--lr", "0.05",
                 "--eval-batch", "12", "--epochs", "4"]  # (3 micro-batches an update: the JAX engine's noise scale)
    else:
        from keras_sngm_trainers.data import planted_ctr

        planted_ctr.generate(str(tmp_path / "ctr"), 3840, 512, seed=1)
        build = ("from keras_sngm_trainers.models import deepfm; m = deepfm.deepfm(1000, 4, (16,), 0.0)")
        flags = ["deepfm", "--data", str(tmp_path / "ctr" / "train.tsv"), "--test-data", str(tmp_path / "ctr" / "test.tsv"),
                 "--batch-size", "384", "--micro-batch", "128", "--shuffle-buffer", "512", "--hash-space", "1000",
                 "--embedding-dim", "4", "--hidden", "16", "--epochs", "2", "--lr", "0.1"]
    made = subprocess.run([sys.executable, "-c", f"import keras; keras.utils.set_random_seed(7); {build}; "
                           f"m.save_weights({init!r})"], env={**os.environ, "PYTHONPATH": ROOT, **JAX},
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-3000:]
    flags += ["--init-weights", init, "--no-verbose", "--log-every", "1", "--diagnostics-every", "1"]
    horovod = sngm_train(flags + ["--engine", "horovod", "--logdir", str(tmp_path / "h")])
    assert horovod.returncode == 0, horovod.stderr[-3000:]
    jax = sngm_train(flags + ["--engine", "jax", "--logdir", str(tmp_path / "j")], **JAX)
    assert jax.returncode == 0, jax.stderr[-3000:]
    for tag in ("step/loss", "diagnostics/grad_norm", "diagnostics/momentum_norm"):
        h, j = scalars(tmp_path / "h" / "train", tag), scalars(tmp_path / "j" / "train", tag)
        assert sorted(h) == sorted(j) == list(range(1, 21)), tag
        np.testing.assert_allclose([j[s] for s in h], [h[s] for s in h], rtol=2e-5, err_msg=tag)
    assert tags(tmp_path / "h" / "train") == tags(tmp_path / "j" / "train")
    evaluation = "validation" if task == "imagenet" else "test"
    assert tags(tmp_path / "h" / evaluation) == tags(tmp_path / "j" / evaluation)
    final = [json.load(open(tmp_path / r / "final.json")) for r in "hj"]
    np.testing.assert_allclose(final[1]["val_loss"], final[0]["val_loss"], rtol=1e-4)  # the last evaluation


def test_bad_input_is_one_line_before_anything_runs(tmp_path):
    """Flags the JAX engine cannot honour, named with the engine; a resume on the other
    engine is refused; no JAX: the install command."""
    cases = [(["--elastic"], "--elastic is not available on --engine jax: Keras' distribution API has no elastic mode"),
             (["--xla"], "--xla is not available on --engine jax: the JAX engine always compiles"),
             (["--compression", "fp16"], "--compression is not available on --engine jax"),
             (["--batch-size", "auto", "--batch-min", "32", "--batch-max", "256"],
              "--batch-min 32 gives fewer than two micro-batch gradients per update")]
    for flags, message in cases:
        proc = run(FLAGS + ["--epochs", "1", "--micro-batch", "32", "--logdir", str(tmp_path / "x"), *flags])
        assert proc.returncode == 2 and proc.stderr.startswith(f"sngm-train: error: {message}"), (flags, proc.stderr)
        assert proc.stderr.count("\n") == 1, proc.stderr
    no_jax = subprocess.run([sys.executable, "-c", "import sys; sys.modules['jax'] = None; " + MAIN, *FLAGS],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT, **JAX}, capture_output=True, text=True,
                            timeout=120)
    assert no_jax.returncode == 2 and "--engine jax needs JAX, which is not installed: pip install " \
        "\"keras-sngm[jax]\"" in no_jax.stderr, no_jax.stderr
    import dataclasses

    from keras_sngm_trainers import config

    (tmp_path / "r").mkdir()  # a JAX run's config.json
    (tmp_path / "r" / "config.json").write_text(json.dumps({**dataclasses.asdict(config.defaults("resnet")),
                                                            "task": "resnet", "engine": "jax"}))
    other = run(["resnet", "--logdir", str(tmp_path / "r"), "--resume", "--engine", "horovod"], KERAS_BACKEND="")
    assert other.returncode == 2, other.stderr
    assert "would change its results: --engine horovod (the run's: jax)" in other.stderr, other.stderr


def test_a_missing_process_is_an_error_within_the_timeout(tmp_path):
    """Process 0 of 2 whose partner never comes: a one-line error naming the coordinator
    after SNGM_CONNECT_TIMEOUT seconds, exit 2 (not a hang)."""
    from keras_sngm_trainers.launch import free_port

    address = f"127.0.0.1:{free_port()}"
    proc = run(FLAGS + ["--epochs", "1", "--micro-batch", "32", "--logdir", str(tmp_path / "r")], hide_tf=True,
               timeout=120, SNGM_CONNECT_TIMEOUT="5", KERAS_DISTRIBUTION_JOB_ADDRESSES=address,
               KERAS_DISTRIBUTION_NUM_PROCESSES="2", KERAS_DISTRIBUTION_PROCESS_ID="0")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"could not join the coordinator {address} with 2 processes within 5 s" in proc.stderr, proc.stderr[-3000:]


def test_launcher_passes_the_first_failure_on():
    """`sngm-train launch`: each process sees Keras' variables; the launcher's status is the
    failing process's (3), and the other, still running (a minute's sleep), is ended."""
    code = ("import os, sys, time; i = int(os.environ['KERAS_DISTRIBUTION_PROCESS_ID']); "
            "assert os.environ['KERAS_DISTRIBUTION_NUM_PROCESSES'] == '2'; "
            "assert os.environ['KERAS_DISTRIBUTION_JOB_ADDRESSES'].startswith('127.0.0.1:'); "
            "time.sleep(60 if i == 0 else 0); sys.exit(0 if i == 0 else 3)")
    proc = subprocess.run([os.path.join(BIN, "sngm-train"), "launch", "-np", "2", "--grace", "1", sys.executable, "-c",
                           code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    bad = subprocess.run([os.path.join(BIN, "sngm-train"), "launch", "-np", "0", "true"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "-np must be >= 1. Received: 0" in bad.stderr
