"""Milliseconds per optimizer update on the JAX backend: Keras SGD(momentum=0.9), SNGM,
BlockSNGM and LARS on the ResNet-50-like variables of bench/optimizer_step.py, each as
one `jax.jit`-compiled `stateless_apply` (what `model.fit` runs inside its train step),
measured round-robin in one run. Prints each one's ratio to SGD.

    KERAS_BACKEND=jax .venv/bin/python bench/optimizer_step_jax.py [--repeats 30]
"""

import argparse
import os

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from _common import FLOATS_PER_PARAM, resnet50_like_shapes, round_robin  # noqa: E402

from keras_sngm import LARS, SNGM, BlockSNGM  # noqa: E402


def make_step(name, shapes, grads):
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in shapes]
    opt = {"SGD": lambda: keras.optimizers.SGD(0.1, momentum=0.9), "SNGM": lambda: SNGM(0.1),
           "BlockSNGM": lambda: BlockSNGM(0.1), "LARS": lambda: LARS(0.1)}[name]()
    opt.build(variables)

    def update(state, g):  # (weights, optimizer state) in and out in the same order, as Keras' train step
        return opt.stateless_apply(state[1], g, state[0])

    # Donated as model.fit donates its state. (Donating the arguments of `stateless_apply` itself,
    # whose outputs come in another order than its inputs, made XLA copy: 2.6-4x slower on this CPU.)
    step = jax.jit(update, donate_argnums=0)
    state = [([v.value for v in variables], [v.value for v in opt.variables])]

    def run():
        state[0] = step(state[0], grads)
        jax.block_until_ready(state[0])

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
    grads = [jax.numpy.asarray(rng.normal(size=s).astype("float32")) for s in shapes]
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}: {len(shapes)} variables, {n_params / 1e6:.1f}M parameters")
    names = ("SGD", "SNGM", "BlockSNGM", "LARS")
    cells = {name: make_step(name, shapes, grads) for name in names}
    times = round_robin(cells, args.repeats)
    base = 1e3 * float(np.median(times["SGD"]))
    print("| optimizer (JAX, jitted) | ms / update | ratio to SGD | effective GB/s |")
    print("| --- | ---: | ---: | ---: |")
    for name in names:
        ms = 1e3 * float(np.median(times[name]))
        print(f"| {name} | {ms:.1f} | {ms / base:.2f} | {FLOATS_PER_PARAM[name] * 4 * n_params / (ms * 1e-3) / 1e9:.1f} |")


if __name__ == "__main__":
    main()
