"""Milliseconds per optimizer update over a ResNet-50-like set of ~19M parameters.

Keras SGD(momentum=0.9), SNGM, BlockSNGM and LARS step on the same variables and the
same fixed gradients, each inside a tf.function, measured round-robin in one run:
without XLA, with the optimizer's own XLA update (SGD: its apply compiled with XLA),
and with the whole apply under XLA (as inside model.compile(jit_compile=True)). Prints each one's ratio to SGD (same XLA setting) and its effective
bandwidth: the bytes its update must move at least, per second.

    .venv/bin/python bench/optimizer_step.py [--repeats 30]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_sngm import LARS, SNGM, BlockSNGM  # noqa: E402

# Floats read + written per parameter by each update (4 bytes each):
# SGD: read g, m, w; write m, w. SNGM/BlockSNGM: + one more read of g for the norm.
# LARS: + one more read of g and of w for the two per-variable norms.
FLOATS_PER_PARAM = {"SGD": 5, "SNGM": 6, "BlockSNGM": 6, "LARS": 7}


def resnet50_like_shapes(last_stage_blocks=2, classes=1000):
    """Conv kernels and BN gamma/beta of a ResNet-50 (bottlenecks [3, 4, 6, last])."""
    shapes = [(7, 7, 3, 64), (64,), (64,)]
    cin = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, last_stage_blocks)):
        for b in range(blocks):
            for k, ci, co in ((1, cin, width), (3, width, width), (1, width, 4 * width)):
                shapes += [(k, k, ci, co), (co,), (co,)]
            if b == 0:
                shapes += [(1, 1, cin, 4 * width), (4 * width,), (4 * width,)]
            cin = 4 * width
    return shapes + [(cin, classes), (classes,)]


# (row label, optimizer's own jit_compile, XLA around the whole apply as in
# model.compile(jit_compile=True)). Keras SGD has no XLA option of its own, so its
# "own XLA" is the XLA-compiled apply.
SETTINGS = [("XLA off", False, False), ("own XLA update", True, False), ("whole step in XLA", True, True)]
NAMES = ("SGD", "SNGM", "BlockSNGM", "LARS")


def make_step(name, own_jit, outer_jit, shapes, grads):
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in shapes]
    if name == "SGD":
        opt = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)
        outer_jit = outer_jit or own_jit
    else:
        opt = {"SNGM": SNGM, "BlockSNGM": BlockSNGM, "LARS": LARS}[name](learning_rate=0.1, momentum=0.9, jit_compile=own_jit)
    opt.build(variables)
    step = tf.function(lambda: opt.apply(grads, variables), jit_compile=outer_jit)

    def run():
        step()
        return variables[0].numpy()[0, 0, 0, 0]  # wait for the update to land

    for _ in range(3):
        run()
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (median reported)")
    args = parser.parse_args()
    shapes = resnet50_like_shapes()
    n_params = sum(int(np.prod(s)) for s in shapes)
    rng = np.random.default_rng(1)
    grads = [tf.constant(rng.normal(size=s).astype("float32")) for s in shapes]
    print(f"{len(shapes)} variables, {n_params / 1e6:.1f}M parameters, float32; "
          f"{os.cpu_count()} CPUs; devices: {[d.device_type for d in tf.config.list_physical_devices()]}")
    cells = {(label, name): make_step(name, own, outer, shapes, grads) for label, own, outer in SETTINGS for name in NAMES}
    times = {key: [] for key in cells}
    for _ in range(args.repeats):  # round-robin, so slow drifts of the machine hit every cell alike
        for key, run in cells.items():
            t0 = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t0)
    print("| setting | optimizer | ms / update | ratio to SGD | effective GB/s |")
    print("| --- | --- | ---: | ---: | ---: |")
    for label, _, _ in SETTINGS:
        base = 1e3 * float(np.median(times[(label, "SGD")]))
        for name in NAMES:
            ms = 1e3 * float(np.median(times[(label, name)]))
            gbs = FLOATS_PER_PARAM[name] * 4 * n_params / (ms * 1e-3) / 1e9
            print(f"| {label} | {name} | {ms:.1f} | {ms / base:.2f} | {gbs:.1f} |")


if __name__ == "__main__":
    main()
