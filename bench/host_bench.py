"""`make bench-gpu BACKEND=jax|torch`: GPU numbers from the host's own JAX or PyTorch, with
nothing installed and no network (an offline host installs keras-sngm and Keras from the
folder `make wheelhouse` writes; see the README). No TensorFlow is imported.

Sections, each in fresh processes (bench/host_cells.py), each against a native anchor timed
in the same run:
  1. optimizer  one update on ResNet-50's variables: Keras SGD(momentum), SNGM, BlockSNGM,
                LARS (and MSGD on PyTorch). JAX: inside jax.jit, as in model.fit, against
                optax.sgd and optax's SNGM chain. PyTorch: against torch.optim.SGD with
                foreach=True and fused=True.
  2. resnet50   ResNet-50 training images/s per GPU, synthetic data already on the device,
                batch 256: float32, mixed_bfloat16 and mixed_float16, SGD against SNGM.
                PyTorch's anchor: torchvision's ResNet-50, torch.optim.SGD, AMP, channels_last.
  3. trainers   (JAX) `sngm-train resnet --engine jax` on synthetic ResNet-50 against a plain
                `model.fit` of the same model.
The page (docs/benchmarks-gpu-<backend>.md, or --out) gets the host's GPU, driver, CUDA and
framework versions and the targets; a JSON beside it keeps the results, so a second run
resumes (--fresh starts again). --time-limit (default 480 s: the 8 minutes of one lent GPU,
compilation included) caps the whole run; what does not fit is marked unmeasured.

    make bench-gpu BACKEND=jax [HOST_PYTHON=python3] [TIME_LIMIT=480] [OUT=...]
    make bench-gpu BACKEND=torch SMOKE=1    # the same code on the CPU at toy sizes
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

import gpu_host  # noqa: E402
import host_report  # noqa: E402
from gpu_bench import OutOfTime, Runner, measure_sections, trainer_update  # noqa: E402

SECTIONS = {"jax": ("optimizer", "resnet50", "trainers"), "torch": ("optimizer", "resnet50")}
NEEDS = {"jax": ("jax", "JAX", "optax"), "torch": ("torch", "PyTorch", "torchvision")}
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")

SIZES = {
    "full": {
        "optimizer": {"repeats": 30, "variables": 0},
        "resnet50": {"depth": 50, "image": 224, "classes": 1000, "batch": 256, "warmup": 5, "steps": 20},
        "trainers": {"depth": 50, "image": 224, "classes": 1000, "batch": 256, "precision": "mixed_bfloat16",
                     "steps_per_epoch": 15, "epochs": 2, "warmup": 5},
    },
    "smoke": {
        "optimizer": {"repeats": 2, "variables": 9},
        "resnet50": {"depth": 8, "image": 32, "classes": 10, "batch": 4, "warmup": 1, "steps": 1},
        "trainers": {"depth": 8, "image": 32, "classes": 10, "batch": 8, "precision": "float32",
                     "steps_per_epoch": 3, "epochs": 2, "warmup": 1},
    },
}
CLI = "import sys; from keras_sngm_trainers.cli import main; sys.exit(main(sys.argv[1:]))"


def error(message):
    print(f"bench-gpu: error: {message}", file=sys.stderr)
    return 2


def missing(backend):
    """What this Python lacks for BACKEND=`backend`, as one line, or None."""
    module, name, anchor = NEEDS[backend]
    where = f"this Python ({sys.executable}, {platform.python_version()})"
    if importlib.util.find_spec(module) is None:
        return f"BACKEND={backend} needs {name}, and {where} has none (`import {module}` fails)"
    lacking = [m for m in ("keras", "keras_sngm", "keras_sngm_trainers", anchor) if importlib.util.find_spec(m) is None]
    if lacking:
        return (f"BACKEND={backend}: {where} lacks {', '.join(lacking)}. Offline, install them from the folder "
                f"`make wheelhouse` writes: pip install --no-index --find-links wheelhouse keras-sngm"
                + (f" (and {anchor}, which GPU images usually carry)" if anchor in lacking else ""))
    return None


def measure_optimizer(r, size, backend):
    return r.cell("optimizer", size)


def measure_resnet50(r, size, backend):
    """One process per precision (SGD and SNGM in it), then PyTorch's torchvision anchor; what
    the time limit leaves out is marked, what was measured is kept."""
    rows, anchor, left_out = [], None, []
    try:
        for precision in PRECISIONS:
            rows += r.cell("resnet", {**size, "precisions": [precision]})["rows"]
        if backend == "torch":
            anchor = r.cell("torchvision", size)["rows"]
    except OutOfTime:
        left_out = [p for p in PRECISIONS if p not in {row["precision"] for row in rows}]
        left_out += ["torchvision"] if backend == "torch" and anchor is None else []
    return {**{k: size[k] for k in ("batch", "depth", "image")}, "rows": rows, "anchor": anchor,
            "left_out": left_out}


def measure_trainers(r, size, backend):
    """`sngm-train resnet --engine jax` (its timing.json: the median update) against a plain
    model.fit of the same model, precision, optimizer and batch."""
    b = size["batch"]
    seconds, timed = trainer_update(r, [
        sys.executable, "-c", CLI, "resnet", "--engine", "jax", "--dataset", "synthetic", "--depth", str(size["depth"]),
        "--image-size", str(size["image"]), "--num-classes", str(size["classes"]),
        "--train-subset", str(b * size["steps_per_epoch"]), "--batch-size", str(b), "--micro-batch", str(b),
        "--optimizer", "sngm", "--lr", "0.1", "--weight-decay", "0", "--epochs", str(size["epochs"]),
        "--precision", size["precision"], "--no-augment"])
    trainer = {"ms": 1e3 * seconds, "images_per_s": b / seconds, "updates_timed": timed}
    plain = r.cell("plain_fit", size)
    return {**{k: size[k] for k in ("batch", "depth", "image", "precision")}, "trainer": trainer, "plain_fit": plain}


MEASURE = {"optimizer": measure_optimizer, "resnet50": measure_resnet50, "trainers": measure_trainers}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=sorted(SECTIONS), required=True, help="the host's framework")
    p.add_argument("--out", help="the page to write (default docs/benchmarks-gpu-BACKEND.md)")
    p.add_argument("--smoke", action="store_true",
                   help="toy sizes on the CPU: checks every code path, not the hardware")
    p.add_argument("--time-limit", type=float, default=480, help="seconds for the whole run (default 480)")
    p.add_argument("--fresh", action="store_true", help="measure everything again, ignoring the kept results")
    p.add_argument("--empty", action="store_true", help="write the page with empty tables (no GPU has run it)")
    a = p.parse_args(argv)
    backend, mode = a.backend, "smoke" if a.smoke else "full"
    out = a.out or os.path.join(ROOT, "docs", f"benchmarks-gpu-{backend}.md")
    command = f"make bench-gpu BACKEND={backend}" + (" SMOKE=1" if a.smoke else "")
    if a.time_limit <= 0:
        p.error(f"--time-limit must be > 0. Received: {a.time_limit}")
    if a.empty:
        host_report.write(out, host_report.render(backend, None, {}, SIZES["full"], command))
        print(f"wrote {out} (empty tables)")
        return 0
    why = missing(backend)
    if why:
        return error(why)
    path = [ROOT, HERE] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": os.pathsep.join(path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    runner = Runner(a.time_limit, cells="host_cells.py", env=env)
    t0 = time.monotonic()
    facts = runner.cell("facts", {})
    smi = gpu_host.nvidia_smi()
    facts.update(host=platform.node(), cpus=os.cpu_count(), cpu=gpu_host._cpu_model(), nvidia_smi=smi,
                 driver=smi[0]["driver"] if smi else "", mode=mode)
    if not a.smoke and facts["platform"] != "gpu":
        return error(f"{facts['framework']} here sees no GPU (its devices: {', '.join(facts['devices'])}). "
                     f"`make bench-gpu SMOKE=1 BACKEND={backend}` runs the same code on the CPU at toy sizes.")
    state_path = os.path.splitext(out)[0] + ".json"
    os.makedirs(os.path.dirname(os.path.abspath(state_path)), exist_ok=True)
    state = {}
    if os.path.exists(state_path) and not a.fresh:
        kept = json.load(open(state_path))
        if {k: kept.get("facts", {}).get(k) for k in ("host", "framework", "keras", "devices", "driver", "mode")} == \
                {k: facts.get(k) for k in ("host", "framework", "keras", "devices", "driver", "mode")}:
            state = kept
    state.setdefault("results", {})
    state["facts"], state["date"] = facts, datetime.date.today().isoformat()
    measure_sections(SECTIONS[backend], lambda section: MEASURE[section](runner, SIZES[mode][section], backend),
                     state, state_path)
    host_report.write(out, host_report.render(backend, facts, state["results"], SIZES[mode], command))
    failed = [s for s in SECTIONS[backend] if "error" in state["results"].get(s, {})
              or state["results"].get(s, {}).get("left_out")]
    print(f"wrote {out} and {state_path} in {time.monotonic() - t0:.0f} s"
          + (f"; not (wholly) measured: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
