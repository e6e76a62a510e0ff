"""The learning rate when the batch grows (`--batch-size auto`): the schedule follows the
examples seen, not the updates, and the momentum-SGD-type optimizers may scale the rate
with the batch.

With a fixed batch B an update is B examples, so a schedule over updates is a schedule
over examples. When B grows, counting updates would run the schedule slower the larger
the batch; counting examples keeps its shape over epochs: the rate of an update is the
fixed-`B_min` schedule read at `examples_before / B_min` (a fractional update count), so
every epoch starts at the rate of the fixed-batch run (same epochs, same examples).

Gains on top of it, for msgd, adam and lamb (`--lr-scaling`), with S = B / B_min:

    linear    S                                  (Goyal et al. 2017)
    sqrt      sqrt(S)                            (Krizhevsky 2014; Hoffer et al. 2017)
    adascale  r = (s2 + m2) / (s2 / S + m2)      (Johnson et al. 2020), for msgd;
              sqrt(r) for adam and lamb          (AdaptDL's rule for Adam)

where m2 = |G|^2 and s2 = tr(Sigma) / B_min, the variance of a B_min-example gradient,
from the same noise-scale estimates the batch follows (clamped at 0: an unresolved
|G|^2 <= 0 makes r = S, pure noise). r lies between 1 and S: about S while B is below
the noise scale, about 1 far above it. SNGM, block-wise SNGM and LARS take no gain: their
step length lr * ||u|| <= lr / (1 - beta) does not depend on B (the paper's Lemma 2;
LARS' trust ratio normalizes each layer's step the same way), so the rate they were
tuned with stays right when the batch grows.
"""

import keras
from keras import ops

GAINS = ("none", "linear", "sqrt", "adascale")
SQRT_OF_ADASCALE = ("adam", "lamb")


def adascale_gain(g2, trace, scale, ref_batch):
    """r = (s2 + m2) / (s2/S + m2), s2 = max(trace, 0) / ref_batch, m2 = max(g2, 0); 1 before
    any estimate (both zero). Tensors in, tensor out."""
    m2 = ops.maximum(ops.cast(g2, "float32"), 0.0)
    s2 = ops.maximum(ops.cast(trace, "float32"), 0.0) / float(ref_batch)
    scale = ops.cast(scale, "float32")
    den = s2 / scale + m2
    return ops.where(den > 0, (s2 + m2) / ops.maximum(den, 1e-30), 1.0)


def gain(kind, optimizer_name, scale, g2=None, trace=None, ref_batch=1):
    """The multiplier of the rate at batch S * B_min."""
    scale = ops.cast(scale, "float32")
    if kind == "none":
        return ops.ones((), "float32")
    if kind == "linear":
        return scale
    if kind == "sqrt":
        return ops.sqrt(scale)
    r = adascale_gain(g2, trace, scale, ref_batch)
    return ops.sqrt(r) if optimizer_name in SQRT_OF_ADASCALE else r


@keras.saving.register_keras_serializable(package="keras_sngm")
class ExamplesSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` (over updates of `ref_batch` examples) read at the examples seen before
    the update, times the `gain` of the current batch.

    `bind(optimizer)` attaches the engine's optimizer
    (`keras_sngm_trainers.distributed.DistributedOptimizer(adaptive=True)` or
    `keras_sngm_trainers.accumulation.Accumulation`), whose `traced_position`,
    `traced_batch_size` and noise estimates it reads; Keras then evaluates it
    inside the traced update, as any schedule. `used()` is the rate of the update just made.

    Args:
        schedule: a `LearningRateSchedule` (or a float) over updates of `ref_batch` examples.
        ref_batch: int, the starting batch B_min.
        gain: one of `GAINS`. Defaults to `"none"`.
        optimizer_name: the `--optimizer` (adascale is square-rooted for adam and lamb).

    References:
        - [McCandlish et al., 2018](https://arxiv.org/abs/1812.06162), "An Empirical Model
          of Large-Batch Training".
        - [Johnson et al., 2020](https://arxiv.org/abs/2007.05105), "AdaScale SGD".
    """

    def __init__(self, schedule, ref_batch, gain="none", optimizer_name="sngm"):
        if gain not in GAINS:
            raise ValueError(f"`gain` must be one of {GAINS}. Received: gain={gain!r}")
        self.schedule, self.ref_batch, self.gain, self.optimizer_name = schedule, int(ref_batch), gain, optimizer_name
        self.optimizer = None

    def bind(self, optimizer):
        self.optimizer = optimizer
        return self

    def _rate(self, position, batch):
        """At `position` (examples before the update, in updates of `ref_batch`) and `batch`."""
        opt = self.optimizer
        base = self.schedule(position) if callable(self.schedule) else ops.convert_to_tensor(self.schedule, "float32")
        scale = ops.cast(batch, "float32") / self.ref_batch
        noise = getattr(opt, "noise", None)
        g2, trace = noise.ema_estimates() if (self.gain == "adascale" and noise) else (0.0, 0.0)
        return ops.cast(base, "float32") * gain(self.gain, self.optimizer_name, scale, g2, trace, self.ref_batch)

    def __call__(self, step):  # `step` (the update count) is not what this schedule follows
        if self.optimizer is None or not self.optimizer.built:
            return self._rate(0.0, self.ref_batch) if self.optimizer is not None else self.schedule(step)
        return self._rate(self.optimizer.traced_position(self.ref_batch), self.optimizer.traced_batch_size())

    def used(self):
        """The rate the last update used (its batch is the current one: the batch changes only
        between `fit` calls, and this is read inside them)."""
        batch = self.optimizer.batch_size()
        before = max(self.optimizer.examples_seen() - batch, 0)
        return float(ops.convert_to_numpy(self._rate(ops.convert_to_tensor(before / self.ref_batch, "float32"), batch)))

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "ref_batch": self.ref_batch,
                "gain": self.gain, "optimizer_name": self.optimizer_name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(keras.saving.deserialize_keras_object(config.pop("schedule")), **config)
