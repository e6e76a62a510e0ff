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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from _common import FLOATS_PER_PARAM, resnet50_like_shapes, round_robin  # noqa: E402

from keras_sngm import LARS, SNGM, BlockSNGM  # noqa: E402

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
    times = round_robin(cells, args.repeats)
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
