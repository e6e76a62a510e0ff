"""Machinery shared by SNGM, BlockSNGM and LARS.

All three are "momentum on a rescaled gradient":

    g_s  <- g_s + wd * w_s                 (weight_decay_mode="l2" only)
    d_s  <- c_s * g_s                      (c_s: each algorithm's scalar per variable)
    u_s  <- momentum * u_s + d_s
    w_s  <- w_s - lr * (u_s [+ wd * w_s])  ([...] for weight_decay_mode="decoupled")

`c_s` may need every variable's gradient at once (SNGM's global norm), but
Keras 3 calls `update_step` one variable at a time. The list-level hook is the
TensorFlow optimizer's `_distributed_tf_update_step`: it runs after cross-replica
all-reduce (tf.distribute), after loss-scale unscaling (LossScaleOptimizer) and after
gradient accumulation, so the norm is always the norm of the averaged, unscaled,
accumulated gradient, never a per-replica one. The norms are one read of g; the
update is one (optionally XLA-fused) elementwise pass per variable.
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
    """Sum of squares in float32 (bf16/fp16 safe). `l2_loss` is one kernel, no temporary."""
    return 2.0 * tf.nn.l2_loss(tf.cast(x, tf.float32))


class NormalizedMomentumOptimizer(keras.optimizers.Optimizer):
    """Base class: momentum on a direction computed from all gradients at once.

    Subclasses implement `_scales(grad_norms, variables, indices)`: one scalar c_s per
    variable, the direction being d_s = c_s * g_s.

    Non-finite gradients: the step is skipped. Weights and momentum stay exactly as
    they were, `skipped_steps` (an optimizer variable, saved with the model) is
    incremented, and `iterations` still advances (so schedules do too), as in
    `keras.optimizers.LossScaleOptimizer`.
    """

    # Regexes (on variable.path) excluded from weight decay when the user passes none.
    default_weight_decay_exclude = ()
    # Whether the direction is normalized (step length bounded by lr/(1-beta)).
    normalized = True
    # Per-variable vectors kept by `_step` (subclasses: "block_grad_norms", "trust_ratios").
    per_variable_diagnostics = ()

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=0.0,
        weight_decay_mode="l2",
        weight_decay_exclude=None,
        jit_compile=True,
        diagnostics_every=100,
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
        if isinstance(diagnostics_every, bool) or not isinstance(diagnostics_every, int) or diagnostics_every < 0:
            raise ValueError(f"`diagnostics_every` must be an int >= 0. Received: diagnostics_every={diagnostics_every!r}")
        self.diagnostics_every = diagnostics_every
        self._step_fn = None

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")
        self.skipped_steps = self.add_variable(shape=(), dtype="int64", name="skipped_steps")
        # Diagnostics (non-trainable, saved with the optimizer; see `diagnostics()`).
        self._state = {"skipped_steps": self.skipped_steps}
        for name in ("grad_norm", "momentum_norm", "update_norm"):
            self._state[name] = self.add_variable(shape=(), dtype="float32", name=name)
        for name in self.per_variable_diagnostics:
            self._state[name] = self.add_variable(shape=(len(variables),), dtype="float32", name=name)
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
            self._step_fn = tf.function(self._step, autograph=False)
            self._apply_fn = tf.function(self._apply, jit_compile=self.jit_compile, autograph=False)

        state = {k: v.value for k, v in self._state.items()}
        step = tf.convert_to_tensor(self._iterations)

        def per_device(_, grads, variables, momenta, state, learning_rate, step):
            # Runs once per device copy (once without tf.distribute).
            self._step_fn(grads, variables, momenta, state, learning_rate, step, indices)

        distribution.extended.update(
            variables[0], per_device, args=(grads, variables, momenta, state, learning_rate, step), group=False
        )

    def _step(self, grads, variables, momenta, state, learning_rate, step, indices):
        # Dense gradients: the momentum decays every row, so the update is dense anyway;
        # tf.convert_to_tensor sums repeated IndexedSlices indices, so norms are exact.
        grads = [tf.convert_to_tensor(g) for g in grads]
        if self.weight_decay_mode == "l2":  # the L2 term enters before the normalization
            grads = [g + self.weight_decay * w if self._decays[i] else g for g, w, i in zip(grads, variables, indices)]
        # Norms by TensorFlow's own reduction kernel: on CPU it is vectorized and threaded,
        # about 3x faster than XLA's; under a whole-model XLA step XLA takes it anyway.
        grad_norms = [tf.sqrt(squared_norm(g)) for g in grads]
        finite = tf.reduce_all(tf.math.is_finite(tf.stack(grad_norms)))
        scales = self._scales(grad_norms, variables, indices)
        self._apply_fn(grads, variables, momenta, scales, finite, learning_rate, indices)
        self.assign_add(state["skipped_steps"], tf.cast(tf.logical_not(finite), tf.int64))
        self._record(state, grad_norms, scales, variables, momenta, learning_rate, finite, step, indices)

    def _record(self, state, grad_norms, scales, variables, momenta, learning_rate, finite, step, indices):
        """Diagnostics: what is already computed is stored every step (free); the
        momentum and update norms cost one more read of u, so every `diagnostics_every`
        steps only."""
        self.assign(state["grad_norm"], tf.sqrt(tf.add_n([n * n for n in grad_norms])))
        at = tf.constant([[i] for i in indices])
        if "block_grad_norms" in state:
            self.assign(state["block_grad_norms"], tf.tensor_scatter_nd_update(state["block_grad_norms"], at, tf.stack(grad_norms)))
        if "trust_ratios" in state:
            self.assign(state["trust_ratios"], tf.tensor_scatter_nd_update(state["trust_ratios"], at, tf.stack(scales)))
        if not self.diagnostics_every:
            return

        def momentum_and_update_norms():
            u_sq = tf.add_n([squared_norm(u) for u in momenta])
            self.assign(state["momentum_norm"], tf.sqrt(u_sq))  # ||u_t|| (Lemma 2: <= 1/(1-beta))
            lr = tf.where(finite, learning_rate, 0.0)
            if self.weight_decay_mode == "decoupled":  # step = u + wd w_old = (u + wd w_new) / (1 - lr wd)
                u_sq = tf.add_n([squared_norm((u + self.weight_decay * w) / (1.0 - lr * self.weight_decay))
                                 if self._decays[i] else squared_norm(u) for u, w, i in zip(momenta, variables, indices)])
            self.assign(state["update_norm"], lr * tf.sqrt(u_sq))  # ||w_t - w_{t+1}||
            return tf.constant(True)

        tf.cond(step % self.diagnostics_every == 0, momentum_and_update_norms, lambda: tf.constant(False))

    def diagnostics(self):
        """The latest diagnostics as NumPy values: grad_norm (||g_t||, after L2 decay),
        momentum_norm (||u_t||), momentum_norm_bound (1/(1-beta)), update_norm
        (||w_{t+1} - w_t||), skipped_steps, and the per-variable vectors of
        `per_variable_diagnostics` (in `optimizer.variables` order of the model's
        trainable variables). momentum_norm is read from the momentum now (exact
        whenever this is called); update_norm is refreshed inside the step every
        `diagnostics_every` steps."""
        out = {k: v.numpy() for k, v in self._state.items()}
        out["momentum_norm"] = float(tf.sqrt(tf.add_n([squared_norm(u.value) for u in self.momentums])))
        out["momentum_norm_bound"] = 1.0 / (1.0 - self.momentum)
        return out

    def _apply(self, grads, variables, momenta, scales, finite, learning_rate, indices):
        """One elementwise pass per variable (XLA-fused): read g, u, w; write u, w.

        A skipped step becomes beta=1, lr=0, d=0 through three scalars, so no
        per-element select on u or w is needed.
        """
        beta = tf.where(finite, self.momentum, 1.0)
        lr = tf.where(finite, learning_rate, 0.0)
        for g, w, u, c, i in zip(grads, variables, momenta, scales, indices):
            d = tf.where(finite, g * tf.cast(c, g.dtype), tf.zeros_like(g))    # d_s = c_s * g_s
            u_new = tf.cast(beta, u.dtype) * u + tf.cast(d, u.dtype)            # u <- beta * u + d
            step = u_new
            if self.weight_decay_mode == "decoupled" and self._decays[i]:
                step = step + self.weight_decay * w                             # outside the normalization
            self.assign(u, u_new)
            self.assign_sub(w, tf.cast(lr, w.dtype) * step)                      # w <- w - lr * u

    def _scales(self, grad_norms, variables, indices):
        """Per-variable factors c_s with direction d_s = c_s * g_s (one scalar each)."""
        raise NotImplementedError

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "weight_decay_mode": self.weight_decay_mode,
                "weight_decay_exclude": list(self.weight_decay_exclude),
                "jit_compile": self.jit_compile,
                "diagnostics_every": self.diagnostics_every,
            }
        )
        return config
