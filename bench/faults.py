"""Faults over whole runs, through the real CLI: does a run that is killed again and again
end where an uninterrupted run ends, and how much work does each fault cost?

1. SIGKILL (no warning: a node lost, an OOM kill) at `--kills` seeded random updates of
   one run, each followed by `sngm-train ... --resume`; the finished run's weights are
   compared with an uninterrupted run's, and the work lost per kill is the updates done
   again (those since the last checkpoint, `--ckpt-every-steps`).
2. SIGTERM (a preemption with notice) to `horovodrun -np 2` at `--preemptions` seeded
   random updates, each followed by a resume under horovodrun; the work lost is the
   updates done before the signal that the checkpoint does not hold (0 when the clean
   stop works), and the seconds from the signal to the job's exit.

    .venv/bin/python bench/faults.py --kills 20 --preemptions 5
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
sys.path.insert(0, ROOT)

from keras_sngm_trainers import checkpoint  # noqa: E402

# 8 updates an epoch, 10 epochs; every update logged (the kill points are read from it).
FLAGS = ["resnet", "--dataset", "synthetic", "--depth", "8", "--train-subset", "256", "--num-classes", "4",
         "--batch-size", "32", "--micro-batch", "16", "--lr", "0.1", "--seed", "7", "--deterministic",
         "--diagnostics-every", "0", "--log-every", "1", "--epochs", "10"]
TOTAL = 80


def env():
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], "PYTHONPATH": ROOT,
            "TF_CPP_MIN_LOG_LEVEL": "2"}


def weights(path):
    import h5py

    out = []
    with h5py.File(os.path.join(path, "model.weights.h5")) as f:
        f.visititems(lambda name, obj: out.append(np.asarray(obj[()])) if hasattr(obj, "shape") else None)
    return out


def updates_in(path):
    """The updates a checkpoint holds (8 an epoch)."""
    state = json.load(open(os.path.join(path, "state.json")))
    return state["epoch"] * 8 + state["step_in_epoch"]


def last_update(log):
    """The newest update a progress line reports (0: none yet)."""
    seen = [int(line.split(" update ")[1].split("/")[0]) for line in open(log).read().splitlines()
            if " update " in line and "/" in line.split(" update ")[1][:6]]
    return seen[-1] if seen else 0


def start(cmd, log):
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_until(proc, log, update, limit=600):
    deadline = time.time() + limit
    while last_update(log) < update:
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"the run ended or stalled before update {update}: {open(log).read()[-2000:]}")
        time.sleep(0.01)
    return last_update(log)


def compare(a, b):
    wa, wb = weights(a), weights(b)
    return max(float(np.max(np.abs(x - y))) for x, y in zip(wa, wb)), all(np.array_equal(x, y) for x, y in zip(wa, wb))


def sigkills(work, kills, every, rng):
    sngm = os.path.join(BIN, "sngm-train")
    ref = os.path.join(work, "kill-ref")
    subprocess.run([sngm, *FLAGS, "--no-verbose", "--logdir", ref], cwd=ROOT, env=env(), check=True,
                   capture_output=True)
    run = os.path.join(work, "kill-run")
    points = sorted(rng.choice(np.arange(2, TOTAL), size=kills, replace=False).tolist())
    lost, restarts, t0 = [], 0, time.perf_counter()
    for i, point in enumerate(points):
        held = updates_in(checkpoint.latest(run)) if checkpoint.latest(run) else 0
        if held >= point:  # already past it after the previous resume's progress: move the point on
            point = held + 1
        log = os.path.join(work, f"kill-{i}.log")
        proc = start([sngm, *FLAGS, "--ckpt-every-steps", str(every), "--logdir", run, "--resume"], log)
        at = wait_until(proc, log, point)
        proc.kill()
        proc.wait()
        restarts += 1
        now = checkpoint.latest(run)
        lost.append(at - (updates_in(now) if now else 0))  # updates to do again after this kill
    final = subprocess.run([sngm, *FLAGS, "--ckpt-every-steps", str(every), "--logdir", run, "--resume"], cwd=ROOT,
                           env=env(), capture_output=True, text=True)
    assert final.returncode == 0, final.stdout[-2000:]
    diff, same = compare(os.path.join(ref, "ckpt-00010"), os.path.join(run, "ckpt-00010"))
    return {"kills": restarts, "ckpt_every_steps": every, "kill_points": points, "lost_updates": lost,
            "max_abs_weight_diff": diff, "identical": same, "seconds": time.perf_counter() - t0}


def sigterms(work, preemptions, rng):
    hvd = [os.path.join(BIN, "horovodrun"), "--gloo", "-np", "2", "-H", "localhost:2", os.path.join(BIN, "sngm-train")]
    flags = FLAGS  # 2 workers x 1 micro-batch of 16 per update
    ref = os.path.join(work, "term-ref")
    subprocess.run([*hvd, *flags, "--no-verbose", "--logdir", ref], cwd=ROOT, env=env(), check=True,
                   capture_output=True)
    run = os.path.join(work, "term-run")
    points = sorted(rng.choice(np.arange(3, TOTAL - 5), size=preemptions, replace=False).tolist())
    rows = []
    for i, point in enumerate(points):
        held = updates_in(checkpoint.latest(run)) if checkpoint.latest(run) else 0
        point = max(point, held + 2)
        log = os.path.join(work, f"term-{i}.log")
        proc = start([*hvd, *flags, "--logdir", run, "--resume"], log)
        at = wait_until(proc, log, point)
        t = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        seconds = time.perf_counter() - t
        saved = updates_in(checkpoint.latest(run))
        rows.append({"signal_at_update": at, "checkpoint_update": saved, "lost_updates": max(at - saved, 0),
                     "seconds_to_exit": seconds, "horovodrun_exit": code,
                     "clean": "Exit code: 143" in open(log).read()})
    final = subprocess.run([*hvd, *flags, "--logdir", run, "--resume"], cwd=ROOT, env=env(), capture_output=True,
                           text=True)
    assert final.returncode == 0, final.stdout[-2000:]
    diff, same = compare(os.path.join(ref, "ckpt-00010"), os.path.join(run, "ckpt-00010"))
    return {"preemptions": rows, "max_abs_weight_diff": diff, "identical": same}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--ckpt-every-steps", type=int, default=4)
    parser.add_argument("--preemptions", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    work = tempfile.mkdtemp(prefix="sngm-faults-")
    try:
        out = {"sigkill": sigkills(work, args.kills, args.ckpt_every_steps, rng)}
        if args.preemptions and shutil.which("horovodrun", path=BIN):
            out["sigterm"] = sigterms(work, args.preemptions, rng)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    k = out["sigkill"]
    print(f"\n| SIGKILL then --resume | value |\n| --- | --- |\n| kills | {k['kills']} (at updates "
          f"{', '.join(map(str, k['kill_points']))} of {TOTAL}) |\n| checkpoint every | {k['ckpt_every_steps']} updates |"
          f"\n| updates lost per kill | mean {np.mean(k['lost_updates']):.2f}, max {max(k['lost_updates'])} |"
          f"\n| final weights vs uninterrupted | {'identical' if k['identical'] else 'differ'} (max abs diff "
          f"{k['max_abs_weight_diff']:.3g}) |\n| wall time | {k['seconds']:.0f} s |")
    if "sigterm" in out:
        t = out["sigterm"]
        print("\n| SIGTERM to horovodrun -np 2 | signal at update | checkpoint at update | updates lost | seconds to "
              "exit | workers exit 143 |\n| --- | --- | --- | --- | --- | --- |")
        for i, r in enumerate(t["preemptions"], 1):
            print(f"| {i} | {r['signal_at_update']} | {r['checkpoint_update']} | {r['lost_updates']} | "
                  f"{r['seconds_to_exit']:.1f} | {'yes' if r['clean'] else 'no'} |")
        print(f"\nfinal weights vs an uninterrupted horovodrun -np 2 run: "
              f"{'identical' if t['identical'] else 'differ'} (max abs diff {t['max_abs_weight_diff']:.3g})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
