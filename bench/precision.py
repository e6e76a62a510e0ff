"""Training-step time of each `--precision`, with and without `--xla`, side by side in
one run.

ResNet-20 (CIFAR, 32x32) and DeepFM on synthetic data, micro-batch 128 / 1024, SNGM,
one process: `train_on_batch` timed round-robin over float32, mixed_float16 and
mixed_bfloat16, each with the trainers' XLA-compiled forward/backward pass
(`trainers/xla_step.py`) and without (median of --steps, after 3 warm-up steps). Prints
each cell's ratio to float32 without XLA. On a GPU host the same command gives the GPU
numbers.

    .venv/bin/python bench/precision.py [--steps 20]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from _common import round_robin  # noqa: E402

from keras_sngm import SNGM  # noqa: E402
from keras_sngm_trainers import xla_step  # noqa: E402
from keras_sngm_trainers.models import deepfm, resnet  # noqa: E402

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
CELLS = [(p, xla) for p in POLICIES for xla in (False, True)]


def resnet_step(policy, xla, batch=128, depth=20):
    keras.mixed_precision.set_global_policy(policy)
    model = resnet.build(depth, 10, 32)
    model.compile(optimizer=SNGM(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)
    if xla:
        xla_step.compile_forward_backward(model)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(batch, 32, 32, 3)).astype("float32"), rng.integers(0, 10, batch)
    return lambda: model.train_on_batch(x, y)


def deepfm_step(policy, xla, batch=1024, hash_space=2**18, hidden=(400, 400, 400)):
    keras.mixed_precision.set_global_policy(policy)
    model = deepfm.deepfm(hash_space, 16, hidden)
    model.compile(optimizer=SNGM(0.1), loss=keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=False)
    if xla:
        xla_step.compile_forward_backward(model)
    rng = np.random.default_rng(0)
    x = {"dense": rng.normal(size=(batch, 13)).astype("float32"),
         "categorical": rng.integers(0, hash_space, (batch, 26)).astype("int64")}
    y = rng.integers(0, 2, (batch, 1)).astype("float32")
    return lambda: model.train_on_batch(x, y)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    print(f"{os.cpu_count()} CPUs; avx512_bf16: {'avx512_bf16' in flags}; amx_bf16: {'amx_bf16' in flags}; "
          f"devices: {[d.device_type for d in tf.config.list_physical_devices()]}")
    print("| model | precision | --xla | ms / step | examples/s | ratio to float32 without XLA |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for name, make, batch in (("ResNet-20", resnet_step, 128), ("DeepFM", deepfm_step, 1024)):
        steps = {cell: make(*cell) for cell in CELLS}
        for run in steps.values():
            for _ in range(3):
                run()
        times = round_robin(steps, args.steps)
        base = np.median(times[("float32", False)])
        for cell in CELLS:
            ms = 1e3 * np.median(times[cell])
            print(f"| {name} | {cell[0]} | {'on' if cell[1] else 'off'} | {ms:.1f} | {batch / ms * 1e3:.0f} | "
                  f"{np.median(times[cell]) / base:.2f} |")
    keras.mixed_precision.set_global_policy("float32")


if __name__ == "__main__":
    main()
