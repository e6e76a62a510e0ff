"""What `--batch-size auto` costs and saves in wall time, side by side in one run.

The same `sngm-train` run (two-convolution net, CIFAR-size synthetic images, micro-batches
of 64) three ways, round-robin so that the machine's load falls on all alike:

  - fixed:    --batch-size 128;
  - segments: --batch-size auto --batch-min 128 --batch-max 128: the batch cannot move, so
              the updates are the fixed run's; what differs is the machinery (a `fit` call
              per stretch between decisions and per epoch's end);
  - growing:  --batch-size auto 128 -> 1024 with --adapt-factor 50 (the batch doubles at
              each decision once the estimate is trusted): fewer updates.

It prints each one's median wall time, updates, examples/s and its ratio to the fixed run.
With `--engine jax` it also counts the train step's XLA compilations of each run and their
seconds (JAX's own compile log): what a batch change costs in compile time.

    .venv/bin/python bench/adaptive_batch.py [--repeats 3] [--epochs 4] [--adapt-every 50] [--engine jax]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _common import round_robin  # noqa: E402

ROOT = os.path.dirname(HERE)
COMPILED = re.compile(r"Finished XLA compilation of jit\(train_step\) in ([0-9.e+-]+) sec")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--adapt-every", type=int, default=50)
    parser.add_argument("--engine", choices=("horovod", "jax"), default="horovod")
    args = parser.parse_args()
    exe = os.path.join(os.path.dirname(sys.executable), "sngm-train")
    common = ["resnet", "--dataset", "synthetic", "--arch", "twoconv", "--train-subset", "5950", "--num-classes", "10",
              "--micro-batch", "64", "--lr", "0.05", "--epochs", str(args.epochs), "--no-verbose",
              "--engine", args.engine]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if args.engine == "jax":
        env.update(KERAS_BACKEND="jax", JAX_LOG_COMPILES="1")
    auto = ["--batch-size", "auto", "--batch-min", "128", "--adapt-every", str(args.adapt_every)]
    cells = {"fixed": ["--batch-size", "128"],
             "segments": auto + ["--batch-max", "128"],
             "growing": auto + ["--batch-max", "1024", "--adapt-factor", "50"]}
    tmp = tempfile.mkdtemp(prefix="bench-adaptive-")
    finals, compiles = {}, {}

    def runner(key):
        def run():
            d = os.path.join(tmp, key)
            proc = subprocess.run([exe, *common, *cells[key], "--logdir", d], cwd=ROOT, check=True, capture_output=True,
                                  text=True, env=env)
            seconds = [float(x) for x in COMPILED.findall(proc.stderr)]
            compiles[key] = (len(seconds), sum(seconds))
            finals[key] = json.load(open(os.path.join(d, "final.json")))
            subprocess.run(["rm", "-rf", d], check=True)
        return run

    times = round_robin({key: runner(key) for key in cells}, args.repeats)
    base = statistics.median(times["fixed"])
    print(f"{args.epochs} epochs of 5,950 images, decisions every {args.adapt_every} updates, median of "
          f"{args.repeats} (each run includes ~10 s of process start and tracing):\n")
    jax = args.engine == "jax"
    print("| run | updates | examples | final batch | wall s | examples/s | wall vs fixed |"
          + (" train-step compiles | their s |" if jax else ""))
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if jax else ""))
    for key in cells:
        t, f = statistics.median(times[key]), finals[key]
        print(f"| {key} | {f['updates']} | {f['examples']} | {f.get('final_batch_size', 128)} | {t:.1f} | "
              f"{f['examples'] / t:.0f} | {t / base:.2f} |"
              + (f" {compiles[key][0]} | {compiles[key][1]:.1f} |" if jax else ""))


if __name__ == "__main__":
    main()
