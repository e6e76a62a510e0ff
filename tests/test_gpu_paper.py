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


def test_an_arm_that_does_not_fit_is_unmeasured_with_its_prediction():
    """The plan, on a probe's numbers: an arm whose predicted time (the first epoch, then one
    epoch's seconds for each of the rest) is over what is left is marked unmeasured with its
    prediction, on the page and in the closing line; one that fits is run."""
    import gpu_paper

    probe = {"first_epoch_s": 30.0, "epoch_s": 2.5, "epochs": 3, "wall_s": 36.0}
    assert gpu_paper.predicted_s(probe, 160) == 30.0 + 159 * 2.5
    assert gpu_paper.unmeasured(probe, 160, 430.0) is None  # 427.5 s fits 430
    arm = gpu_paper.unmeasured(probe, 160, 400.0)
    assert arm == {"unmeasured": True, "predicted_s": 427.5}
    arms = {"sngm": {"test_accuracy": 0.9, "val_accuracy": 0.9, "lr": 1.6, "seconds_per_epoch": 2.5, "wall_s": 420.0,
                     "epochs_done": 160, "updates": 1600, "predicted_s": 427.5}, "msgd": arm,
            "lars": {"unmeasured": True, "predicted_s": 427.5}}
    assert gpu_paper.not_measured_line(arms) == "not measured: msgd (predicted 7.1 min), lars (predicted 7.1 min)"
    assert gpu_paper.not_measured_line({"sngm": arms["sngm"], "msgd": arms["sngm"], "lars": arms["sngm"]}) is None
    state = {"mode": "full", "command": "make gpu-paper", "arms": arms, "probe": probe, "date": "2026-12-08",
             "facts": {"gpus": ["NVIDIA H100 80GB HBM3"], "framework": "JAX 0.11.2", "keras": "3.15.1", "cuda": "13"}}
    rows = _rows(paper_report.render(state, gpu_paper.SIZES["full"]))
    assert rows["MSGD"][2] == rows["LARS (no warm-up)"][2] == "unmeasured: predicted 7.1 min"
    assert rows["SNGM"][2:] == ["90.00", "91.42", "-1.42", "2.50", "7.0"]


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
