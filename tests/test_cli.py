"""What a new user hits at the command line: every bad flag is `sngm-train: error:`
naming the flag, exit 2, before TensorFlow is imported or any data read; bad files are
named; help gives a reason for every flag; logs sit on one step axis."""

import json
import os
import tarfile
import time

import numpy as np
import pytest

from helpers import sngm_train

SMALL = ["resnet", "--dataset", "synthetic", "--depth", "8", "--train-subset", "128", "--num-classes", "4",
         "--batch-size", "32", "--micro-batch", "16", "--lr", "0.3", "--seed", "5", "--no-verbose"]


BAD_FLAGS = [
    (["--ckpt-every", "0"], "--ckpt-every must be >= 1. Received: 0"),
    (["--log-every", "0"], "--log-every must be >= 1. Received: 0"),
    (["--eval-batch", "0"], "--eval-batch must be >= 1. Received: 0"),
    (["--optimizer", "msgd", "--momentum", "1.0"], "--momentum must be in [0, 1). Received: 1.0"),
    (["--train-subset", "-5"], "--train-subset must be >= 0. Received: -5"),
    (["--stop-after", "-1"], "--stop-after must be >= 0. Received: -1"),
    (["--power", "-1"], "--power must be a positive number. Received: -1.0"),
    (["--warmup-epochs", "-1"], "--warmup-epochs must be in [0, --epochs=160). Received: -1.0"),
    (["--keep", "-1"], "--keep must be >= 0. Received: -1"),
    (["--lr", "1", "--warmup-start", "1.5"], "--warmup-start must be in [0, --lr=1.0). Received: 1.5"),
    (["--xla", "--deterministic"], "--xla cannot be combined with --deterministic: TensorFlow has no deterministic "
                                   "XLA version of some gradients (max pooling's). Received: True"),
    (["--steps-per-execution", "0"], "--steps-per-execution must be >= 1. Received: 0"),
    (["--lr", "nan"], "--lr must be a positive number. Received: nan"),
    (["--validation-split", "1"], "--validation-split must be in [0, 1). Received: 1.0"),
    (["--image-size", "224", "--depth", "20"], "--depth must be 18, 34 or 50 for --image-size 224. Received: 20"),
    (["--data-dir", "/no/such/folder"], "--data-dir does not exist. Received: '/no/such/folder'"),
    (["--dataset", "imagenet", "--depth", "20"], "--depth must be 18, 34 or 50 with --dataset imagenet. Received: 20"),
    (["--dataset", "imagenet", "--depth", "50", "--validation-split", "0.1"],
     "--validation-split is not supported with --dataset imagenet (its validation split is the evaluation set). "
     "Received: 0.1"),
    (["--step-epochs", "60", "30"], "--step-epochs must be increasing epochs in (0, --epochs=160). Received: [60, 30]"),
    (["--epochs", "90", "--step-epochs", "30", "90"],
     "--step-epochs must be increasing epochs in (0, --epochs=90). Received: [30, 90]"),
    (["--ckpt-every-steps", "-2"], "--ckpt-every-steps must be >= 0. Received: -2"),
    (["--ckpt-every-minutes", "inf"], "--ckpt-every-minutes must be a number >= 0. Received: inf"),
    (["--stop-after-updates", "-1"], "--stop-after-updates must be >= 0. Received: -1"),
    (["--shuffle-buffer", "-1"], "--shuffle-buffer must be >= 0. Received: -1"),
    (["--threads", "-1"], "--threads must be >= 0. Received: -1"),
    (["--batch-size", "1000", "--micro-batch", "128"], "--batch-size 1000 is not divisible by workers x micro-batch "
     "= 1 x 128 = 128: choose a global batch that is a multiple of 128."),
    (["--dataset", "synthetic", "--train-subset", "1000", "--batch-size", "8192"],
     "--batch-size 8192 is larger than the 1000 training examples (--train-subset)."),
    (["--stop-signals", "TERM,KILL"], "--stop-signals: 'KILL' is not a signal that can be caught (names such as TERM, "
     "INT, USR1, USR2, HUP, or none). Received: 'TERM,KILL'"),
    (["--elastic", "--ckpt-every-steps", "5"], "--ckpt-every-steps is not used with --elastic, which commits its "
                                               "state every --commit-every updates instead. Received: 5"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flag_is_an_error_before_anything_runs(tmp_path, flags, message):
    t0 = time.perf_counter()
    proc = sngm_train(["resnet", "--logdir", str(tmp_path / "run"), *flags])
    seconds = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert proc.stderr.strip() == f"sngm-train: error: {message}", proc.stderr[-1500:]
    assert seconds < 10, "rejected before TensorFlow and data (measured about 0.1 s)"
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_flag_of_the_other_task_is_named_as_such(tmp_path):
    proc = sngm_train(["deepfm", "--data", "synthetic", "--depth=50", "--logdir", str(tmp_path / "run")])
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "sngm-train: error: --depth is a flag of `sngm-train resnet`, not of `sngm-train deepfm` (sngm-train deepfm -h "
        "lists its flags)"), proc.stderr
    proc = sngm_train(["resnet", "--hash-space", "8", "--logdir", str(tmp_path / "run")])
    assert proc.returncode == 2 and "--hash-space is a flag of `sngm-train deepfm`" in proc.stderr


def test_without_tensorflow_one_line_and_exit_2(tmp_path):
    """A JAX- or PyTorch-only install (TensorFlow made unimportable): the Horovod engine says
    what to install; the optimizers and SNGMDiagnostics work without it (the JAX engine too:
    tests/test_jax_engine.py)."""
    import subprocess
    import sys

    from helpers import ROOT

    hide = "import sys; sys.modules['tensorflow'] = None; "
    env = {**os.environ, "PYTHONPATH": ROOT, "KERAS_BACKEND": ""}  # (the default engine: Horovod)
    proc = subprocess.run([sys.executable, "-c", hide + "from keras_sngm_trainers.cli import main; sys.exit(main(['resnet', "
                           "'--dataset', 'synthetic', '--batch-size', '256', '--logdir', '" + str(tmp_path / "r") + "']))"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("sngm-train: error: the Horovod engine needs TensorFlow, which is not installed")
    env["KERAS_BACKEND"] = "jax"
    assert "pip install tensorflow-cpu==2.21.0" in proc.stderr
    # The optimizers, the noise estimator and SNGMDiagnostics need no TensorFlow: a JAX fit
    # writes its event files, which TensorBoard's reader reads back here.
    logs = tmp_path / "logs"
    fit = ("import numpy as np, keras, keras_sngm; from keras_sngm.callbacks import SNGMDiagnostics; "
           "m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]); "
           "m.compile(optimizer=keras_sngm.SNGM(0.1, gradient_accumulation_steps=3), loss='mse'); "
           "x = np.ones((48, 2), 'float32') * np.arange(48, dtype='float32')[:, None] / 48; "
           f"m.fit(x, x[:, :1], batch_size=4, verbose=0, callbacks=[SNGMDiagnostics({str(logs)!r}, update_freq=1, "
           "batch_size=4)]); print(m.optimizer.name, 'tensorflow' in sys.modules and sys.modules['tensorflow'])")
    proc = subprocess.run([sys.executable, "-c", hide + fit], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split()[1:] == ["None"], proc.stderr[-2000:]
    from test_callback import read_events

    scalars, _, charts = read_events(logs / "train")
    assert sorted(scalars["diagnostics/noise_scale"]) == sorted(scalars["diagnostics/momentum_norm"]) == list(range(1, 5))
    assert len(charts) == 3


def test_bad_deepfm_flags(tmp_path):
    for flags, message in ((["--data", str(tmp_path / "missing.tsv")], "--data matches no file or directory"),
                           (["--data", "synthetic", "--hidden", "0"], "--hidden must be one or more widths >= 1"),
                           (["--data", "synthetic", "--dropout", "1"], "--dropout must be in [0, 1)"),
                           (["--data", "synthetic", "--shuffle-buffer", "-1"], "--shuffle-buffer must be >= 0")):
        proc = sngm_train(["deepfm", "--logdir", str(tmp_path / "run"), *flags])
        assert proc.returncode == 2 and proc.stderr.startswith(f"sngm-train: error: {message}"), proc.stderr


def test_logdir_that_is_a_file_or_unwritable(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = sngm_train(SMALL + ["--logdir", str(tmp_path / "file")])
    assert proc.returncode == 2 and f"--logdir '{tmp_path / 'file'}' exists and is not a directory" in proc.stderr
    proc = sngm_train(SMALL + ["--logdir", str(tmp_path / "file" / "run")])
    assert proc.returncode == 2 and "is not writable" in proc.stderr
    proc = sngm_train(SMALL + ["--logdir", "/proc/sngm-run"])  # a file system nobody may write, not even root
    assert proc.returncode == 2 and "--logdir '/proc/sngm-run' is not writable" in proc.stderr


def test_help_gives_a_reason_for_every_flag():
    from keras_sngm_trainers import config

    for task in ("resnet", "deepfm"):
        proc = sngm_train([task, "-h"])
        assert proc.returncode == 0
        spaced = " ".join(proc.stdout.split())
        text = "".join(proc.stdout.split())  # (argparse wraps lines, at hyphens too)
        for f in config.fields_of(task):
            flag = config.flag(f.name)
            assert flag in text, flag
            reason = "".join(config.reason(f, task).split())
            assert len(reason) > 10 and reason in text, (flag, reason)
        other_words = ("ResNet", "CIFAR", "ImageNet") if task == "deepfm" else ("DeepFM", "CTR", "Criteo")
        for f in config.fields_of("resnet") if task == "deepfm" else config.fields_of("deepfm"):
            if f in config.fields_of(task):  # a shared flag speaks of this task only
                assert not [w for w in other_words if w in config.reason(f, task)], (f.name, config.reason(f, task))
        mine = {config.flag(f.name) for f in config.fields_of(task)}
        others = {config.flag(f.name) for f in config.fields_of("deepfm" if task == "resnet" else "resnet")} - mine
        assert others and not [o for o in others if o + " " in spaced], "flags of the other task are listed"


def test_resume_without_checkpoint_says_so(tmp_path):
    flags = [f for f in SMALL if f != "--no-verbose"] + ["--epochs", "2", "--log-every", "2", "--logdir",
                                                          str(tmp_path / "run"), "--resume"]
    proc = sngm_train(flags)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert f"--resume: no checkpoint in {tmp_path / 'run'}: starting from scratch" in proc.stdout
    # Rank 0 shows progress lines with an ETA, and the estimated time of the run early on.
    assert "estimated time for the run: 0:00:" in proc.stdout and "updates to go" in proc.stdout
    for n in (2, 4, 6, 8):
        assert f"update {n}/8: " in proc.stdout and " ex/s ETA 0:00:" in proc.stdout


def test_truncated_tar_is_named_and_leaves_no_partial_unpack(tmp_path):
    src = tmp_path / "src" / "train" / "cat"
    src.mkdir(parents=True)
    for i in range(20):
        (src / f"{i}.bin").write_bytes(os.urandom(4096))
    with tarfile.open(tmp_path / "d.tar", "w") as t:
        t.add(tmp_path / "src", arcname="data")
    data = (tmp_path / "d.tar").read_bytes()
    (tmp_path / "d.tar").write_bytes(data[: len(data) // 2])
    cache = tmp_path / "cache"
    for _ in range(2):
        proc = sngm_train(["resnet", "--data-dir", str(tmp_path / "d.tar"), "--no-download", "--logdir",
                           str(tmp_path / "run")], SNGM_DATA_CACHE=str(cache))
        assert proc.returncode == 2, proc.stderr[-1500:]
        assert f"{tmp_path / 'd.tar'}: cannot be unpacked, the tar is damaged or truncated" in proc.stderr
    assert not cache.exists() or not list(cache.iterdir()), list(cache.iterdir())  # no partial unpack left


def write_folder(root, classes=3, per_class=4, seed=0):
    rng = np.random.default_rng(seed)
    from PIL import Image

    for split in ("train", "test"):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_corrupt_image_is_named(tmp_path):
    write_folder(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "train" / "class1" / "2.png"
    bad.write_bytes(b"not an image at all")
    proc = sngm_train(["resnet", "--data-dir", str(tmp_path / "imgs"), "--no-download", "--logdir", str(tmp_path / "run")],
                      SNGM_DATA_CACHE=str(tmp_path / "cache"))
    assert proc.returncode == 2 and f"{bad}: not a decodable image" in proc.stderr, proc.stderr[-1500:]


def test_image_cache_follows_the_folder_content(tmp_path, monkeypatch):
    from PIL import Image

    from keras_sngm_trainers.data import images

    monkeypatch.setenv("SNGM_DATA_CACHE", str(tmp_path / "cache"))
    write_folder(tmp_path / "imgs", classes=3)
    (x1, y1), _, c1, _ = images.load(data_dir=str(tmp_path / "imgs"))
    target = tmp_path / "imgs" / "train" / "class0" / "1.png"
    new = np.full((32, 32, 3), 7, np.uint8)
    Image.fromarray(new).save(target)  # the same name, new pixels
    (x2, _), _, _, _ = images.load(data_dir=str(tmp_path / "imgs"))
    np.testing.assert_array_equal(x2[1], new)
    assert not np.array_equal(x1[1], x2[1])
    import shutil

    for split in ("train", "test"):
        shutil.rmtree(tmp_path / "imgs" / split / "class2")
    (x3, y3), _, c3, _ = images.load(data_dir=str(tmp_path / "imgs"))
    assert (c1, c3) == (3, 2) and len(x3) == 8 and y3.max() == 1


def test_binary_or_misshapen_criteo_files_are_named(tmp_path):
    (tmp_path / "model.bin").write_bytes(bytes(range(256)) * 10)
    proc = sngm_train(["deepfm", "--data", str(tmp_path / "model.bin"), "--logdir", str(tmp_path / "run")])
    assert proc.returncode == 2
    assert f"sngm-train: error: {tmp_path / 'model.bin'}: is a binary file, not Criteo text" in proc.stderr
    (tmp_path / "d.csv").write_text("label,I1,I2\n" + "1,2,3\n" * 300)
    proc = sngm_train(["deepfm", "--data", str(tmp_path / "d.csv"), "--batch-size", "256", "--micro-batch", "256",
                       "--logdir", str(tmp_path / "run")])
    assert proc.returncode == 2
    assert "CSV header 'label,I1,I2' is not Criteo's 40 columns" in proc.stderr and "larger than" not in proc.stderr


def test_tfds_download_path_reaches_the_network(tmp_path, monkeypatch):
    """Offline here: the download must fail at the network, not on a missing module."""
    from tensorflow_datasets.core.download import downloader

    from keras_sngm_trainers.data import images

    monkeypatch.setattr(downloader, "MAX_RETRIES", 1)  # its default backs off for 200 s before giving up

    with pytest.raises(images.DataNotFoundError) as e:
        images.load("cifar10", tfds_dir=str(tmp_path / "tfds"), download=True)
    msg = str(e.value)
    assert "ModuleNotFoundError" not in msg and "ImportError" not in msg, msg
    assert any(k in msg for k in ("ConnectionError", "NameResolution", "URLError", "DownloadError", "Max retries")), msg
    assert "its download needs internet access" in msg


def test_logs_share_one_step_axis_and_are_current(tmp_path):
    """step n = the n-th update: its learning rate is the schedule at n-1, the epoch's
    momentum_norm is ||u|| now, and no Keras batch_* points (micro-batch counts)."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    proc = sngm_train(SMALL + ["--epochs", "2", "--log-every", "1", "--diagnostics-every", "3", "--logdir", str(run)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    acc = EventAccumulator(str(run / "train"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    assert not [t for t in tags if t.startswith("batch_")], tags
    value = lambda e: float(tf.make_ndarray(e.tensor_proto))  # noqa: E731
    total = 8  # 128 examples / 32 per update x 2 epochs
    lr = {e.step: value(e) for e in acc.Tensors("step/learning_rate")}
    assert sorted(lr) == list(range(1, total + 1))
    for n, got in lr.items():
        assert got == pytest.approx(0.3 * (1 - (n - 1) / total) ** 1.1, rel=1e-5), n
    diag = {e.step: value(e) for e in acc.Tensors("diagnostics/grad_norm")}
    assert sorted(diag) == [1, 4, 7]
    # each quantity once, every tag described; the per-update ones stay out of epoch_*
    assert "diagnostics/learning_rate" not in tags and "diagnostics/step_length" not in tags
    assert "diagnostics/batch_size" not in tags and "epoch_learning_rate" not in tags and "epoch_loss" in tags
    assert not (run / "validation").exists()  # no validation split: the evaluation set is named test
    for d in ("train", "test"):
        reader = EventAccumulator(str(run / d), size_guidance={"tensors": 0})
        reader.Reload()
        for tag in reader.Tags()["tensors"]:
            if tag != "custom_scalars__config__":
                assert len(reader.SummaryMetadata(tag).summary_description) > 20, (d, tag)
    # The epoch's momentum norm is the real ||u|| after its last update (from the checkpoint).
    with np.load(run / "ckpt-00002" / "optimizer.npz") as d:
        state = json.load(open(run / "ckpt-00002" / "state.json"))
        u = [d[str(i)] for i, p in enumerate(state["optimizer_variables"]) if p.split("/")[-1].endswith("_momentum")]
    history = json.load(open(run / "history.json"))["history"]
    assert len(u) > 5
    assert history["momentum_norm"][-1] == pytest.approx(np.sqrt(sum(np.sum(m.astype(np.float64) ** 2) for m in u)), rel=1e-5)
    assert history["learning_rate"][-1] == pytest.approx(lr[total], rel=1e-6)


def test_gen_criteo_rejects_nonsense_row_counts(tmp_path):
    proc = sngm_train(["gen-criteo", "--out", str(tmp_path / "d"), "--train-rows", "-3"])
    assert proc.returncode == 2 and proc.stderr.strip() == "sngm-train: error: --train-rows must be >= 1. Received: -3"
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("optimizer", ["lamb", "adam"])
def test_two_conv_net_with_keras_optimizers_steps_per_epoch_and_resumes_exactly(tmp_path, optimizer):
    """--arch twoconv, the Keras optimizers (LAMB is keras.optimizers.Lamb) and --lr-per-epoch:
    the lr each epoch used is the journal's cosine of the epoch, and a run stopped after
    one epoch and resumed ends with the weights of the uninterrupted run."""
    flags = ["resnet", "--arch", "twoconv", "--dataset", "synthetic", "--train-subset", "96", "--num-classes", "3",
             "--batch-size", "32", "--micro-batch", "16", "--optimizer", optimizer, "--lr", "0.01", "--weight-decay",
             "1e-3", "--schedule", "cosine", "--lr-per-epoch", "--epochs", "3", "--deterministic", "--no-verbose"]
    whole = sngm_train([*flags, "--logdir", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-2000:]
    hist = json.load(open(tmp_path / "whole" / "history.json"))["history"]
    np.testing.assert_allclose(hist["learning_rate"], [0.01 * (1 + np.cos(np.pi * m / 3)) / 2 for m in range(3)],
                               rtol=1e-5)
    assert all(np.isfinite(hist["loss"]))
    part = tmp_path / "part"
    assert sngm_train([*flags, "--logdir", str(part), "--stop-after", "1"]).returncode == 0
    resumed = sngm_train([*flags, "--logdir", str(part), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.load(open(part / "history.json"))["history"]["loss"] == hist["loss"]


@pytest.mark.parametrize("engine", ["horovod", "jax"])
def test_mixed_precision_matches_float32_within_tolerance(tmp_path, engine):
    """--precision: the same 8 updates in float32, mixed_float16 and mixed_bfloat16. The
    float16 loss scale is the Horovod wrapper's (decided on the averaged gradient, not by
    Keras' per-worker LossScaleOptimizer), or on the JAX engine Keras' LossScaleOptimizer
    (its gradient is already the global one). Tolerances, per-epoch mean loss relative to
    float32: 2e-3 for float16 (10-bit mantissa), 1e-2 for bfloat16 (7-bit); measured at
    32x32 pixels: 1e-4 and 2e-4."""
    flags = [*SMALL, "--train-subset", "256", "--batch-size", "64", "--epochs", "2", "--deterministic",
             "--image-size", "16", "--engine", engine]  # (float16 convolutions are slow on a CPU: a quarter of the pixels)
    hist = {}
    for precision in ("float32", "mixed_float16", "mixed_bfloat16"):
        proc = sngm_train([*flags, "--precision", precision, "--logdir", str(tmp_path / precision)],
                          **({"KERAS_BACKEND": "jax"} if engine == "jax" else {}))
        assert proc.returncode == 0, proc.stderr[-2000:]
        hist[precision] = json.load(open(tmp_path / precision / "history.json"))["history"]
    np.testing.assert_allclose(hist["mixed_float16"]["loss"], hist["float32"]["loss"], rtol=2e-3)
    np.testing.assert_allclose(hist["mixed_bfloat16"]["loss"], hist["float32"]["loss"], rtol=1e-2)
    assert hist["mixed_float16"]["loss_scale"][0] == 2.0**15
    if engine == "horovod":
        assert hist["mixed_float16"]["overflow_skips"] == [0.0, 0.0]
    assert hist["mixed_float16"]["loss"] != hist["float32"]["loss"]  # it really computed in float16


def test_steps_per_execution_gives_the_same_run(tmp_path):
    """--steps-per-execution 2 (2 micro-batches per update) changes how often Keras returns
    to Python, not the numbers; one that does not divide the micro-batches per update is
    refused before training, naming both."""
    flags = [*SMALL, "--epochs", "2", "--deterministic"]
    runs = {}
    for n in (1, 2):
        proc = sngm_train([*flags, "--steps-per-execution", str(n), "--logdir", str(tmp_path / f"spe{n}")])
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[n] = json.load(open(tmp_path / f"spe{n}" / "history.json"))["history"]
    assert runs[2]["loss"] == runs[1]["loss"] and runs[2]["grad_norm"] == runs[1]["grad_norm"]
    proc = sngm_train([*flags, "--steps-per-execution", "3", "--logdir", str(tmp_path / "spe3")])
    assert proc.returncode == 2
    assert "--steps-per-execution 3 must divide the 2 micro-batches of each update" in proc.stderr


@pytest.mark.parametrize("task", ["resnet", "deepfm"])
def test_xla_forward_backward_matches_without(tmp_path, task):
    """--xla compiles the model call, loss and gradients; the update stays outside. Same
    run within float tolerance (XLA fuses and reorders sums: measured 2e-5 relative)."""
    if task == "resnet":
        flags = [*SMALL, "--epochs", "2"]
    else:
        flags = ["deepfm", "--data", "synthetic", "--train-rows", "4096", "--batch-size", "1024", "--micro-batch", "512",
                 "--hash-space", "4096", "--embedding-dim", "4", "--hidden", "16", "--epochs", "2", "--no-verbose"]
    hist = {}
    for xla in ("--no-xla", "--xla"):
        proc = sngm_train([*flags, xla, "--logdir", str(tmp_path / xla)])
        assert proc.returncode == 0, proc.stderr[-2000:]
        hist[xla] = json.load(open(tmp_path / xla / "history.json"))["history"]
    np.testing.assert_allclose(hist["--xla"]["loss"], hist["--no-xla"]["loss"], rtol=1e-3)
    np.testing.assert_allclose(hist["--xla"]["grad_norm"], hist["--no-xla"]["grad_norm"], rtol=1e-2)


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_named_folder_without_data_fails_at_once(tmp_path, dataset):
    """An empty or unrecognised --data-dir is an error before TensorFlow, never a download."""
    empty, other = tmp_path / "empty", tmp_path / "other"
    empty.mkdir()
    (other / "notes").mkdir(parents=True)
    (other / "readme.txt").write_text("not data")
    depth = ["--depth", "50"] if dataset == "imagenet" else []
    for folder, what in ((empty, "is empty"), (other, "holds no data layout known here")):
        t0 = time.perf_counter()
        proc = sngm_train(["resnet", "--dataset", dataset, *depth, "--data-dir", str(folder), "--download",
                           "--logdir", str(tmp_path / "run")])
        seconds = time.perf_counter() - t0
        assert proc.returncode == 2, proc.stderr[-1500:]
        assert proc.stderr.startswith(f"sngm-train: error: --data-dir {what}: it must hold "), proc.stderr
        assert proc.stderr.strip().endswith(f"Received: {str(folder)!r}")
        assert ("TFRecord shards" if dataset == "imagenet" else "cifar-10-batches-py/") in proc.stderr
        assert seconds < 2, f"failed in {seconds:.1f} s: before TensorFlow, no network (measured about 0.1 s)"


def test_one_cache_entry_however_the_data_is_named(tmp_path, monkeypatch):
    """The same tar and folder through a symlink and a relative path: one unpacked copy,
    one decoded copy."""
    from keras_sngm_trainers.data import images

    cache = tmp_path / "cache"
    monkeypatch.setenv("SNGM_DATA_CACHE", str(cache))
    write_folder(tmp_path / "imgs", classes=2)
    with tarfile.open(tmp_path / "d.tar", "w") as t:
        t.add(tmp_path / "imgs", arcname="imgs")
    os.symlink(tmp_path / "d.tar", tmp_path / "link.tar")
    monkeypatch.chdir(tmp_path)
    first = images.load(data_dir=str(tmp_path / "d.tar"))[0][0]
    for name in ("link.tar", "./d.tar", "imgs", str(tmp_path / "imgs")):
        np.testing.assert_array_equal(images.load(data_dir=name)[0][0], first)
    entries = sorted(p.name.split("-")[0] for p in cache.iterdir())
    # one unpacked tar (three names), its decoded copy, and the folder's (two names)
    assert entries == ["decoded", "decoded", "tar"], entries


def test_what_a_run_prints(tmp_path, monkeypatch, capsys):
    """The recipe first, no TensorFlow import banners, the test result at the end; data
    notes from rank 0 only."""
    proc = sngm_train([a for a in SMALL if a != "--no-verbose"] + ["--epochs", "1", "--logdir", str(tmp_path / "run")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "sngm-train configuration:" and lines[1].split() == ["optimizer:", "sngm"]
    assert [line.split()[0] for line in lines[2:4]] == ["batch_size:", "batch_min:"]
    final = json.load(open(tmp_path / "run" / "final.json"))
    assert lines[-1] == (f"results: test_accuracy {final['test_accuracy']:.4f}, test_loss {final['test_loss']:.4f} "
                         f"(after 1 epochs; in {tmp_path / 'run' / 'final.json'})")
    assert "oneDNN custom operations" not in proc.stderr and "absl::InitializeLog" not in proc.stderr, proc.stderr
    from keras_sngm_trainers.data import images

    monkeypatch.setenv("HOROVOD_RANK", "1")
    images._say("decoding")
    monkeypatch.setenv("HOROVOD_RANK", "0")
    images._say("decoding once")
    assert capsys.readouterr().out == "decoding once\n"


def test_an_error_on_a_rank_other_than_0_waits_for_rank_0_then_names_its_rank():
    """Under horovodrun rank 0 prints an error at once; another rank waits (for rank 0 to end
    the job, which ends it too) and, still alive after the wait, prints the error with its rank."""
    from keras_sngm_trainers import errors

    for args, text in ((["resnet", "--batch-size", "0"], "sngm-train: error: --batch-size must be >= 1"),
                       (["resnet", "--no-such-flag"], "sngm-train: error: unrecognized arguments: --no-such-flag")):
        t0 = time.monotonic()
        proc = sngm_train(args, HOROVOD_RANK="0")
        assert proc.returncode == 2 and text in proc.stderr and "[rank" not in proc.stderr
        assert time.monotonic() - t0 < errors.ERROR_GRACE_SECONDS
        t0 = time.monotonic()
        proc = sngm_train(args, HOROVOD_RANK="1")
        assert time.monotonic() - t0 >= errors.ERROR_GRACE_SECONDS
        assert proc.returncode == 2 and proc.stderr.startswith("[rank 1] ") and text in proc.stderr, proc.stderr
