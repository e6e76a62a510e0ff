"""`make bench-gpu`: every GPU number of this project, on the host it runs on, in one command.

Sections, each measured in fresh processes (bench/gpu_cells.py) and written as tables to
docs/benchmarks-gpu.md (or --out) with the host's GPU, driver, CUDA and TensorFlow versions:
  1. optimizer  the update of Keras SGD(momentum) against SNGM, BlockSNGM and LARS on ~25M
                ResNet-50-like parameters: without XLA, with each one's own XLA update, and
                with the whole apply in XLA (what model.compile's jit_compile gives);
  2. resnet50   ResNet-50 images/s per GPU, synthetic ImageNet-size data, batch 256:
                float32, mixed_float16, mixed_bfloat16, each with and without --xla;
  3. small      ResNet-20 (CIFAR) and DeepFM (Criteo) examples/s, same precisions and XLA;
  4. input      the ImageNet input pipeline's images/s per CPU core (generated JPEGs of
                ImageNet's size), against what one GPU consumes in section 2;
  5. allreduce  Horovod allreduce bus bandwidth over the local GPUs (NCCL), by message size;
  6. scaling    `sngm-train resnet` on 1 to N local GPUs at a fixed per-GPU batch, against a
                plain Keras model.fit on one GPU (the trainer's overhead).
Then the targets: SNGM's update within 1.1x SGD's; ResNet-50 with mixed precision and XLA
at 90% of NVIDIA's published figure for the GPU class; the trainer within 3% of model.fit.

Results are kept in a JSON beside the page (--out with .json): a second run resumes, skipping
what is measured for the same host and software (--fresh starts again). --time-limit caps
the whole run; what it leaves unmeasured is marked so in the tables.

    make bench-gpu [OUT=docs/benchmarks-gpu.md] [TIME_LIMIT=3600]
    make bench-gpu SMOKE=1     # the same code paths on the CPU at toy sizes (the suite runs it)
"""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import gpu_host  # noqa: E402
import gpu_report  # noqa: E402

BIN = os.path.dirname(sys.executable)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]), "TF_CPP_MIN_LOG_LEVEL": "3"}
SECTIONS = ("optimizer", "resnet50", "small", "input", "allreduce", "scaling")

# What each section measures, at full size (a GPU host) and at toy size (SMOKE=1, the CPU).
SIZES = {
    "full": {
        "optimizer": {"repeats": 30, "variables": 0},
        "resnet50": {"depth": 50, "image": 224, "classes": 1000, "batch": 256, "warmup": 10, "steps": 40,
                     "per_process": 1},
        "small": {"resnet20": {"model": "resnet20", "depth": 20, "batch": 512, "warmup": 5, "steps": 30},
                  "deepfm": {"model": "deepfm", "batch": 8192, "hash_space": 2**20, "hidden": [400, 400, 400],
                             "warmup": 5, "steps": 30}},
        "input": {"images": 1200, "height": 375, "width": 500},
        "allreduce": {"max_bytes": 256 << 20, "repeats": 20},
        "scaling": {"depth": 50, "image": 224, "classes": 1000, "batch": 256, "precision": "mixed_float16",
                    "xla": True, "steps_per_epoch": 10, "epochs": 4, "warmup": 10, "steps": 30},
    },
    "smoke": {
        "optimizer": {"repeats": 2, "variables": 9},
        "resnet50": {"depth": 8, "image": 32, "classes": 10, "batch": 2, "warmup": 1, "steps": 1,
                     "per_process": 6},
        "small": {"resnet20": {"model": "resnet20", "depth": 8, "batch": 8, "warmup": 1, "steps": 1},
                  "deepfm": {"model": "deepfm", "batch": 64, "hash_space": 1000, "hidden": [16], "warmup": 1,
                             "steps": 1}},
        "input": {"images": 128, "height": 64, "width": 80},
        "allreduce": {"max_bytes": 16 << 20, "repeats": 10},  # 16 MiB: a transfer time above loopback noise
        "scaling": {"depth": 8, "image": 32, "classes": 10, "batch": 4, "precision": "float32", "xla": False,
                    "steps_per_epoch": 2, "epochs": 3, "warmup": 1, "steps": 3},
    },
}


class OutOfTime(Exception):
    pass


class Runner:
    """Runs child processes within the run's time limit."""

    def __init__(self, limit_s, cells="gpu_cells.py", env=None):
        self.deadline = time.monotonic() + limit_s
        self.cells, self.env = os.path.join(HERE, cells), env or ENV

    def check(self):
        """Seconds left; OutOfTime when (nearly) none."""
        left = self.deadline - time.monotonic()
        if left <= 5:
            raise OutOfTime
        return left

    def run(self, cmd, **kw):
        left = self.check()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=kw.pop("env", self.env), cwd=ROOT,
                                  timeout=left, **kw)
        except subprocess.TimeoutExpired:
            raise OutOfTime from None
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        return proc

    def cell(self, name, args):
        proc = self.run([sys.executable, self.cells, name, json.dumps(args)])
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            raise RuntimeError(f"{os.path.basename(self.cells)} {name} printed no result:\n{proc.stderr[-3000:]}")
        return json.loads(line[-1][7:])


