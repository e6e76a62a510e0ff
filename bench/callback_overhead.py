"""Cost of keras_sngm.callbacks.SNGMDiagnostics on a user's `model.fit`, as ratios (one run,
round-robin: each round times one `fit` of every cell, starting at the next cell).

ResNet-20 on synthetic CIFAR-size data, SNGM with gradient_accumulation_steps=4 (micro-
batches of 32, so the noise scale has its k-1 = 3 micro-batch gradients), 100 updates per
timed fit (so the default interval writes once per fit), under the backend KERAS_BACKEND names:
  no callback    - the plain fit;
  update_freq=100 - the callback's default (norms, noise scale and layout every 100 updates);
  update_freq=10  - ten times as often;
  update_freq=1   - the worst case: the accumulator read on 3 of every 4 micro-batches.

    .venv/bin/python bench/callback_overhead.py [--rounds 6] [--updates 100]
    KERAS_BACKEND=jax .venv/bin/python bench/callback_overhead.py
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sngm  # noqa: E402
from keras_sngm.callbacks import SNGMDiagnostics  # noqa: E402

MICRO, K = 32, 4
CELLS = {"no callback": None, "update_freq=100": 100, "update_freq=10": 10, "update_freq=1": 1}


def resnet20():
    """The CIFAR ResNet-20 (He et al. 2016, 3 stages of 3 basic blocks), in plain Keras
    layers so that it builds on every backend."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    for stage, width in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage and not block else 1
            y = keras.layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False)(x)
            y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
            y = keras.layers.BatchNormalization()(keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(y))
            if stride > 1 or x.shape[-1] != width:
                x = keras.layers.BatchNormalization()(keras.layers.Conv2D(width, 1, strides=stride, use_bias=False)(x))
            x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, x)


def make(update_freq, updates, logdir):
    keras.utils.set_random_seed(0)
    model = resnet20()
    model.compile(optimizer=keras_sngm.SNGM(0.1, gradient_accumulation_steps=K),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(MICRO * K * updates, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, len(x))
    callbacks = [] if update_freq is None else [SNGMDiagnostics(logdir, update_freq=update_freq, batch_size=MICRO)]

    def run():
        model.fit(x, y, batch_size=MICRO, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)

    run()  # tracing and compilation
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="timed fits per cell (median)")
    parser.add_argument("--updates", type=int, default=100, help="optimizer updates per timed fit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cells = {name: make(freq, args.updates, os.path.join(tmp, str(freq))) for name, freq in CELLS.items()}
        times = {name: [] for name in cells}
        names = list(cells)
        for r in range(args.rounds):  # round-robin, each round starting at the next cell (no position bias)
            for name in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                cells[name]()
                times[name].append(time.perf_counter() - t0)
    backend = keras.backend.backend()
    print(f"{os.cpu_count()} CPUs, Keras {keras.__version__} on {backend}; ResNet-20, SNGM, {K} x {MICRO} per update, "
          f"{args.updates} updates per fit; median of {args.rounds} fits")
    print("| backend | callback | ms / update | ratio to no callback |")
    print("| --- | --- | ---: | ---: |")
    base = np.median(times["no callback"])
    for name in cells:
        t = np.median(times[name])
        print(f"| {backend} | {name} | {1e3 * t / args.updates:.1f} | {t / base:.3f} |", flush=True)


if __name__ == "__main__":
    main()
