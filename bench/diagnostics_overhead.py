"""Cost of the large-batch diagnostics on a training step, as a ratio (one run, round-robin).

ResNet-20 on synthetic CIFAR-size data, per-process batch 128 as 2 accumulated
micro-batches of 64 (so the noise scale has two batch sizes), SNGM and LARS inside
keras_sngm_trainers.distributed.DistributedOptimizer, timed with diagnostics:
  off      - no noise scale, diagnostics_every=0;
  every 50 - the trainers' default (norms refreshed every 50 updates, noise scale always);
  every 1  - the worst case (momentum and update norms recomputed every update).

    .venv/bin/python bench/diagnostics_overhead.py [--rounds 15]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_sngm import LARS, SNGM  # noqa: E402
from keras_sngm_trainers.distributed import DistributedOptimizer  # noqa: E402
from keras_sngm_trainers.models.resnet import cifar_resnet  # noqa: E402

MICRO, K = 64, 2
SETTINGS = {"off": (0, None), "every 50": (50, MICRO), "every 1": (1, MICRO)}


def make(cls, every, micro_batch_size):
    keras.utils.set_random_seed(0)
    model = cifar_resnet(20)
    opt = DistributedOptimizer(cls(0.1, diagnostics_every=every), accumulation_steps=K, micro_batch_size=micro_batch_size)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(MICRO, 32, 32, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, MICRO))

    @tf.function
    def micro_step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    def update():  # one optimizer update = K micro-batches
        for _ in range(K):
            micro_step()
        return model.trainable_variables[0].numpy()[0, 0, 0, 0]

    for _ in range(3):
        update()
    return update


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="timed updates per cell (median)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; ResNet-20, batch {MICRO * K} = {K} x {MICRO}; median of {args.rounds} updates")
    print("| optimizer | diagnostics | ms / update | ratio to off |")
    print("| --- | --- | ---: | ---: |")
    for cls in (SNGM, LARS):
        cells = {name: make(cls, *cfg) for name, cfg in SETTINGS.items()}
        times = {name: [] for name in cells}
        for _ in range(args.rounds):
            for name, run in cells.items():
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
        base = np.median(times["off"])
        for name in cells:
            t = np.median(times[name])
            print(f"| {cls.__name__} | {name} | {1e3 * t:.1f} | {t / base:.3f} |", flush=True)


if __name__ == "__main__":
    main()
