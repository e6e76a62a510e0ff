"""`make gpu-paper`: v1 Table 2's ResNet-20 rows at B=4096 on one GPU, full CIFAR-10.

The paper's protocol (v1 Table 2): ResNet-20, 45,000 training images (5,000 held out for
validation), the 10,000 test images evaluated once at the end; B=4096 as 32 accumulated
micro-batches of 128 (batch-norm statistics over 128 examples, as in the paper); poly
power 1.1, weight decay 1e-4, momentum 0.9, 160 epochs, no warm-up, one seed; the v1
learning rates with no sweep: SNGM 1.6, MSGD 0.4, LARS 0.8. Each arm is one
`sngm-train resnet --engine jax` on the host's own JAX: no TensorFlow, nothing installed
(keras-sngm and Keras from `make wheelhouse`'s folder where the host lacks them).

It plans its own time. A probe first trains SNGM for 3 epochs (30 updates, its own
directory, thrown away) and reads the seconds of an epoch, evaluation included, from its
TensorBoard events. Then the arms run in the order SNGM, MSGD, LARS, each only if its
predicted time fits what is left of --time-limit: an arm that does not fit is marked
unmeasured with its prediction, never shortened. Each finished arm is kept in the JSON
beside the page (docs/results-gpu.json), so a second session resumes with the next arm.

    make gpu-paper [HOST_PYTHON=python3] [TIME_LIMIT=480] [DATA=../shared/data/cifar10-jpeg.tar]
    make gpu-paper SMOKE=1    # the same code on the CPU: a few hundred images, 2 epochs, all three arms
"""

import argparse
import datetime
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

import gpu_host  # noqa: E402
import paper_report  # noqa: E402

ARMS = (("sngm", 1.6), ("msgd", 0.4), ("lars", 0.8))  # v1 Table 2's initial learning rates, in the run order
SIZES = {
    # The paper's column. --steps-per-execution 32: one compiled call per update (the host stays out of the way).
    "full": {"depth": 20, "batch": 4096, "micro_batch": 128, "epochs": 160, "train_subset": 0, "test_subset": 0,
             "steps_per_execution": 32, "probe_epochs": 3},
    # The same code on the CPU: a few hundred images, 2 epochs, 4 micro-batches per update.
    "smoke": {"depth": 8, "batch": 64, "micro_batch": 16, "epochs": 2, "train_subset": 320, "test_subset": 64,
              "steps_per_execution": 4, "probe_epochs": 2},
}
CLI = "import sys; from keras_sngm_trainers.cli import main; sys.exit(main(sys.argv[1:]))"
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar")


def flags(size, optimizer, lr, data, epochs=None):
    """The `sngm-train resnet` command line of one arm."""
    return ["resnet", "--engine", "jax", "--dataset", "cifar10", "--data-dir", data, "--depth", str(size["depth"]),
            "--batch-size", str(size["batch"]), "--micro-batch", str(size["micro_batch"]),
            "--steps-per-execution", str(size["steps_per_execution"]), "--optimizer", optimizer, "--lr", str(lr),
            "--schedule", "poly", "--power", "1.1", "--weight-decay", "1e-4", "--momentum", "0.9",
            "--epochs", str(epochs or size["epochs"]), "--validation-split", "0.1", "--seed", "0",
            "--train-subset", str(size["train_subset"]), "--test-subset", str(size["test_subset"]), "--no-verbose"]


def epoch_ends(run_dir):
    """The wall-clock times at which each epoch's summary was written (after its evaluation),
    read from the run's TensorBoard events with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run_dir, "train"), size_guidance={"tensors": 0})
    acc.Reload()
    return [e.wall_time for e in acc.Tensors("epoch_loss")]  # (the trainers write scalars as tensor summaries)


def train(cmd, env, run_dir, timeout):
    """Runs one `sngm-train`; (wall seconds, None) or (None, why it failed)."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd + ["--logdir", run_dir], capture_output=True, text=True, env=env, cwd=ROOT,
                              timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        return None, "time limit"
    if proc.returncode:
        return None, f"exited {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1][:300]}"
    return time.monotonic() - t0, None


def probe(size, data, env, left):
    """Seconds to the end of the first epoch (start-up, data, compilation) and of one epoch
    after it, from an SNGM run of `probe_epochs` epochs in a directory of its own."""
    run_dir = tempfile.mkdtemp(prefix="sngm-gpu-paper-probe-")
    try:
        t_start = time.time()
        wall, why = train([sys.executable, "-c", CLI, *flags(size, "sngm", 1.6, data, size["probe_epochs"])], env,
                          run_dir, left())
        if why:
            return {"error": why}
        ends = epoch_ends(run_dir)
        steady = [b - a for a, b in zip(ends, ends[1:])]
        return {"first_epoch_s": ends[0] - t_start, "epoch_s": max(steady), "epochs": len(ends), "wall_s": wall}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def predicted_s(probe_result, epochs):
    return probe_result["first_epoch_s"] + (epochs - 1) * probe_result["epoch_s"]


def unmeasured(probe_result, epochs, left_s):
    """An arm's entry when its predicted time does not fit the `left_s` seconds left, else None."""
    need = predicted_s(probe_result, epochs)
    return {"unmeasured": True, "predicted_s": need} if need > left_s else None


def not_measured_line(arms):
    """The closing line naming the arms left out, with their predicted minutes (None if none)."""
    left = [o for o, _ in ARMS if "test_accuracy" not in arms.get(o, {})]
    if not left:
        return None
    return "not measured: " + ", ".join(
        f"{o} (predicted {arms[o]['predicted_s'] / 60:.1f} min)" if arms.get(o, {}).get("predicted_s") else o
        for o in left)


