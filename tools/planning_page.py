"""Measures what docs/planning.md validates the planner on, then writes the page.

    make planning      (python tools/planning_page.py [--out runs/planning] [--data-dir PATH/cifar10-jpeg.tar])

Trains (each run once: a run directory that has its results is kept, so an interrupted
call resumes) the reference and check runs of two tasks, times Horovod's allreduce under
`horovodrun -np 2` on loopback, runs `sngm-train plan` on them, and writes docs/planning.md
with every command and output. About 30 minutes on 2 cores.
"""

import argparse
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
HVD2 = ["horovodrun", "--gloo", "-np", "2", "-H", "localhost:2"]

# cpu-cifar's net, data and schedule (sngm-train study --preset cpu-cifar), micro-batches of 64
CIFAR = ["resnet", "--arch", "twoconv", "--dataset", "cifar10", "--momentum", "0.9", "--weight-decay", "1e-4",
         "--train-subset", "7000", "--test-subset", "4000", "--validation-split", "0.15", "--epochs", "37",
         "--schedule", "cosine", "--lr-per-epoch", "--micro-batch", "64", "--no-verbose"]
# cpu-ctr's DeepFM (embeddings of 4, DNN 256-128, 131,072 hash buckets) on synthetic rows: times only
CTR = ["deepfm", "--data", "synthetic", "--train-rows", "262144", "--embedding-dim", "4", "--hidden", "256", "128",
       "--hash-space", "131072", "--micro-batch", "512", "--optimizer", "sngm", "--lr", "0.01", "--epochs", "1",
       "--schedule", "constant", "--no-verbose"]
ONE = ["--threads", "1"]  # a worker as it runs beside another on this 2-core host


def runs(data_dir):
    """name -> (launcher, sngm-train arguments): the full runs (updates to a target), then
    two rounds of short timing runs, each round back to back on an otherwise idle host
    (the reference and the runs it predicts, minutes apart: this VM's speed drifts)."""
    cifar = CIFAR + ["--data-dir", data_dir]
    out = {
        "sngm-b128": ([], cifar + ONE + ["--optimizer", "sngm", "--batch-size", "128", "--lr", "0.0707"]),
        "sngm-b512": ([], cifar + ONE + ["--optimizer", "sngm", "--batch-size", "512", "--lr", "0.141"]),
        "sngm-auto": ([], cifar + ONE + ["--optimizer", "sngm", "--batch-size", "auto", "--batch-min", "128",
                                         "--batch-max", "1024", "--lr", "0.0707"]),
        "msgd-b128": ([], cifar + ONE + ["--optimizer", "msgd", "--batch-size", "128", "--lr", "0.0125"]),
        "msgd-b512": ([], cifar + ONE + ["--optimizer", "msgd", "--batch-size", "512", "--lr", "0.025"]),
        # ResNet-50 at ImageNet size for its gradient bytes (the worked example); a few updates
        "resnet50-bytes": ([], ["resnet", "--dataset", "synthetic", "--depth", "50", "--image-size", "224",
                                "--num-classes", "1000", "--train-subset", "32", "--batch-size", "16",
                                "--micro-batch", "8", "--stop-after-updates", "2", "--epochs", "1", "--no-verbose"]),
    }
    for r in ROUNDS:
        for name, (launcher, args) in timing_runs(cifar).items():
            out[f"{r}/{name}"] = (launcher, args)
    return out


ROUNDS = ("round1", "round2")


def timing_runs(cifar):
    """Short runs for update times: a reference per task at one thread, the others it predicts."""
    def sngm(batch, updates, threads=ONE):
        return cifar + threads + ["--optimizer", "sngm", "--batch-size", str(batch), "--lr", "0.0707",
                                  "--stop-after-updates", str(updates)]

    def ctr(batch, updates, threads=ONE):
        return CTR + threads + ["--batch-size", str(batch), "--stop-after-updates", str(updates)]

    return {
        "cifar-ref-b256": ([], sngm(256, 80)),
        "cifar-b128": ([], sngm(128, 100)),
        "cifar-b1024": ([], sngm(1024, 30)),
        "cifar-b256-2threads": ([], sngm(256, 80, [])),
        "cifar-b256-np2": (HVD2, sngm(256, 80, [])),
        "cifar-b1024-np2": (HVD2, sngm(1024, 30, [])),
        "ctr-ref-b2048": ([], ctr(2048, 60)),
        "ctr-b8192": ([], ctr(8192, 20)),
        "ctr-b2048-np2": (HVD2, ctr(2048, 60, [])),
        "ctr-b8192-np2": (HVD2, ctr(8192, 20, [])),
    }


def sh(cmd, log):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "a") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode


def train_all(out, data_dir):
    for name, (launcher, args) in runs(data_dir).items():
        round_dir = os.path.join(out, os.path.dirname(name))
        fit = os.path.join(round_dir, "allreduce-gloo-np2.json")
        if os.path.dirname(name) and not os.path.isfile(fit):  # each round starts with the allreduce
            print(f"timing the allreduce ({os.path.dirname(name)})", flush=True)
            if sh(HVD2 + ["sngm-train", "plan", "--measure-allreduce", "--out", fit], os.path.join(out, "train.log")):
                sys.exit(f"--measure-allreduce failed: see {out}/train.log")
        run_dir = os.path.join(out, name)
        if os.path.isfile(os.path.join(run_dir, "history.json")):
            continue
        print(f"training {name}", flush=True)
        rc = sh(launcher + ["sngm-train", *args, "--logdir", run_dir], os.path.join(out, "train.log"))
        if rc:
            sys.exit(f"{name} failed (exit {rc}): see {out}/train.log")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/planning")
    p.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar"))
    p.add_argument("--train-only", action="store_true")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    train_all(a.out, a.data_dir)
    if not a.train_only:
        from planning_doc import write  # noqa: the page's text, next to this file

        write(a.out, ROOT)


if __name__ == "__main__":
    main()
