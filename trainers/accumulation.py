"""The JAX engine's gradient accumulation: k micro-batch gradients averaged into one update
of the inner optimizer, with k a variable, so that the batch can grow between `fit` calls
(`--batch-size auto`) with the same compiled train step.

Keras' own `gradient_accumulation_steps` is a Python int traced into the step, and its
update count is `train steps // k`, which breaks when k changes. This wrapper is the JAX
counterpart of the Horovod engine's `keras_sngm_trainers.distributed.DistributedOptimizer`:
on the JAX engine the gradient it receives is already the mean over every device of every
process (XLA's collectives inside the step), so it only sums, averages, estimates the
gradient noise scale, and keeps float16's loss scale with its verdict on the update's mean.

Written with `keras.ops`. JAX traces pure functions, so each branch of a `cond` runs on the
current values in its own `keras.StatelessScope` and returns every new value (`_cond`).
"""

import keras
from keras import ops

from keras_sngm.noise_scale import NoiseScaleEstimator
from keras_sngm_trainers.wrapper import Wrapper


def _all_finite(tensors):
    return ops.all(ops.stack([ops.all(ops.isfinite(t)) for t in tensors]))


@keras.saving.register_keras_serializable(package="keras_sngm")
class Accumulation(Wrapper, keras.optimizers.Optimizer):
    """Steps `inner_optimizer` once per k micro-batches, on their mean gradient.

    Args:
        inner_optimizer: the `keras.optimizers.Optimizer` that updates the weights.
        examples_per_micro: examples in one train step over all replicas (processes x
            devices x micro-batch): the small batch of the noise scale, and the unit of
            `examples_seen()`.
        accumulation_steps: int >= 1, k, micro-batches per update. `set_accumulation_steps`
            changes it between `fit` calls without a new compiled step. Defaults to `1`.
        noise_ema: EMA decay of the noise-scale estimates. Defaults to `0.95`.
        dynamic_loss_scale: float16 training. The loss is multiplied by a scale
            (`scale_loss`, which Keras' train step calls); at the update the mean of the
            k scaled gradients is divided by it, and a non-finite mean skips the whole
            update (the schedule still advances) and halves the scale;
            `growth_interval` finite updates in a row double it. Defaults to `False`.
        initial_scale: the first loss scale. Defaults to `2**15`.
        growth_interval: finite updates before the scale doubles. Defaults to `2000`.
        name: String. Defaults to `None`.

    References:
        - [McCandlish et al., 2018](https://arxiv.org/abs/1812.06162), "An Empirical Model
          of Large-Batch Training" (the noise scale, from the micro-batch gradients and
          their mean).
        - [Micikevicius et al., 2018](https://arxiv.org/abs/1710.03740), "Mixed Precision
          Training" (dynamic loss scaling).
    """

    def __init__(self, inner_optimizer, examples_per_micro, accumulation_steps=1, noise_ema=0.95,
                 dynamic_loss_scale=False, initial_scale=2.0**15, growth_interval=2000, name=None):
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise ValueError(f"`inner_optimizer` must be a keras.optimizers.Optimizer. Received: "
                             f"inner_optimizer={inner_optimizer!r}")
        for key, value in (("examples_per_micro", examples_per_micro), ("accumulation_steps", accumulation_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{key}` must be an int >= 1. Received: {key}={value!r}")
        if not 0 <= noise_ema < 1:
            raise ValueError(f"`noise_ema` must be in [0, 1). Received: noise_ema={noise_ema!r}")
        if not (initial_scale >= 1 and growth_interval >= 1):
            raise ValueError(f"`initial_scale` must be >= 1 and `growth_interval` >= 1. Received: "
                             f"initial_scale={initial_scale!r}, growth_interval={growth_interval!r}")
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer
        self.examples_per_micro, self.accumulation_steps = examples_per_micro, accumulation_steps
        self.noise_ema, self.dynamic_loss_scale = float(noise_ema), bool(dynamic_loss_scale)
        self.initial_scale, self.growth_interval = float(initial_scale), int(growth_interval)

    def build(self, var_list):
        if self.built:
            return
        self.inner_optimizer.build(var_list)
        self.accumulators = [self.add_variable_from_reference(v, name="accumulator") for v in var_list]
        self.accumulation = self._count("accumulation", self.accumulation_steps)  # k
        self.micro_step = self._count("micro_step")  # micro-batches summed in the update in progress
        self.rounds = self._count("rounds")  # train steps of the updates done: examples = rounds x examples_per_micro
        self.skipped_steps = self._count("skipped_steps")
        if self.dynamic_loss_scale:
            self.loss_scale = self.add_variable(shape=(), dtype="float32", name="loss_scale",
                                                initializer=keras.initializers.Constant(self.initial_scale))
            self.good_steps = self._count("good_steps")
        self.noise = NoiseScaleEstimator(self.examples_per_micro, 2, self.add_variable, self.noise_ema)
        super().build(var_list)

    def _count(self, name, value=0):
        return self.add_variable(shape=(), dtype="int32", name=name, initializer=keras.initializers.Constant(value))

    def checkpoint_variables(self):
        """The state worth saving: the inner optimizer's, the examples seen, the noise-scale
        averages and the loss scale. The accumulators are zero at an update's end, and k is
        the batch adapter's to restore."""
        scale = [self.loss_scale, self.good_steps] if self.dynamic_loss_scale else []
        return self.inner_optimizer.variables + [self.rounds, self.skipped_steps] + scale + self.noise.state_variables()

    # -- what the driver and the learning-rate schedule read --------------------------------

    def set_accumulation_steps(self, k):
        """Micro-batches in each following update. Call it between `fit` calls, at an update
        boundary; the compiled train step stays valid."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"`k` must be an int >= 1. Received: k={k!r}")
        inside = int(ops.convert_to_numpy(self.micro_step))
        if inside:
            raise ValueError(f"set_accumulation_steps({k}) inside an update ({inside} micro-batches accumulated): "
                             "call it at an update boundary")
        self.accumulation_steps = k
        self.accumulation.assign(k)

    def batch_size(self):
        """The global batch of an update now (examples over all replicas)."""
        return self.accumulation_steps * self.examples_per_micro

    def traced_batch_size(self):
        """`batch_size()` read from the variable: what a traced step must use."""
        return self.accumulation * self.examples_per_micro

    def examples_seen(self):
        """Examples in all updates so far (a Python int: no 32-bit limit)."""
        return int(ops.convert_to_numpy(self.rounds)) * self.examples_per_micro

    def traced_position(self, ref_batch):
        """The examples before this update, counted in updates of `ref_batch` examples (a
        float32 tensor), from the integer count of train steps (exact at any length)."""
        if ref_batch % self.examples_per_micro:
            raise ValueError(f"`ref_batch` {ref_batch} is not a multiple of the {self.examples_per_micro} examples "
                             "of a train step")
        per_update = ref_batch // self.examples_per_micro
        whole, part = ops.floor_divide(self.rounds, per_update), ops.mod(self.rounds, per_update)
        return ops.cast(whole, "float32") + ops.cast(part, "float32") / per_update

    def noise_scale(self):
        """{"g2", "trace"} (EMAs, bias-corrected), "b_simple", "diversity_bound" and "batch"
        (as `DistributedOptimizer.noise_scale`)."""
        return {**self.noise.result(), "batch": self.batch_size()}

    def scale_loss(self, loss):
        if self.dynamic_loss_scale:
            return loss * ops.cast(self.loss_scale, loss.dtype)
        return self.inner_optimizer.scale_loss(loss)

    # -- the step ----------------------------------------------------------------------------

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        """What Keras' JAX train step calls: the new (trainable, optimizer) values."""
        values = [v.value if isinstance(v, keras.Variable) else v for v in optimizer_variables]  # (a wrapper's)
        state = list(zip(self._trainable_variables, trainable_variables)) + list(zip(self.variables, values))
        with keras.StatelessScope(state_mapping=state) as scope:
            self.apply(grads)
        return ([scope.get_current_value(v) for v in self._trainable_variables],
                [scope.get_current_value(v) for v in self.variables])

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            self.build(list(trainable_variables))
        grads = [ops.convert_to_tensor(g) for g in grads]
        last = ops.greater_equal(self.micro_step + 1, self.accumulation)
        self._cond(last, lambda: self._update(grads), lambda: self._accumulate(grads))

    def _accumulate(self, grads):
        for acc, g in zip(self.accumulators, grads):
            acc.assign(acc + g)
        self.noise.add_micro(self._unscaled(grads))  # |g_micro|^2
        self.micro_step.assign(self.micro_step + 1)

    def _update(self, grads):
        k = self.accumulation
        mean = self._unscaled([(acc + g) / ops.cast(k, g.dtype) for acc, g in zip(self.accumulators, grads)])
        self.noise.add_micro(self._unscaled(grads))
        finite = _all_finite(mean)
        self._estimate(mean, k, finite)
        for acc in self.accumulators:
            acc.assign(ops.zeros_like(acc.value))
        self.micro_step.assign(0)
        if self.dynamic_loss_scale:
            self._cond(finite, lambda: self._step(mean), self._skip)
        else:
            self._step(mean)
        self.rounds.assign(self.rounds + k)  # after the step: the schedule read the examples before this update

    def _step(self, mean):
        self.inner_optimizer.apply(mean)
        if self.dynamic_loss_scale:
            scale, good = self.loss_scale.value, self.good_steps.value
            grown = ops.greater_equal(good + 1, self.growth_interval)
            self.loss_scale.assign(ops.where(grown, scale * 2.0, scale))
            self.good_steps.assign(ops.where(grown, 0, good + 1))

    def _skip(self):
        """An overflowed update: the weights stay, the schedule advances, the scale halves."""
        self.skipped_steps.assign(self.skipped_steps + 1)
        self.inner_optimizer.iterations.assign(self.inner_optimizer.iterations + 1)
        self.loss_scale.assign(ops.maximum(self.loss_scale / 2.0, 1.0))
        self.good_steps.assign(0)

    def _unscaled(self, grads):
        if not self.dynamic_loss_scale:
            return grads
        return [g / ops.cast(self.loss_scale, g.dtype) for g in grads]

    def _estimate(self, mean, k, finite):
        """Folds this update's noise-scale estimate into the averages: k micro-batch
        gradients against their mean. None with one micro-batch (an epoch's last update
        may have one) or a non-finite gradient: the sums are dropped."""
        noise = self.noise.vars
        before = {name: v.value for name, v in noise.items()}
        self.noise.update(self.noise.local_mean(ops.cast(k, "float32")), mean, micro_batches=k)
        ok = ops.logical_and(ops.greater_equal(k, 2), ops.logical_and(finite, ops.isfinite(noise["g2"])))
        for name, v in noise.items():
            v.assign(ops.where(ok, v.value, before[name]) if name != "small_sq_sum" else ops.zeros_like(v.value))

    def _cond(self, pred, if_true, if_false):
        """`ops.cond` over two functions that assign variables. JAX's cond takes pure
        functions: each branch runs on the current values in its own StatelessScope and
        returns all new values, which are then assigned."""
        tracked = self._trainable_variables + self.variables
        state = [(v, v.value) for v in tracked]

        def pure(fn):
            def run():
                with keras.StatelessScope(state_mapping=state) as scope:
                    fn()
                return [scope.get_current_value(v) for v in tracked]
            return run

        for v, value in zip(tracked, ops.cond(pred, pure(if_true), pure(if_false))):
            v.assign(value)

    def get_config(self):
        return {"name": self.name, "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
                "examples_per_micro": self.examples_per_micro, "accumulation_steps": self.accumulation_steps,
                "noise_ema": self.noise_ema, "dynamic_loss_scale": self.dynamic_loss_scale,
                "initial_scale": self.initial_scale, "growth_interval": self.growth_interval}