def arm_result(run_dir, wall):
    """What the page shows of a finished arm, from its own files."""
    final = json.load(open(os.path.join(run_dir, "final.json")))
    history = json.load(open(os.path.join(run_dir, "history.json")))["history"]
    ends = epoch_ends(run_dir)
    steady = [b - a for a, b in zip(ends, ends[1:])]
    return {"test_accuracy": final["test_accuracy"], "val_accuracy": history["val_accuracy"][-1],
            "epochs_done": final["epochs_done"], "updates": final["updates"], "wall_s": wall,
            "seconds_per_epoch": sorted(steady)[len(steady) // 2] if steady else wall / final["epochs_done"]}


def facts(env):
    """The device, JAX, Keras and CUDA, from bench/host_cells.py's facts cell (its own process:
    JAX here would hold GPU memory the arms need)."""
    proc = subprocess.run([sys.executable, os.path.join(HERE, "host_cells.py"), "facts", "{}"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"gpu-paper: error: could not read the host's JAX: {proc.stderr.strip()[-500:]}")
    out = json.loads(line[-1][7:])
    smi = gpu_host.nvidia_smi()
    return {**out, "driver": smi[0]["driver"] if smi else "", "gpus": [g["name"] for g in smi],
            "python": sys.version.split()[0]}


def load_state(path, mode):
    if os.path.exists(path):
        kept = json.load(open(path))
        if kept.get("mode") == mode:
            return kept
    return {"mode": mode, "arms": {}}


def save_state(path, state):
    with open(path + ".tmp", "w") as f:
        json.dump(state, f, indent=1)
    os.replace(path + ".tmp", path)


def run(a):
    mode = "smoke" if a.smoke else "full"
    size = SIZES[mode]
    out = a.out or os.path.join(ROOT, "docs", "results-gpu.md")
    state_path = os.path.splitext(out)[0] + ".json"
    command = "make gpu-paper" + (" SMOKE=1" if a.smoke else "")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": os.pathsep.join([ROOT] + [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]), "TF_CPP_MIN_LOG_LEVEL": "3"}
    deadline = time.monotonic() + a.time_limit

    def left():  # seconds left of --time-limit
        return deadline - time.monotonic()

    state = load_state(state_path, mode)
    state["facts"], state["date"], state["command"] = facts(env), datetime.date.today().isoformat(), command
    if not a.smoke and state["facts"]["platform"] != "gpu":
        print(f"gpu-paper: error: JAX here sees no GPU (its devices: {', '.join(state['facts']['devices'])}). "
              "`make gpu-paper SMOKE=1` runs the same code on the CPU at toy sizes.", file=sys.stderr)
        return 2
    todo = [(o, lr) for o, lr in ARMS if "test_accuracy" not in state["arms"].get(o, {})]
    if todo:
        state["probe"] = probe(size, a.data, env, left)
        print(f"probe: {json.dumps(state['probe'])}", flush=True)
    for optimizer, lr in todo:
        if "error" in state["probe"]:
            state["arms"][optimizer] = {"error": f"the probe failed ({state['probe']['error']})"}
            continue
        need = predicted_s(state["probe"], size["epochs"])
        skipped = unmeasured(state["probe"], size["epochs"], left())
        if skipped:
            state["arms"][optimizer] = skipped
            print(f"{optimizer}: unmeasured, predicted {need / 60:.1f} min against {max(left(), 0) / 60:.1f} "
                  "min left", flush=True)
            continue
        run_dir = os.path.join(a.runs, optimizer)
        shutil.rmtree(run_dir, ignore_errors=True)
        wall, why = train([sys.executable, "-c", CLI, *flags(size, optimizer, lr, a.data)], env, run_dir, left())
        state["arms"][optimizer] = {"error": why, "predicted_s": need} if why else {
            **arm_result(run_dir, wall), "lr": lr, "predicted_s": need}
        print(f"{optimizer}: {json.dumps(state['arms'][optimizer])}", flush=True)
        save_state(state_path, state)
    save_state(state_path, state)
    paper_report.write(out, paper_report.render(state, size))
    line = not_measured_line(state["arms"])
    if line:
        print(line, flush=True)
    print(f"wrote {out} and {state_path}", flush=True)
    return 1 if line else 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="CIFAR-10 as a JPEG tar or image folder (train/ and test/)")
    p.add_argument("--out", help="the page (default docs/results-gpu.md; the JSON of kept arms beside it)")
    p.add_argument("--runs", default=os.path.join(ROOT, "runs", "gpu-paper"), help="the arms' run directories")
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: every code path, no GPU numbers")
    p.add_argument("--time-limit", type=float, default=480, help="seconds for the whole column (default 480)")
    p.add_argument("--empty", action="store_true", help="write the page as before any GPU has run it")
    a = p.parse_args(argv)
    if a.time_limit <= 0:
        p.error(f"--time-limit must be > 0. Received: {a.time_limit}")
    if a.empty:
        out = a.out or os.path.join(ROOT, "docs", "results-gpu.md")
        paper_report.write(out, paper_report.render(None, SIZES["full"]))
        print(f"wrote {out} (no GPU has run it)")
        return 0
    lacking = [m for m in ("jax", "keras", "keras_sngm", "keras_sngm_trainers", "PIL", "tensorboard")
               if importlib.util.find_spec(m) is None]
    if lacking:
        p.error(f"this Python ({sys.executable}) lacks {', '.join(lacking)}. Offline, install them from the folder "
                "`make wheelhouse` writes (README: GPU hosts with their own JAX or PyTorch)")
    if not os.path.exists(a.data):
        p.error(f"--data {a.data!r} does not exist: CIFAR-10 as a JPEG tar (cifar10/{{train,test}}/<class>/*.jpg)")
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
