"""The paper's recipes: optimizers and learning-rate schedules built from flags."""

import math

import keras

from keras_sngm import LARS, MSGD, SNGM, BlockSNGM
from keras_sngm_trainers.config import OPTIMIZERS, SCHEDULES

# Keras' own optimizers apply a NaN/Inf gradient; keras_sngm's skip such a step themselves.
APPLY_NONFINITE = ("adam", "lamb")


@keras.saving.register_keras_serializable(package="keras_sngm")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear ramp from `start` (towards `schedule(0)`) over `warmup_steps` updates, then
    `schedule(step - warmup_steps)`."""

    def __init__(self, schedule, warmup_steps, start=0.0):
        self.schedule, self.warmup_steps, self.start = schedule, int(warmup_steps), float(start)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.start + (self.schedule(0) - self.start) * (step + 1) / self.warmup_steps
        return keras.ops.where(step < self.warmup_steps, warm, self.schedule(keras.ops.maximum(step - self.warmup_steps, 0)))

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "warmup_steps": self.warmup_steps,
                "start": self.start}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["warmup_steps"],
                   config.get("start", 0.0))


@keras.saving.register_keras_serializable(package="keras_sngm")
class PerEpoch(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` read at the first update of each epoch and held for the epoch: what a
    PyTorch scheduler stepped once per epoch gives (the paper's cosine, journal sec. 5)."""

    def __init__(self, schedule, updates_per_epoch):
        self.schedule, self.updates_per_epoch = schedule, int(updates_per_epoch)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        return self.schedule(keras.ops.floor(step / self.updates_per_epoch) * self.updates_per_epoch)

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "updates_per_epoch": self.updates_per_epoch}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["updates_per_epoch"])


@keras.saving.register_keras_serializable(package="keras_sngm")
class AdamL2(keras.optimizers.Adam):
    """Adam with L2 added to the gradient, `g + l2 * w`, as `torch.optim.Adam(weight_decay=l2)`
    steps (the paper's baselines ran in PyTorch); `keras.optimizers.Adam(weight_decay=...)`
    decays decoupled instead (AdamW).

    Args:
        learning_rate: as `keras.optimizers.Adam`. Defaults to `0.001`.
        l2: float >= 0, the L2 coefficient. Defaults to `0.0`.
        **kwargs: any other argument of `keras.optimizers.Adam`.

    References:
        - [Kingma and Ba, 2015](https://arxiv.org/abs/1412.6980), "Adam".
    """

    def __init__(self, learning_rate=0.001, l2=0.0, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.l2 = float(l2)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = keras.ops.convert_to_tensor(gradient) + keras.ops.cast(self.l2, variable.dtype) * variable
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


def schedule(kind, lr, total_updates, power=1.1, warmup_updates=0, step_boundaries=(0.5, 0.75), updates_per_epoch=0,
             warmup_start=0.0):
    """`poly`: lr * (1 - t/T)^power (the paper's); `cosine`; `step`: x0.1 at 50% and 75%
    (He et al.'s epochs 80 and 120 of 160); `constant`. With `updates_per_epoch`, the rate
    changes only at epoch starts (`PerEpoch`); the warm-up ramps from `warmup_start`."""
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
        # update n (0-based) is decayed once n >= b * T; Keras' pieces hold while n <= boundary
        bounds = [max(0, int(round(b * decay)) - 1) for b in step_boundaries]
        s = keras.optimizers.schedules.PiecewiseConstantDecay(bounds, [lr * 0.1**i for i in range(len(bounds) + 1)])
    else:
        s = keras.optimizers.schedules.PolynomialDecay(lr, 1, lr)  # a schedule object, so it can be warmed up
        if not warmup_updates:
            return lr
    if updates_per_epoch:
        s = PerEpoch(s, updates_per_epoch)
    return LinearWarmup(s, warmup_updates, warmup_start) if warmup_updates else s


def optimizer(name, learning_rate, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001, diagnostics_every=100):
    """msgd (the paper's baseline), sngm, block_sngm, lars, adam or lamb.

    Weight decay: MSGD/SNGM/BlockSNGM/LARS/Adam add it to the gradient (the paper's L2,
    as its PyTorch optimizers do; for the normalized ones before the normalization).
    LAMB is `keras.optimizers.Lamb`, whose decay is Keras' decoupled one
    (w -= lr * wd * w before the step, outside the trust ratio; You et al. put wd * w
    inside it); the paper does not say which LAMB it ran.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"--optimizer must be one of {OPTIMIZERS}. Received: {name!r}")
    wd = weight_decay or None
    if name == "adam":
        return AdamL2(learning_rate, l2=weight_decay)
    if name == "lamb":
        return keras.optimizers.Lamb(learning_rate, weight_decay=wd)
    if name == "lars":
        return LARS(learning_rate, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                    diagnostics_every=diagnostics_every)
    return {"msgd": MSGD, "sngm": SNGM, "block_sngm": BlockSNGM}[name](learning_rate, momentum=momentum, weight_decay=weight_decay,
                                                         diagnostics_every=diagnostics_every)
