"""The JAX engine's `Accumulation` stepped the way Keras' JAX train step steps it
(`stateless_apply` inside one `jax.jit`), against NumPy: 2 then 3 micro-batches per update
with one compiled step, SNGM on the mean gradient at the rate of an examples-following
schedule, the noise-scale averages, the examples count; then float16's loss scale skipping
an overflowed update. Prints one JSON line (tests/test_jax_engine.py runs it)."""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sngm import SNGM  # noqa: E402
from keras_sngm_trainers.accumulation import Accumulation  # noqa: E402
from keras_sngm_trainers.lr_scaling import ExamplesSchedule  # noqa: E402

TRACES = []


def stepper(opt, v):
    """One jitted train-step update, as Keras' JAX trainer makes it: state in, state out."""
    @jax.jit
    def step(opt_values, grad, weights):
        TRACES.append(1)  # (runs only while tracing)
        return opt.stateless_apply(opt_values, [grad], weights)

    def run(grad):
        weights, values = step([x.value for x in opt.variables], grad, [v.value])
        v.assign(weights[0])
        for x, value in zip(opt.variables, values):
            x.assign(value)
    return run


def adaptive_run():
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=5).astype("float32")
    v = keras.Variable(w0.copy())
    decay = keras.optimizers.schedules.PolynomialDecay(0.1, 20, 0.01, power=2.0)
    schedule = ExamplesSchedule(decay, ref_batch=8)  # updates of 2 micro-batches of 4
    opt = Accumulation(SNGM(learning_rate=schedule, momentum=0.0), examples_per_micro=4, accumulation_steps=2,
                       noise_ema=0.5)
    schedule.bind(opt)
    opt.build([v])
    step = stepper(opt, v)
    w, g2_ema, tr_ema, weight, examples = w0.astype(np.float64), 0.0, 0.0, 0.0, 0
    for k, updates in ((2, 2), (3, 2)):
        opt.set_accumulation_steps(k)
        for _ in range(updates):
            micro = rng.normal(size=(k, 5)).astype("float32")
            for g in micro:
                step(g)
            mean = micro.astype(np.float64).mean(0)
            t = min(examples / 8, 20)  # the schedule at the examples before the update, in updates of 8
            lr = (0.1 - 0.01) * (1 - t / 20) ** 2 + 0.01
            w = w - lr * mean / np.linalg.norm(mean)
            small, big, bs, bb = np.mean(np.sum(micro.astype(np.float64) ** 2, 1)), np.sum(mean ** 2), 4, 4 * k
            g2 = (bb * big - bs * small) / (bb - bs)
            tr = (small - big) / (1 / bs - 1 / bb)
            g2_ema, tr_ema, weight = 0.5 * g2_ema + 0.5 * g2, 0.5 * tr_ema + 0.5 * tr, 0.5 * weight + 0.5
            examples += 4 * k
    got = opt.noise_scale()
    step(np.ones(5, "float32"))
    try:
        opt.set_accumulation_steps(2)
        inside = "no error"
    except ValueError as e:
        inside = str(e)
    return {"max_dw": float(np.abs(np.asarray(v.value, np.float64) - w).max()), "w_scale": float(np.abs(w).max()),
            "g2": [got["g2"], g2_ema / weight], "trace": [got["trace"], tr_ema / weight],
            "estimates": got["estimates"], "batch": got["batch"], "examples": [opt.examples_seen(), examples],
            "updates": int(opt.iterations), "inside": inside}


def float16_run():
    """A loss scale of 2**15 and micro-batch gradients whose scaled sum overflows float32:
    the update is skipped (weights kept, schedule advanced), the scale halves, then a
    finite update steps on the unscaled mean."""
    v = keras.Variable(np.ones(3, "float32"))
    opt = Accumulation(SNGM(learning_rate=0.5, momentum=0.0), examples_per_micro=4, accumulation_steps=2,
                       dynamic_loss_scale=True)
    opt.build([v])
    step = stepper(opt, v)
    scale = 2.0 ** 15
    huge = np.full(3, 3e38, "float32")  # (already scaled: the sum of two overflows)
    step(huge)
    step(huge)
    skipped = {"w": np.asarray(v.value).tolist(), "scale": float(opt.loss_scale.value),
               "skipped": int(opt.skipped_steps.value), "updates": int(opt.iterations)}
    g = np.array([3.0, 0.0, 4.0], "float32")
    step(g * (scale / 2))
    step(g * (scale / 2))
    return {"after_skip": skipped, "w": np.asarray(v.value).tolist(), "expected_w": (1 - 0.5 * g / 5).tolist()}


if __name__ == "__main__":
    out = {"adaptive": adaptive_run()}
    traced = len(TRACES)
    out["float16"] = float16_run()
    out["traces"] = [traced, len(TRACES) - traced]
    print(json.dumps(out))
