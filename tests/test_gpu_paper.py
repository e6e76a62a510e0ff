"""`make gpu-paper`: the SMOKE run (the same code on the CPU: a few hundred JPEGs, 2 epochs, all
three arms, in a Python where `import tensorflow` fails) writes a page every number of which
comes from the run's own files; bad input is one line; the committed page holds no numbers of
ours until a GPU has run it."""

import io
import json
import os
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import paper_report  # noqa: E402

SCRIPT = os.path.join(ROOT, "bench", "gpu_paper.py")
NO_TF = os.path.join(ROOT, "tests", "no_tensorflow")  # sitecustomize: `import tensorflow` fails
PYTHON = os.path.join(ROOT, ".venv-jax", "bin", "python")  # Python 3.12, JAX 0.11, no TensorFlow
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def jpeg_tar(path, train=36, test=8):
    """CIFAR-10's JPEG layout (cifar10/{train,test}/<class>/NNNN.jpg), 32x32, each class a colour."""
    from PIL import Image

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tar:
        for split, n in (("train", train), ("test", test)):
            for c, name in enumerate(CLASSES):
                for i in range(n):
                    pixels = np.clip(rng.normal(25 * c, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                    data = io.BytesIO()
                    Image.fromarray(pixels).save(data, "JPEG", quality=75)
                    info = tarfile.TarInfo(f"cifar10/{split}/{name}/{i:04d}.jpg")
                    info.size = data.tell()
                    data.seek(0)
                    tar.addfile(info, data)
    return path


def run(*args, timeout=900, **env):
    if not os.path.exists(PYTHON):
        pytest.skip(f"{PYTHON} is missing: `make test` sets it up")
    return subprocess.run([PYTHON, SCRIPT, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": NO_TF, **env})


def _rows(page):
    """{method: cells} of the page's results table."""
    out = {}
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in paper_report.NAMES.values():
            out[cells[0]] = cells
    return out


def test_smoke_column_every_number_from_the_runs_own_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, runs = tmp_path / "results-gpu.md", tmp_path / "runs"
    proc = run("--smoke", "--data", jpeg_tar(tmp_path / "cifar.tar"), "--out", str(out), "--runs", str(runs),
               SNGM_DATA_CACHE=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    page, state = out.read_text(), json.loads((tmp_path / "results-gpu.json").read_text())
    assert "SMOKE run" in page and "No GPU has run this yet" not in page
    assert state["probe"]["epochs"] == 2 and state["probe"]["epoch_s"] > 0
    rows = _rows(page)
    for name, lr in (("sngm", 1.6), ("msgd", 0.4), ("lars", 0.8)):
        run_dir = runs / name
        final = json.loads((run_dir / "final.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())
        assert (config["engine"], config["optimizer"], config["lr"], config["micro_batch"],
                config["micro_batches_per_update"], config["schedule"], config["power"]) == \
            ("jax", name, lr, 16, 4, "poly", 1.1)
        assert final["epochs_done"] == 2 and final["updates"] == 2 * 4  # 288 training images // 64, twice
        acc = EventAccumulator(str(run_dir / "train"), size_guidance={"tensors": 0})
        acc.Reload()
        ends = [e.wall_time for e in acc.Tensors("epoch_loss")]
        kept = state["arms"][name]
        assert kept["test_accuracy"] == final["test_accuracy"] and kept["seconds_per_epoch"] == pytest.approx(
            ends[1] - ends[0])
        cells = rows[paper_report.NAMES[name]]
        assert cells[1] == f"{lr:g}" and cells[2] == f"{100 * final['test_accuracy']:.2f}"
        assert cells[3] == f"{paper_report.V1_TABLE2[name]:.2f}"
        assert cells[4] == f"{100 * final['test_accuracy'] - paper_report.V1_TABLE2[name]:+.2f}"
        assert cells[5] == f"{kept['seconds_per_epoch']:.2f}" and cells[6] == f"{kept['wall_s'] / 60:.1f}"
    assert f"JAX {state['facts']['framework'].split()[-1]}" in page  # the device table: the run's own JAX
    # a second run keeps every finished arm: no probe, no training
    proc = run("--smoke", "--data", str(tmp_path / "cifar.tar"), "--out", str(out), "--runs", str(runs),
               SNGM_DATA_CACHE=str(tmp_path / "cache"))
    assert proc.returncode == 0 and "probe" not in proc.stdout, proc.stdout[-2000:]
    assert _rows(out.read_text()) == rows


def test_an_arm_that_does_not_fit_is_unmeasured_with_its_prediction(tmp_path):
    """A time limit the probe alone fills: every arm is marked unmeasured, with the predicted
    minutes, and the run exits 1."""
    out = tmp_path / "results-gpu.md"
    proc = run("--smoke", "--data", jpeg_tar(tmp_path / "cifar.tar", train=8, test=2), "--out", str(out), "--runs",
               str(tmp_path / "runs"), "--time-limit", "60", SNGM_DATA_CACHE=str(tmp_path / "cache"))
    state = json.loads((tmp_path / "results-gpu.json").read_text())
    if "error" in state["probe"]:
        pytest.skip(f"the probe alone took over 60 s on this machine: {state['probe']}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    unmeasured = [o for o, arm in state["arms"].items() if arm.get("unmeasured")]
    assert unmeasured, state
    for name in unmeasured:
        minutes = state["arms"][name]["predicted_s"] / 60
        assert f"unmeasured: predicted {minutes:.1f} min" in _rows(out.read_text())[paper_report.NAMES[name]][2]
        assert f"{name} (predicted {minutes:.1f} min)" in proc.stdout


def test_bad_input_is_one_line(tmp_path):
    proc = run("--data", str(tmp_path / "nothing.tar"), "--smoke")
    assert proc.returncode == 2 and f"--data '{tmp_path / 'nothing.tar'}' does not exist" in proc.stderr
    proc = run("--data", jpeg_tar(tmp_path / "cifar.tar", train=1, test=1), "--out", str(tmp_path / "p.md"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("gpu-paper: error: JAX here sees no GPU")
    assert "make gpu-paper SMOKE=1" in proc.stderr and not (tmp_path / "p.md").exists()


def test_the_committed_page_holds_no_numbers_of_ours():
    page = open(os.path.join(ROOT, "docs", "results-gpu.md")).read()
    assert page == paper_report.render(None, {"depth": 20, "batch": 4096, "micro_batch": 128, "epochs": 160})
    for cells in _rows(page).values():
        assert cells[2] == cells[4] == cells[5] == cells[6] == paper_report.DASH
    assert not re.search(r"SMOKE", page)
