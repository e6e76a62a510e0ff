"""The paper's recipes: optimizers and learning-rate schedules built from flags."""

import math

import keras

from keras_sngm import LARS, MSGD, SNGM, BlockSNGM
from trainers.config import OPTIMIZERS, SCHEDULES


@keras.saving.register_keras_serializable(package="keras_sngm")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear ramp from 0 over `warmup_steps` updates, then `schedule(step - warmup_steps)`."""

    def __init__(self, schedule, warmup_steps):
        self.schedule, self.warmup_steps = schedule, int(warmup_steps)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.schedule(0) * (step + 1) / self.warmup_steps
        return keras.ops.where(step < self.warmup_steps, warm, self.schedule(keras.ops.maximum(step - self.warmup_steps, 0)))

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["warmup_steps"])


def schedule(kind, lr, total_updates, power=1.1, warmup_updates=0, step_boundaries=(0.5, 0.75)):
    """`poly`: lr * (1 - t/T)^power (the paper's); `cosine`; `step`: x0.1 at 50% and 75%."""
    if kind not in SCHEDULES:
        raise ValueError(f"--schedule must be one of {SCHEDULES}. Received: {kind!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"--lr must be a positive number. Received: {lr!r}")
    decay = max(1, total_updates - warmup_updates)
    if kind == "poly":
        s = keras.optimizers.schedules.PolynomialDecay(lr, decay, end_learning_rate=0.0, power=power)
    elif kind == "cosine":
        s = keras.optimizers.schedules.CosineDecay(lr, decay)
    elif kind == "step":
        bounds = [max(1, int(b * decay)) for b in step_boundaries]
        s = keras.optimizers.schedules.PiecewiseConstantDecay(bounds, [lr * 0.1**i for i in range(len(bounds) + 1)])
    else:
        return LinearWarmup(keras.optimizers.schedules.PolynomialDecay(lr, 1, lr), warmup_updates) if warmup_updates else lr
    return LinearWarmup(s, warmup_updates) if warmup_updates else s


def optimizer(name, learning_rate, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001, diagnostics_every=100):
    """msgd (the paper's baseline), sngm, block_sngm, lars or adam.

    Weight decay: MSGD/SNGM/BlockSNGM/LARS add it to the gradient (the paper's L2;
    for the normalized ones before the normalization); Adam applies Keras' decoupled
    decay (w -= lr * wd * w each step, i.e. AdamW).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"--optimizer must be one of {OPTIMIZERS}. Received: {name!r}")
    wd = weight_decay or None
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, weight_decay=wd)
    if name == "lars":
        return LARS(learning_rate, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                    diagnostics_every=diagnostics_every)
    return {"msgd": MSGD, "sngm": SNGM, "block_sngm": BlockSNGM}[name](learning_rate, momentum=momentum, weight_decay=weight_decay,
                                                         diagnostics_every=diagnostics_every)
