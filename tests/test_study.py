"""`sngm-train study` end to end on a tiny grid; a re-run skips finished cells."""

import csv
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def study(out, *extra):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [os.path.join(os.path.dirname(sys.executable), "sngm-train"), "study", "--preset", "cpu-cifar", "--out", str(out),
           "--optimizers", "msgd", "sngm", "--batch-sizes", "32", "64", "--lr-factors", "1", "2",
           "--dataset", "synthetic", "--num-classes", "4", "--train-subset", "320", "--epochs", "1", "--micro-batch", "16", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + open(out / "study.log").read()[-3000:]
    return proc.stdout


def test_tiny_grid_end_to_end_and_resume(tmp_path):
    out = tmp_path / "study"
    first = study(out)
    assert first.count(": running") == 8
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted((r["optimizer"], int(r["batch_size"])) for r in rows) == sorted(
        [(o, b) for o in ("msgd", "sngm") for b in (32, 64)] * 2)
    for r in rows:
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0 and 0.0 <= float(r["val_accuracy"]) <= 1.0
    # exactly one lr chosen per (optimizer, batch), the one with the best validation accuracy
    for o in ("msgd", "sngm"):
        for b in ("32", "64"):
            group = [r for r in rows if r["optimizer"] == o and r["batch_size"] == b]
            chosen = [r for r in group if r["selected"] == "True"]
            assert len(chosen) == 1
            assert float(chosen[0]["val_accuracy"]) == max(float(r["val_accuracy"]) for r in group)
    curves = list(csv.DictReader(open(out / "curves.csv")))
    assert len(curves) == 8 and {c["epoch"] for c in curves} == {"1"}
    table = open(out / "results.md").read()
    assert "| msgd |" in table and "| sngm |" in table and "B=32" in table and "B=64" in table
    for png in ("accuracy_vs_batch.png", "loss_curves_b64.png"):
        assert (out / png).stat().st_size > 1000
        assert open(out / png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    stamps = {p: os.path.getmtime(out / "runs" / p / "final.json") for p in os.listdir(out / "runs")}
    victim = sorted(stamps)[0]
    shutil.rmtree(out / "runs" / victim)
    second = study(out)
    assert second.count("done, skipped") == 7 and second.count(": running") == 1
    for p, t in stamps.items():
        if p != victim:
            assert os.path.getmtime(out / "runs" / p / "final.json") == t  # untouched
    assert (out / "runs" / victim / "final.json").exists()
