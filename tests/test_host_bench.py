"""`make bench-gpu BACKEND=jax|torch`: the smoke runs (the same code on the CPU at toy sizes,
in a Python where `import tensorflow` fails) write every row of their sections with a number,
and the page's ratios are the kept numbers'; bad input is one line; the committed pages are
the empty tables until a GPU host runs them."""

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import host_report  # noqa: E402
from test_gpu_bench import numeric  # noqa: E402
from test_gpu_bench import tables as all_rows  # noqa: E402

SCRIPT = os.path.join(ROOT, "bench", "host_bench.py")
NO_TF = os.path.join(ROOT, "tests", "no_tensorflow")  # sitecustomize: `import tensorflow` fails
PYTHONS = {"jax": os.path.join(ROOT, ".venv-jax", "bin", "python"),  # Python 3.12, JAX 0.11, no TensorFlow
           "torch": os.path.join(ROOT, ".venv", "bin", "python")}  # PyTorch, TensorFlow made unimportable


def tables(text):
    """{heading: body rows} of a page, without the header rows."""
    return {h: [r for r in rows if r[0] not in ("optimizer", "torchvision ResNet-50")]
            for h, rows in all_rows(text).items()}


def host_python(backend):
    python = PYTHONS[backend]
    if not os.path.exists(python):
        pytest.skip(f"{python} is missing: `make test` sets it up")
    return python


def make(*args, timeout=900):
    env = {**os.environ, "PYTHONPATH": NO_TF}
    return subprocess.run(["make", "-s", "bench-gpu", *args], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_smoke_run_writes_every_row_with_a_number(tmp_path, backend):
    out = tmp_path / "page.md"
    proc = make(f"BACKEND={backend}", "SMOKE=1", f"HOST_PYTHON={host_python(backend)}", f"OUT={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "SMOKE run: toy sizes on the CPU" in text and f"`make bench-gpu BACKEND={backend} SMOKE=1`" in text
    t = tables(text)
    optimizers = host_report.KERAS[backend] + host_report.ANCHORS[backend]
    assert [r[0] for r in t["1. Optimizer update"]] == list(optimizers)
    resnet = t["2. ResNet-50 per GPU"]
    assert [r[0] for r in resnet[:3]] == list(host_report.PRECISIONS)
    if backend == "torch":  # the torchvision anchor's two rows
        assert [r[0] for r in resnet[3:]] == ["AMP bfloat16 (CPU)", "float32"]
    else:
        assert [r[0] for r in t["3. The trainer on the GPU"]] == ["plain Keras model.fit", "sngm-train --engine jax",
                                                                  "the trainer's overhead"]
    for heading, rows in t.items():
        if heading[0].isdigit():  # the sections (not the host, not the targets)
            for row in rows:
                assert all(numeric(c) for c in row[1:]), (heading, row)
    # the page's ratios are the kept raw times'
    state = json.loads(out.with_suffix(".json").read_text())
    assert state["facts"]["framework"].startswith("JAX" if backend == "jax" else "PyTorch")
    ms = {r["optimizer"]: r["ms"] for r in state["results"]["optimizer"]["rows"]}
    sgd, anchor = ms[host_report.SGD[backend]], ms[host_report.ANCHORS[backend][-1]]
    for row in t["1. Optimizer update"]:
        assert float(row[2]) == pytest.approx(ms[row[0]] / sgd, abs=0.006)
        assert float(row[3]) == pytest.approx(ms[row[0]] / anchor, abs=0.006)
    rates = {(r["precision"], r["optimizer"]): r["images_per_s"] for r in state["results"]["resnet50"]["rows"]}
    for row in resnet[:3]:
        assert float(row[3]) == pytest.approx(rates[(row[0], "SNGM")] / rates[(row[0], "SGD")], abs=0.006)


def test_bad_backends_and_hosts_are_one_line(tmp_path):
    jax_python = host_python("jax")
    proc = subprocess.run([jax_python, SCRIPT, "--backend", "torch", "--smoke", "--out", str(tmp_path / "t.md")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("bench-gpu: error: BACKEND=torch needs PyTorch, and this Python") and \
        jax_python in proc.stderr and "`import torch` fails" in proc.stderr
    proc = make("BACKEND=jax", f"HOST_PYTHON={jax_python}", f"OUT={tmp_path / 'j.md'}", timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "JAX 0.11.2 here sees no GPU (its devices: cpu)" in proc.stderr
    assert "`make bench-gpu SMOKE=1 BACKEND=jax` runs the same code on the CPU" in proc.stderr
    assert not (tmp_path / "j.md").exists()
    proc = make("BACKEND=mxnet")
    assert proc.returncode == 2 and "BACKEND=mxnet: one of jax, torch" in proc.stderr


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_committed_page_is_the_empty_tables(tmp_path, backend):
    page = open(os.path.join(ROOT, "docs", f"benchmarks-gpu-{backend}.md"), encoding="utf-8").read()
    if "No GPU has run this yet" in page:
        subprocess.run([sys.executable, SCRIPT, "--backend", backend, "--empty", "--out", str(tmp_path / "e.md")],
                       check=True, capture_output=True)
        assert page == (tmp_path / "e.md").read_text(), f"docs/benchmarks-gpu-{backend}.md is stale: --empty"
    else:
        assert "not measured" not in page and "SMOKE run" not in page


def test_what_the_time_limit_left_is_marked_and_the_targets_follow_the_numbers():
    facts = {"host": "h", "framework": "JAX 0.11.2", "keras": "3.15.1", "devices": ["NVIDIA H100"], "cuda": "13.0",
             "anchor": "optax 0.2.8", "cpus": 16, "cpu": "x", "nvidia_smi": [], "mode": "full"}
    opt = {"variables": 161, "parameters": 25e6,
           "rows": [{"optimizer": n, "ms": ms} for n, ms in (("SGD", 2.0), ("SNGM", 2.1), ("BlockSNGM", 2.2),
                                                           ("LARS", 2.4), ("optax.sgd", 1.9),
                                                           ("optax SNGM chain", 2.0))]}
    r50 = {"batch": 256, "depth": 50, "image": 224, "anchor": None, "left_out": ["mixed_float16"],
           "rows": [{"precision": p, "optimizer": o, "ms": 100.0, "images_per_s": 2500.0}
                    for p in ("float32", "mixed_bfloat16") for o in ("SGD", "SNGM")]}
    trainers = {"trainer": {"images_per_s": 960.0}, "plain_fit": {"images_per_s": 1000.0}}
    from host_bench import SIZES

    text = host_report.render("jax", facts, {"optimizer": opt, "resnet50": r50, "trainers": trainers}, SIZES["full"],
                              "make bench-gpu BACKEND=jax")
    t = tables(text)
    assert "*Not measured within the time limit: mixed_float16.*" in text
    assert t["2. ResNet-50 per GPU"][2] == ["mixed_float16", "–", "–", "–"]
    assert t["Targets"] == [["SNGM's update within 1.1x Keras SGD's", "1.05x", "met"],
                            ["SNGM's update within 1.1x optax's SNGM chain", "1.05x", "met"],
                            ["the trainer within 3% of a plain model.fit", "4.0%", "missed"]]
    text = host_report.render("jax", facts, {"optimizer": {"error": "time limit"}}, SIZES["full"], "c")
    assert "*not measured: time limit*" in text and tables(text)["Targets"][0][1:] == ["–", "–"]
