"""Machinery shared by SNGM, BlockSNGM and LARS.

All three are "momentum on a rescaled gradient":

    g_s  <- g_s + wd * w_s                 (weight_decay_mode="l2" only)
    d_s  <- direction(g)_s                 (each algorithm's own rule)
    u_s  <- momentum * u_s + d_s
    w_s  <- w_s - lr * (u_s [+ wd * w_s])  ([...] for weight_decay_mode="decoupled")

`direction` may need every variable's gradient at once (SNGM's global norm), but
Keras 3 calls `update_step` one variable at a time. The list-level hook is the
TensorFlow optimizer's `_distributed_tf_update_step`: it runs after cross-replica
all-reduce (tf.distribute), after loss-scale unscaling (LossScaleOptimizer) and after
gradient accumulation, so the norm is always the norm of the averaged, unscaled,
accumulated gradient, never a per-replica one. The whole list update runs as one
(optionally XLA-compiled) `tf.function`.
"""

import math
import re

import keras
import tensorflow as tf

# Paths of biases and normalization parameters (BatchNormalization, LayerNormalization,
# GroupNormalization...: "gamma"/"beta"); searched with `re.search` in `variable.path`.
BIAS_AND_NORM_PATTERNS = (r"bias", r"normalization", r"gamma", r"beta")

WEIGHT_DECAY_MODES = ("l2", "decoupled")


def _check_learning_rate(learning_rate):
    """Accepts a positive number, a Keras schedule or a callable; ints become floats."""
    if isinstance(learning_rate, bool):
        raise ValueError(f"`learning_rate` must be a positive float. Received: learning_rate={learning_rate!r}")
    if isinstance(learning_rate, (int, float)):
        if not math.isfinite(learning_rate) or learning_rate <= 0:
            raise ValueError(
                "`learning_rate` must be a positive, finite float. "
                f"Received: learning_rate={learning_rate!r}"
            )
        return float(learning_rate)
    return learning_rate


def _check_patterns(name, patterns):
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        patterns = (patterns,)
    patterns = tuple(patterns)
    for p in patterns:
        try:
            re.compile(p)
        except (re.error, TypeError) as e:
            raise ValueError(f"`{name}` must be a list of regular expressions. Received: {name}={patterns!r} ({e})") from None
    return patterns


def _matches(patterns, variable):
    return any(re.search(p, variable.path) for p in patterns)


def squared_norm(x):
    """Sum of squares of a tensor, accumulated in float32 (bf16/fp16 safe)."""
    return tf.reduce_sum(tf.square(tf.cast(x, tf.float32)))


class NormalizedMomentumOptimizer(keras.optimizers.Optimizer):
    """Base class: momentum on a direction computed from all gradients at once.

    Subclasses implement `_directions(grads, variables, indices)`, returning the list of
    directions d_s and a scalar boolean that is False when the step must be skipped
    (a NaN or Inf gradient).

    Non-finite gradients: the step is skipped. Weights and momentum stay exactly as
    they were, `skipped_steps` (an optimizer variable, saved with the model) is
    incremented, and `iterations` still advances (so schedules do too), as in
    `keras.optimizers.LossScaleOptimizer`.
    """

    # Regexes (on variable.path) excluded from weight decay when the user passes none.
    default_weight_decay_exclude = ()

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=0.0,
        weight_decay_mode="l2",
        weight_decay_exclude=None,
        jit_compile=True,
        name=None,
        **kwargs,
    ):
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                f"{type(self).__name__} needs the TensorFlow backend. "
                f"Received: KERAS_BACKEND={keras.backend.backend()!r}"
            )
        learning_rate = _check_learning_rate(learning_rate)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be a float in [0, 1). Received: momentum={momentum!r}")
        if weight_decay is None:
            weight_decay = 0.0
        if (
            isinstance(weight_decay, bool)
            or not isinstance(weight_decay, (int, float))
            or not math.isfinite(weight_decay)
            or weight_decay < 0
        ):
            raise ValueError(
                f"`weight_decay` must be a finite float >= 0. Received: weight_decay={weight_decay!r}"
            )
        if weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(
                f"`weight_decay_mode` must be one of {WEIGHT_DECAY_MODES}. "
                f"Received: weight_decay_mode={weight_decay_mode!r}"
            )
        if weight_decay_exclude is None:
            weight_decay_exclude = self.default_weight_decay_exclude
        super().__init__(learning_rate=learning_rate, weight_decay=float(weight_decay), name=name, **kwargs)
        self.momentum = float(momentum)
        self.weight_decay_mode = weight_decay_mode
        self.weight_decay_exclude = _check_patterns("weight_decay_exclude", weight_decay_exclude)
        self.jit_compile = bool(jit_compile)
        self._step_fn = None

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")
        self.skipped_steps = self.add_variable(shape=(), dtype="int64", name="skipped_steps")
        self._decays = [
            self.weight_decay > 0 and self._use_weight_decay(v) and not _matches(self.weight_decay_exclude, v)
            for v in variables
        ]

    # Weight decay is part of our own step (see `_step`), not Keras' per-replica one.
    def _apply_weight_decay(self, variables):
        return

    def update_step(self, gradient, variable, learning_rate):
        raise NotImplementedError(
            f"{type(self).__name__} updates all variables at once; use `apply()`/`apply_gradients()`."
        )

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        # Gradients here are already all-reduced across replicas, unscaled and accumulated.
        grads = [g for g, _ in grads_and_vars]
        variables = [v for _, v in grads_and_vars]
        indices = tuple(self._get_variable_index(v) for v in variables)
        momenta = [self.momentums[i].value for i in indices]
        learning_rate = tf.convert_to_tensor(learning_rate, tf.float32)  # a Keras Variable or a schedule's value
        if self._step_fn is None:
            self._step_fn = tf.function(self._step, jit_compile=self.jit_compile, autograph=False)

        def per_device(_, grads, variables, momenta, skipped, learning_rate):
            # Runs once per device copy (once without tf.distribute).
            self._step_fn(grads, variables, momenta, skipped, learning_rate, indices)

        distribution.extended.update(
            variables[0],
            per_device,
            args=(grads, variables, momenta, self.skipped_steps.value, learning_rate),
            group=False,
        )

    def _step(self, grads, variables, momenta, skipped, learning_rate, indices):
        # Dense gradients: the momentum decays every row, so the update is dense anyway;
        # tf.convert_to_tensor sums repeated IndexedSlices indices, so norms are exact.
        grads = [tf.convert_to_tensor(g) for g in grads]
        if self.weight_decay_mode == "l2":  # L2 term enters before the normalization
            grads = [g + self.weight_decay * w if self._decays[i] else g for g, w, i in zip(grads, variables, indices)]
        directions, finite = self._directions(grads, variables, indices)
        for d, w, u, i in zip(directions, variables, momenta, indices):
            u_new = self.momentum * u + tf.cast(d, u.dtype)           # u <- beta * u + d
            step = u_new
            if self.weight_decay_mode == "decoupled" and self._decays[i]:
                step = step + self.weight_decay * w                   # outside the normalization
            self.assign(u, tf.where(finite, u_new, u))
            self.assign(w, tf.where(finite, w - tf.cast(learning_rate, w.dtype) * step, w))  # w <- w - lr * u
        self.assign_add(skipped, tf.cast(tf.logical_not(finite), skipped.dtype))

    def _directions(self, grads, variables, indices):
        raise NotImplementedError

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "weight_decay_mode": self.weight_decay_mode,
                "weight_decay_exclude": list(self.weight_decay_exclude),
                "jit_compile": self.jit_compile,
            }
        )
        return config