def horovodrun(n):
    """The launcher prefix for n local processes (`--gloo`: Horovod's controller; GPU tensors
    still reduce with NCCL where Horovod was built with it)."""
    return [os.path.join(BIN, "horovodrun"), "--gloo", "-np", str(n), "-H", f"localhost:{n}"] if n > 1 else []


def worker_counts(n):
    """1, 2, 4, ... up to n, and n."""
    out, k = [], 1
    while k < n:
        out.append(k)
        k *= 2
    return out + [n]


# ---- the sections: each returns what the report shows -------------------------------------

def measure_optimizer(r, size, facts):
    return r.cell("optimizer", size)


def measure_resnet50(r, size, facts):
    """Every precision with and without XLA, `per_process` cells to a fresh process (on a GPU,
    one each: no model's memory is held while the next is timed)."""
    todo = [[p, x] for p in gpu_report.PRECISIONS for x in (False, True)]
    n = size["per_process"]
    rows = [row for i in range(0, len(todo), n) for row in r.cell("resnet", {**size, "cells": todo[i:i + n]})["rows"]]
    return {"batch": size["batch"], "depth": size["depth"], "image": size["image"], "rows": rows}


def measure_small(r, size, facts):
    return {name: {**r.cell("small", args), "batch": args["batch"]} for name, args in size.items()}


def measure_input(r, size, facts):
    import image_input

    tmp = tempfile.mkdtemp(prefix="sngm-bench-gpu-input-")
    try:
        folder = image_input.make_folder(os.path.join(tmp, "photos"), size["images"], size["height"], size["width"])
        rows = []
        for cores in sorted({1, os.cpu_count() or 1}):
            r.check()
            rate = image_input.measure("imagenet-train", folder, cores, size["images"])["images_per_s"]
            rows.append({"cores": cores, "images_per_s": rate})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"image": f"{size['width']}x{size['height']}", "rows": rows}


def measure_allreduce(r, size, facts, processes):
    if processes < 2:
        return {"processes": processes, "rows": [], "why": "one GPU: nothing to reduce across"}
    out = os.path.join(tempfile.mkdtemp(prefix="sngm-bench-gpu-ar-"), "allreduce.json")
    r.run(horovodrun(processes) + [os.path.join(BIN, "sngm-train"), "plan", "--measure-allreduce", "--out", out,
                                   "--max-bytes", str(size["max_bytes"]), "--repeats", str(size["repeats"])])
    record = json.load(open(out))
    return {"processes": processes, "backend": record["backend"], "device": record["device"],
            "busbw_fit_gbs": record["busbw_bytes_per_second"] / 1e9, "alpha_us": record["alpha_seconds"] * 1e6,
            "rows": [{"bytes": s["bytes"], "ms": 1e3 * s["seconds"], "busbw_gbs": s["busbw_gbs"]}
                     for s in record["sizes"]]}


def trainer_update(r, cmd):
    """Runs the `sngm-train` command `cmd` with a temporary --logdir; (its median update in
    seconds, one micro-batch per update, and the updates timed), from its timing.json."""
    logdir = tempfile.mkdtemp(prefix="sngm-bench-gpu-")
    try:
        r.run(cmd + ["--logdir", logdir, "--no-verbose"])
        timing = json.load(open(os.path.join(logdir, "timing.json")))
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    return timing["by_micro_batches"]["1"]["update_seconds"], timing["updates_timed"]


def measure_scaling(r, size, facts, processes):
    rows = []
    for k in worker_counts(processes):
        b = size["batch"]
        seconds, timed = trainer_update(r, horovodrun(k) + [
            os.path.join(BIN, "sngm-train"), "resnet", "--dataset", "synthetic", "--depth", str(size["depth"]),
            "--image-size", str(size["image"]), "--num-classes", str(size["classes"]),
            "--train-subset", str(b * k * size["steps_per_epoch"]), "--batch-size", str(b * k), "--micro-batch", str(b),
            "--optimizer", "sngm", "--lr", "0.1", "--epochs", str(size["epochs"]),
            "--precision", size["precision"], "--xla" if size["xla"] else "--no-xla", "--no-augment"])
        rows.append({"gpus": k, "global_batch": b * k, "ms": 1e3 * seconds, "images_per_s": b * k / seconds,
                     "updates_timed": timed})
    plain = r.cell("plain_fit", {k: size[k] for k in ("depth", "image", "classes", "batch", "precision", "warmup",
                                                      "steps")} | {"examples": size["batch"] * size["steps_per_epoch"]})
    return {**{k: size[k] for k in ("batch", "precision", "xla", "depth", "image")}, "rows": rows, "plain_fit": plain}


