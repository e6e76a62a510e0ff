"""`make bench-gpu`: the smoke run (the same code paths on the CPU at toy sizes) writes every
table row with a number, resumes, and stops at its time limit; on a host without a GPU the
full run refuses before any work and points to SMOKE=1; the committed page is current."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import gpu_host  # noqa: E402
import gpu_report  # noqa: E402

PY = os.path.join(ROOT, ".venv", "bin", "python")
SCRIPT = os.path.join(ROOT, "bench", "gpu_bench.py")
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?(%|x)?$")


def tables(text):
    """{section heading: [[cell, ...] per body row, for every table under it]}."""
    out, heading = {}, None
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("# ").strip()
        elif line.startswith("| ") and not set(line) <= set("|-: ") and heading:
            out.setdefault(heading, []).append([c.strip() for c in line.strip("|").split("|")])
    return {h: [r for r in rows if not (r[0] in ("setting", "precision", "model", "pipeline", "bytes", "GPUs", "target",
                                                 "one GPU", "host") or r[0].startswith("one GPU consumes"))]
            for h, rows in out.items()}


def numeric(cell):
    return bool(NUMBER.match(cell.split(" ")[0]))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-gpu") / "page.md"
    t0 = time.monotonic()
    proc = subprocess.run(["make", "-s", "bench-gpu", "SMOKE=1", f"OUT={out}", "TIME_LIMIT=1200"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc, time.monotonic() - t0


@pytest.mark.slow
def test_the_smoke_run_writes_every_row_with_a_number(smoke):
    out, _, _ = smoke
    text = out.read_text()
    assert "SMOKE run: toy sizes on the CPU" in text and "Command: `make bench-gpu SMOKE=1`" in text
    t = tables(text)
    opt = t["1. Optimizer update"]
    assert [(r[0], r[1]) for r in opt] == [(s, o) for s in ("XLA off", "own XLA update", "whole step in XLA")
                                           for o in ("SGD", "SNGM", "BlockSNGM", "LARS")]
    assert all(numeric(r[2]) and numeric(r[3]) for r in opt)
    assert [r[3] for r in opt if r[1] == "SGD"] == ["1.00"] * 3
    r50 = t["2. ResNet-50 per GPU"]
    assert [(r[0], r[1]) for r in r50] == [(p, x) for p in ("float32", "mixed_float16", "mixed_bfloat16")
                                           for x in ("off", "on")]
    assert all(numeric(r[2]) and numeric(r[3]) for r in r50)
    small = t["3. ResNet-20 and DeepFM"]
    assert len(small) == 12 and {r[0].split(",")[0] for r in small} == {"ResNet-20", "DeepFM"}
    assert all(numeric(r[3]) for r in small)
    inp = t["4. ImageNet input pipeline against one GPU"]
    assert [r[0] for r in inp] == ["1 core(s)"] + ([f"{os.cpu_count()} core(s)"] if os.cpu_count() > 1 else []) + [
        "mixed_float16 + XLA" if "mixed_float16 + XLA" in text else "mixed_bfloat16 + XLA"]
    assert all(numeric(c) for r in inp for c in r[1:])
    ar = t["5. Horovod allreduce over the local GPUs"]
    assert [r[0] for r in ar] == [f"{4**i * 1024:,}" for i in range(8)] and all(numeric(c) for r in ar for c in r[1:])
    assert "2 processes, gloo on cpu" in text
    sc = t["6. Scaling over the local GPUs"]
    assert [r[0] for r in sc] == ["1", "2", "plain Keras model.fit", "sngm-train (1 process)", "trainer's overhead"]
    assert sc[0][3] == "100.0%" and all(numeric(c) for r in sc for c in r[1:])
    targets = t["Targets"]
    assert len(targets) == 3 and numeric(targets[0][1]) and numeric(targets[2][1])
    assert targets[1][1] == "–"  # no GPU, so no published class to compare with
    assert "not measured" not in text


@pytest.mark.slow
def test_the_page_agrees_with_the_kept_numbers_and_a_second_run_resumes(smoke):
    out, _, first_seconds = smoke
    state = json.loads(out.with_suffix(".json").read_text())
    res = state["results"]
    # the page's ratios and rates, recomputed from the raw times
    opt = {(r["setting"], r["optimizer"]): r["ms"] for r in res["optimizer"]["rows"]}
    rows = {(r[0], r[1]): r for r in tables(out.read_text())["1. Optimizer update"]}
    for (s, o), ms in opt.items():
        assert float(rows[(s, o)][3]) == pytest.approx(ms / opt[(s, "SGD")], abs=0.006)
    sc = res["scaling"]
    for r in sc["rows"]:
        assert r["images_per_s"] == pytest.approx(r["global_batch"] / (r["ms"] / 1e3), rel=1e-9)
    assert [r["global_batch"] for r in sc["rows"]] == [4, 8]
    trainer, plain, short = gpu_report.overhead(res)
    assert short == pytest.approx(1 - sc["rows"][0]["images_per_s"] / sc["plain_fit"]["images_per_s"])
    t0 = time.monotonic()
    again = subprocess.run([PY, SCRIPT, "--smoke", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("kept from the last run") == 6
    assert time.monotonic() - t0 < first_seconds / 3
    assert json.loads(out.with_suffix(".json").read_text())["results"] == res


def test_a_run_out_of_time_marks_what_it_left(tmp_path):
    out = tmp_path / "page.md"
    proc = subprocess.run([PY, SCRIPT, "--smoke", "--out", str(out), "--time-limit", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "not measured: optimizer, resnet50, small, input, allreduce, scaling" in proc.stdout
    text = out.read_text()
    assert text.count("*not measured: time limit*") == 6
    assert "| SGD |" in text  # the tables are still there, with dashes


def test_without_a_gpu_the_full_run_refuses_and_points_to_smoke(tmp_path):
    stamps = sorted(os.listdir(os.path.join(ROOT, ".venv")))
    t0 = time.monotonic()
    proc = subprocess.run(["make", "-s", "bench-gpu", f"OUT={tmp_path / 'x.md'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "no GPU on this host" in proc.stderr and "make bench-gpu SMOKE=1" in proc.stderr
    assert time.monotonic() - t0 < 30 and sorted(os.listdir(os.path.join(ROOT, ".venv"))) == stamps  # nothing installed
    # the script itself: on a TensorFlow without CUDA it says so; on a CUDA build (a venv set up
    # with GPU=1 on a host without a GPU) that TensorFlow sees none
    import tensorflow as tf

    why = "TensorFlow sees no GPU" if tf.sysconfig.get_build_info().get("cuda_version") else "not a CUDA build"
    proc = subprocess.run([PY, SCRIPT, "--out", str(tmp_path / "y.md")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert why in proc.stderr and "SMOKE=1" in proc.stderr, proc.stderr
    assert not (tmp_path / "y.md").exists()
    proc = subprocess.run([PY, SCRIPT, "--smoke", "--time-limit", "-5"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "Received: -5.0" in proc.stderr


def test_the_committed_page_holds_every_row(tmp_path):
    page = open(os.path.join(ROOT, "docs", "benchmarks-gpu.md"), encoding="utf-8").read()
    if "No GPU has run these yet" in page:  # until a GPU host ran it: exactly the empty tables
        subprocess.run([PY, SCRIPT, "--empty", "--out", str(tmp_path / "e.md")], check=True, cwd=ROOT,
                       capture_output=True)
        assert page == (tmp_path / "e.md").read_text(), "docs/benchmarks-gpu.md is stale: bench/gpu_bench.py --empty"
    else:
        assert "not measured" not in page and "SMOKE run" not in page
    t = tables(page)
    assert len(t["1. Optimizer update"]) == 12 and len(t["2. ResNet-50 per GPU"]) == 6
    assert len(t["3. ResNet-20 and DeepFM"]) == 12 and len(t["Targets"]) == 3


def test_the_published_figure_each_gpu_class_is_compared_with():
    assert gpu_host.dle_reference("NVIDIA A100-SXM4-40GB") == ("DGX A100, 1x A100 40GB", 2375, True)
    assert gpu_host.dle_reference("Tesla V100-SXM2-32GB") == ("DGX-2, 1x V100 32GB", 1300, True)
    assert gpu_host.dle_reference("NVIDIA H200") == ("DGX A100, 1x A100 40GB", 2375, False)
    assert gpu_host.dle_reference("NVIDIA GH200 480GB") == ("DGX A100, 1x A100 40GB", 2375, False)
    assert gpu_host.dle_reference("Tesla T4") == ("DGX-2, 1x V100 32GB", 1300, False)
    assert gpu_host.dle_reference("AMD Instinct MI300X") is None


def test_the_targets_are_judged_from_the_numbers():
    facts = {"gpus": [{"name": "NVIDIA H200"}], "host": "h", "tensorflow": "2.21.0", "keras": "3.15.1"}
    opt = [{"setting": s, "optimizer": o, "ms": 1.0 * (1.08 if o == "SNGM" and s == "whole step in XLA" else 1.0),
            "ratio": 1.08 if o == "SNGM" and s == "whole step in XLA" else 1.0}
           for s in gpu_report.SETTINGS for o in gpu_report.OPTIMIZERS]
    r50 = [{"precision": p, "xla": x, "ms": 100.0, "images_per_s": 2000.0 if (p, x) == ("mixed_bfloat16", True) else 900}
           for p in gpu_report.PRECISIONS for x in (False, True)]
    scaling = {"rows": [{"gpus": 1, "global_batch": 256, "ms": 100, "images_per_s": 950.0}],
               "plain_fit": {"images_per_s": 1000.0, "ms": 1}}
    results = {"optimizer": {"rows": opt, "variables": 1, "parameters": 1}, "resnet50": {"rows": r50},
               "scaling": {**scaling, "batch": 256, "precision": "mixed_float16", "xla": True}}
    size = {"optimizer": {}, "resnet50": {"batch": 256, "depth": 50, "image": 224}, "small": {"resnet20": {"batch": 1}, "deepfm": {"batch": 1}},
            "scaling": {"depth": 50, "image": 224, "batch": 256, "precision": "mixed_float16", "xla": True}}
    targets = tables(gpu_report.render(facts, results, size, "make bench-gpu"))["Targets"]
    assert targets[0][1:] == ["1.08x", "met"]  # the worse of own-XLA (1.00) and whole-step (1.08)
    assert targets[1][1] == "84% (mixed_bfloat16, 2,000 images/s)" and targets[1][2] == "missed"  # 2000 / 2375
    assert "nearest class published" in targets[1][0]
    assert targets[2][1:] == ["5.0%", "missed"]  # 1 - 950 / 1000
