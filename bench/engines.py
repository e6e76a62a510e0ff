"""The JAX engine's cost, side by side in one run: examples/s of `sngm-train resnet
--engine jax` against a plain `model.fit` of the same model, optimizer and batch on the JAX
backend (target: at least 0.97x), and against the Horovod engine on 1 and 2 processes.

Every cell is a fresh process (2 processes: `sngm-train launch -np 2` or `horovodrun -np
2`) timed by the trainers' own clock (`keras_sngm_trainers.timing.UpdateTimer`, the median
update after the first ones), in rounds, so that the machine's drift hits every cell alike.

    python bench/engines.py [--rounds 2] [--depth 20] [--batch 128] [--updates 24]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)

# The same model, optimizer and batch as `sngm-train resnet --dataset synthetic --engine jax`
# builds, in a plain fit of NumPy arrays, timed by the same callback.
PLAIN_FIT = r'''
import json, sys, types
import keras, numpy as np
from keras_sngm import SNGM
from keras_sngm_trainers import timing
from keras_sngm_trainers.data import arrays, images
from keras_sngm_trainers.models import resnet
run_dir, depth, batch, updates = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
keras.utils.set_random_seed(0)
x, y = images.synthetic(batch * updates, 32, 10, 0)
model = resnet.build(depth, 10, 32)
model.compile(optimizer=SNGM(0.1, momentum=0.9, weight_decay=1e-4, diagnostics_every=0), jit_compile=True,
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
timer = timing.UpdateTimer(run_dir, types.SimpleNamespace(k=1))
model.fit(arrays.normalize(x, 10), y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
'''


def examples_per_second(run_dir, batch):
    with open(os.path.join(run_dir, "timing.json")) as f:
        timing = json.load(f)
    seconds = [v["update_seconds"] for v in timing["by_micro_batches"].values()]
    return batch / statistics.median(seconds)


def cells(args, scratch):
    """{name: command}; each writes its timing.json into scratch/name."""
    flags = ["resnet", "--dataset", "synthetic", "--depth", str(args.depth), "--train-subset",
             str(args.batch * args.updates), "--batch-size", str(args.batch), "--epochs", "1", "--optimizer", "sngm",
             "--lr", "0.1", "--diagnostics-every", "0", "--log-every", "1000", "--no-verbose"]
    train = os.path.join(BIN, "sngm-train")
    out = {"plain model.fit (JAX)": [sys.executable, "-c", PLAIN_FIT, os.path.join(scratch, "plain"), str(args.depth),
                                     str(args.batch), str(args.updates)]}
    for n in (1, 2):
        micro = ["--micro-batch", str(args.batch // n)]
        jax = [train, *flags, *micro, "--engine", "jax"]
        horovod = [train, *flags, *micro, "--engine", "horovod"]
        out[f"JAX engine, {n} process{'es' if n > 1 else ''}"] = (jax if n == 1 else [train, "launch", "-np", "2", *jax])
        if n == 1 or shutil.which("horovodrun", path=BIN):
            out[f"Horovod engine, {n} process{'es' if n > 1 else ''}"] = (
                horovod if n == 1 else [os.path.join(BIN, "horovodrun"), "--gloo", "-np", "2", "-H", "localhost:2",
                                        *horovod])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--updates", type=int, default=24)
    args = p.parse_args(argv)
    scratch = tempfile.mkdtemp(prefix="bench-engines-")
    table = cells(args, scratch)
    rates = {name: [] for name in table}
    for _ in range(args.rounds):
        for i, (name, command) in enumerate(table.items()):
            run_dir = os.path.join(scratch, f"cell{i}")
            shutil.rmtree(run_dir, ignore_errors=True)
            os.makedirs(run_dir)
            if "plain" in name:
                command = command[:3] + [run_dir] + command[4:]
            else:
                command = command + ["--logdir", run_dir]
            env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2",
                   "KERAS_BACKEND": "tensorflow" if "Horovod" in name else "jax"}
            proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
            rates[name].append(examples_per_second(run_dir, args.batch))
    shutil.rmtree(scratch, ignore_errors=True)
    best = {name: max(values) for name, values in rates.items()}
    plain = best["plain model.fit (JAX)"]
    print(f"ResNet-{args.depth}, 32x32 synthetic images, SNGM, global batch {args.batch}, best of {args.rounds} rounds "
          f"(median update of {args.updates})\n")
    print("| run | examples/s | ratio to plain model.fit (JAX) | ratio to the Horovod engine, same processes |")
    print("| --- | ---: | ---: | ---: |")
    for name, rate in best.items():
        other = name.replace("JAX engine", "Horovod engine")
        versus = f"{rate / best[other]:.2f}" if other != name and other in best else ""
        print(f"| {name} | {rate:.0f} | {rate / plain:.3f} | {versus} |")


if __name__ == "__main__":
    main()