MEASURE = {"optimizer": measure_optimizer, "resnet50": measure_resnet50, "small": measure_small,
           "input": measure_input, "allreduce": measure_allreduce, "scaling": measure_scaling}


def measure_sections(sections, measure, state, state_path):
    """`measure(section)` into `state["results"]` for each section not kept whole from the
    last run, its seconds with it; a time limit or a failure is recorded as the section's
    "error". The state is written (atomically) after each section: a cut run resumes."""
    for section in sections:
        done = state["results"].get(section)
        if done and "error" not in done and not done.get("left_out"):
            print(f"{section}: kept from the last run", flush=True)
            continue
        t = time.monotonic()
        try:
            state["results"][section] = measure(section)
        except OutOfTime:
            state["results"][section] = {"error": "time limit"}
        except RuntimeError as e:
            state["results"][section] = {"error": str(e).splitlines()[0][:300]}
            print(e, file=sys.stderr)
        state["results"][section]["seconds"] = time.monotonic() - t
        print(f"{section}: {state['results'][section].get('error', 'measured')} "
              f"({state['results'][section]['seconds']:.0f} s)", flush=True)
        with open(state_path + ".tmp", "w") as f:
            json.dump(state, f, indent=1)
        os.replace(state_path + ".tmp", state_path)


def _same_host(a, b):
    keys = ("host", "gpus", "tensorflow", "keras", "horovod", "driver")
    return all(a.get(k) == b.get(k) for k in keys)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks-gpu.md"), help="the page to write")
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: checks every code path, not the hardware")
    p.add_argument("--time-limit", type=float, default=3600, help="seconds for the whole run (default 3600)")
    p.add_argument("--gpus", type=int, default=0, help="local GPUs to use (0 = all TensorFlow sees)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to measure")
    p.add_argument("--fresh", action="store_true", help="measure everything again, ignoring the kept results")
    p.add_argument("--empty", action="store_true", help="write the page with empty tables (no host measured yet)")
    a = p.parse_args(argv)
    if a.time_limit <= 0 or a.gpus < 0:
        p.error(f"--time-limit must be > 0 and --gpus >= 0. Received: {a.time_limit}, {a.gpus}")
    mode = "smoke" if a.smoke else "full"
    command = "make bench-gpu" + (" SMOKE=1" if a.smoke else "")
    if a.empty:
        gpu_report.write(a.out, gpu_report.render(None, {}, SIZES["full"], command))
        print(f"wrote {a.out} (empty tables)")
        return 0
    t0 = time.monotonic()
    facts = gpu_host.facts(env=ENV)
    gpus = len(facts["gpus"])
    if not a.smoke and not gpus:
        why = (f"TensorFlow {facts['tensorflow']} here is not a CUDA build (make install GPU=1 installs one)"
               if not facts.get("tf_cuda") else "TensorFlow sees no GPU")
        smi = ", ".join(g["name"] for g in facts["nvidia_smi"]) or "no nvidia-smi or no GPU listed"
        print(f"bench-gpu: error: no GPU on this host: {why}; nvidia-smi: {smi}. "
              "`make bench-gpu SMOKE=1` runs the same code paths on the CPU at toy sizes.", file=sys.stderr)
        return 2
    if a.gpus > max(gpus, 1 if a.smoke else 0) and not a.smoke:
        p.error(f"--gpus {a.gpus} is more than the {gpus} GPUs TensorFlow sees")
    processes = a.gpus or (gpus if not a.smoke else 2)  # smoke: two CPU processes under Gloo
    facts.update(mode=mode, processes=processes)
    state_path = os.path.splitext(a.out)[0] + ".json"
    os.makedirs(os.path.dirname(os.path.abspath(state_path)), exist_ok=True)
    state = {}
    if os.path.exists(state_path) and not a.fresh:
        kept = json.load(open(state_path))
        if _same_host(kept.get("facts", {}), facts) and kept.get("facts", {}).get("mode") == mode:
            state = kept
    state.setdefault("results", {})
    state["facts"], state["date"] = facts, datetime.date.today().isoformat()
    runner = Runner(a.time_limit - (time.monotonic() - t0))

    def measure(section):
        extra = (processes,) if section in ("allreduce", "scaling") else ()
        return MEASURE[section](runner, SIZES[mode][section], facts, *extra)

    measure_sections(a.sections, measure, state, state_path)
    gpu_report.write(a.out, gpu_report.render(facts, state["results"], SIZES[mode], command))
    failed = [s for s in a.sections if "error" in state["results"].get(s, {})]
    print(f"wrote {a.out} and {state_path}" + (f"; not measured: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
