"""Machinery shared by SNGM, BlockSNGM and LARS.

All three are "momentum on a rescaled gradient":

    g_s  <- g_s + wd * w_s                 (weight_decay_mode="l2" only)
    d_s  <- c_s * g_s                      (c_s: each algorithm's scalar per variable)
    u_s  <- momentum * u_s + d_s
    w_s  <- w_s - lr * (u_s [+ wd * w_s])  ([...] for weight_decay_mode="decoupled")

With `nesterov=True` the step looks ahead: `w_s <- w_s - lr * (momentum * u_s + d_s)`
(Sutskever et al.; PyTorch's and optax's form).

`c_s` may need every variable's gradient at once (SNGM's global norm), but Keras 3
calls `update_step` one variable at a time. The list-level hooks, which Keras calls
with the gradients of all variables after loss-scale unscaling (LossScaleOptimizer) and
gradient accumulation:
- TensorFlow: `_distributed_tf_update_step`, after the cross-replica all-reduce of
  tf.distribute, so the norm is never a per-replica one;
- JAX and PyTorch: `_backend_update_step`; under JAX the gradients are the global
  (cross-device) ones, `keras.distribution.DataParallel` included.
One update written with `keras.ops` serves every backend: on TensorFlow it runs in a
`tf.function` with an XLA-compiled elementwise pass; on JAX it is traced into the
jit-compiled train step of `model.fit`. The norms are one read of g; the update is one
elementwise pass per variable.
"""

import math
import re

import keras
from keras import ops

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf
else:  # the JAX and PyTorch backends need no TensorFlow
    tf = None

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


def _path(variable):
    """A Keras variable's `path`; a raw `tf.Variable` (which Keras' optimizers accept beside
    Keras variables) has only a `name`."""
    return getattr(variable, "path", None) or variable.name


def _matches(patterns, variable):
    return any(re.search(p, _path(variable)) for p in patterns)


def squared_norm(x):
    """Sum of squares in float32 (bf16/fp16 safe). On TensorFlow `l2_loss` is one
    kernel, no temporary."""
    if tf is not None:
        return 2.0 * tf.nn.l2_loss(tf.cast(x, tf.float32))
    return ops.sum(ops.square(ops.cast(x, "float32")))


def _dense(g):
    """A sparse gradient (TensorFlow's IndexedSlices, JAX's BCOO: embedding gradients) as a
    dense tensor: the momentum decays every row, so the update is dense anyway; repeated
    indices are summed. Any gradient becomes a backend tensor (`apply` may be given NumPy
    arrays). BCOO is densified by a scatter-add, which needs no static count of its
    non-zeros inside `jax.jit` (summing its duplicates first would)."""
    return tf.convert_to_tensor(g) if tf is not None else ops.convert_to_tensor(g, sparse=False)


def _replicas():
    """Replicas in sync of the `tf.distribute` strategy in scope (1 without one; JAX's
    `DataParallel` sums inside the compiled step and gives no per-device gradient)."""
    if tf is None or not tf.distribute.has_strategy():
        return 1
    return tf.distribute.get_strategy().num_replicas_in_sync


def _traced(tensors):
    """Whether JAX is tracing (inside jit: `model.fit`'s train step)."""
    import jax

    return any(isinstance(t, jax.core.Tracer) for t in tensors)


def _jax_jit(opt, owned, indices):
    """`opt._step` as a pure function of the values of `owned` (weights, momenta and
    diagnostics), compiled by `jax.jit`: Keras' StatelessScope turns the assignments
    into returned values."""
    import jax

    n = len(indices)
    variables, momenta = owned[:n], owned[n:2 * n]

    def pure(values, grads, learning_rate, step):
        with keras.StatelessScope(state_mapping=list(zip(owned, values))) as scope:
            opt._step(grads, variables, momenta, opt._state, learning_rate, step, indices, opt._apply)
        return [scope.get_current_value(v) for v in owned]

    return jax.jit(pure)


class NormalizedMomentumOptimizer(keras.optimizers.Optimizer):
    """Base class: momentum on a direction computed from all gradients at once.

    Subclasses implement `_scales(grad_norms, weight_norms, indices)`: the vector of c_s,
    one per variable, the direction being d_s = c_s * g_s.

    Non-finite gradients: the step is skipped. Weights and momentum stay exactly as
    they were, `skipped_steps` (an optimizer variable, saved with the model) is
    incremented, and `iterations` still advances. This differs from
    `keras.optimizers.LossScaleOptimizer`, which skips before its inner optimizer runs, so
    that neither the inner `iterations` nor a schedule advances. Here `iterations` counts
    the batches consumed: a schedule and a resumed run's data position stay in step with
    the data, and `skipped_steps` says how many updates were not taken. Inside a
    LossScaleOptimizer, its own rule applies (it never hands over a non-finite gradient).

    Keras' clipping arguments act on the gradients before this step: `clipnorm` clips
    each variable's gradient on its own, which changes SNGM's direction (the variables'
    relative sizes); `global_clipnorm` scales all of them by one factor, which a
    normalized direction divides out (no effect without L2 decay); `clipvalue` clips
    elementwise. With `weight_decay_mode="l2"` the decay is added after the clipping.
    """

    # Regexes (on variable.path) excluded from weight decay when the user passes none.
    default_weight_decay_exclude = ()
    # Whether the direction is normalized (step length bounded by lr/(1-beta)).
    normalized = True
    # Whether `_scales` gives one c for every variable (SNGM's global norm).
    uniform_scale = False
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
        nesterov=False,
        name=None,
        **kwargs,
    ):
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
        if not isinstance(nesterov, bool):
            raise ValueError(f"`nesterov` must be True or False. Received: nesterov={nesterov!r}")
        self.nesterov = nesterov
        self._step_fn = None
        self._jax_steps = {}
        self._torch_buffers, self._torch_updates = {}, 0  # keras_sngm/_torch.py

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")
        self.skipped_steps = self.add_variable(shape=(), dtype="int32", name="skipped_steps")
        # Diagnostics (non-trainable, saved with the optimizer; see `diagnostics()`).
        self._state = {"skipped_steps": self.skipped_steps}
        for name in ("grad_norm", "momentum_norm", "update_norm"):
            self._state[name] = self.add_variable(shape=(), dtype="float32", name=name)
        # the update count after the update whose update_norm was last computed (0: none yet)
        self._state["refreshed_at_update"] = self.add_variable(shape=(), dtype="int32", name="refreshed_at_update")
        for name in self.per_variable_diagnostics:
            self._state[name] = self.add_variable(shape=(len(variables),), dtype="float32", name=name)
        if _replicas() > 1:  # each replica's gradient against their sum: the noise scale's two batch sizes
            for name in ("replica_grad_sq", "global_grad_sq"):
                self._state[name] = self.add_variable(shape=(), dtype="float32", name=name)
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

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if tf is not None and "replica_grad_sq" in self._state:
            return self._tf_replicas_update_step(grads, trainable_variables, learning_rate)
        if tf is not None:  # TensorFlow: through tf.distribute, to `_distributed_tf_update_step`
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        indices = tuple(self._get_variable_index(v) for v in trainable_variables)
        momenta = [self.momentums[i] for i in indices]
        learning_rate = ops.cast(learning_rate, "float32")
        variables, grads = list(trainable_variables), list(grads)
        if keras.backend.backend() == "torch":  # foreach kernels, no host round trip (keras_sngm/_torch.py)
            from keras_sngm import _torch

            return _torch.update(self, grads, variables, momenta, learning_rate, self._update_index(), indices)
        if keras.backend.backend() == "jax" and self.jit_compile and not _traced(grads):
            # Eager `apply()` on JAX: one jit-compiled step instead of a compile per op
            # (inside `model.fit` the whole train step is already traced and compiled).
            owned = variables + momenta + list(self._state.values())
            fn = self._jax_steps.get(indices)
            if fn is None:
                fn = self._jax_steps[indices] = _jax_jit(self, owned, indices)
            for v, value in zip(owned, fn([v.value for v in owned], grads, learning_rate, self._update_index())):
                v.assign(value)
            return
        self._step(grads, variables, momenta, self._state, learning_rate, self._update_index(), indices, self._apply)

    def _update_index(self):
        """The 0-based index of this update: Keras' `_iterations` counts micro-batches
        under `gradient_accumulation_steps`, `iterations` counts updates."""
        index = self.iterations
        return index.value if isinstance(index, keras.Variable) else index

    def _tf_replicas_update_step(self, grads, trainable_variables, learning_rate):
        """Keras' TensorFlow update under a multi-replica `tf.distribute` strategy (sum the
        replicas' gradients, then one merged step), which also keeps, before the sum, the
        mean over replicas of |g_r|^2 of each replica's own mean gradient g_r: with
        |sum_r|^2 after it, what `keras_sngm.callbacks.SNGMDiagnostics` needs for the
        noise scale (B/R examples against B). Keras' losses scale each replica's loss by
        1/R, so g_r is R times the replica's gradient."""
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync
        local = sum(squared_norm(_dense(g)) for g in grads) * float(replicas * replicas)   # |g_r|^2
        replica_sq = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, local)                     # mean over r
        variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        grads_and_vars = self._all_reduce_sum_gradients(list(zip(grads, variables)))
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_tf_update_step, self._distribution_strategy, grads_and_vars, learning_rate, replica_sq)

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate, replica_sq=None):
        # Gradients here are already all-reduced across replicas, unscaled and accumulated.
        grads = [g for g, _ in grads_and_vars]
        variables = [v for _, v in grads_and_vars]
        indices = tuple(self._get_variable_index(v) for v in variables)
        momenta = [self.momentums[i].value for i in indices]
        learning_rate = tf.convert_to_tensor(learning_rate, tf.float32)  # a Keras Variable or a schedule's value
        if self._step_fn is None:
            apply_fn = tf.function(self._apply, jit_compile=self.jit_compile, autograph=False)
            self._step_fn = tf.function(lambda *args: self._step(*args, apply_fn), autograph=False)

        state = {k: v.value for k, v in self._state.items()}
        step = tf.convert_to_tensor(self._update_index())

        def per_device(_, grads, variables, momenta, state, learning_rate, step, *replica_sq):
            # Runs once per device copy (once without tf.distribute).
            if replica_sq:
                self.assign(state["replica_grad_sq"], replica_sq[0])
                self.assign(state["global_grad_sq"], sum(squared_norm(_dense(g)) for g in grads))  # |sum_r g_r|^2
            self._step_fn(grads, variables, momenta, state, learning_rate, step, indices)

        extra = () if replica_sq is None else (replica_sq,)
        distribution.extended.update(
            variables[0], per_device, args=(grads, variables, momenta, state, learning_rate, step) + extra, group=False
        )

    def _step(self, grads, variables, momenta, state, learning_rate, step, indices, apply_fn):
        grads = [_dense(g) for g in grads]
        if self.weight_decay_mode == "l2":  # the L2 term enters before the normalization
            grads = [g + ops.cast(self.weight_decay, g.dtype) * w if self._decays[i] else g
                     for g, w, i in zip(grads, variables, indices)]
        grad_norms = ops.stack([ops.sqrt(squared_norm(g)) for g in grads])                # ||g_s||
        finite = ops.all(ops.isfinite(grad_norms))
        scales = self._scales(grad_norms, lambda: ops.stack([ops.sqrt(squared_norm(w)) for w in variables]), indices)
        apply_fn(grads, variables, momenta, scales, finite, learning_rate, indices)
        self.assign_add(state["skipped_steps"], ops.cast(ops.logical_not(finite), "int32"))
        self._record(state, grads, grad_norms, scales, variables, momenta, learning_rate, finite, step, indices)

    def _record(self, state, grads, grad_norms, scales, variables, momenta, learning_rate, finite, step, indices):
        """Diagnostics: what is already computed is stored every step (free); the
        momentum and update norms cost one more read of u, so every `diagnostics_every`
        steps only."""
        self.assign(state["grad_norm"], ops.sqrt(ops.sum(ops.square(grad_norms))))
        at = ops.convert_to_tensor([[i] for i in indices], dtype="int32")
        if "block_grad_norms" in state:
            self.assign(state["block_grad_norms"], ops.scatter_update(state["block_grad_norms"], at, grad_norms))
        if "trust_ratios" in state:
            self.assign(state["trust_ratios"], ops.scatter_update(state["trust_ratios"], at, ops.cast(scales, "float32")))
        if not self.diagnostics_every:
            return
        lr = ops.where(finite, learning_rate, 0.0)

        def norms():
            u_sq = sum(squared_norm(u) for u in momenta)
            steps = self._steps(grads, variables, momenta, scales, finite, lr, indices)
            # ||u_t||, ||w_t - w_{t+1}||, and which update this was (counted from 1)
            return ops.sqrt(u_sq), lr * ops.sqrt(sum(squared_norm(s) for s in steps)), ops.cast(step + 1, "int32")

        def keep():
            return (ops.convert_to_tensor(state["momentum_norm"]), ops.convert_to_tensor(state["update_norm"]),
                    ops.convert_to_tensor(state["refreshed_at_update"]))

        # The branch only computes; the assignment is outside it (JAX's cond must be pure).
        u_norm, w_step, at = ops.cond(ops.equal(step % self.diagnostics_every, 0), norms, keep)
        self.assign(state["momentum_norm"], u_norm)  # Lemma 2: <= 1/(1-beta)
        self.assign(state["update_norm"], w_step)
        self.assign(state["refreshed_at_update"], at)

    def _steps(self, grads, variables, momenta, scales, finite, lr, indices):
        """The step each variable just took, read after the update (u = u_t, w = w_t):
        u_t, or beta u_t + d_t with nesterov; when decoupled, + wd w_{t-1}, which with
        w_t = w_{t-1} - lr (s + wd w_{t-1}) makes the step (s + wd w_t) / (1 - lr wd)."""
        out = []
        for k, (g, w, u, i) in enumerate(zip(grads, variables, momenta, indices)):
            c = scales[k]
            s = ops.convert_to_tensor(u)
            if self.nesterov:
                s = self.momentum * s + ops.cast(ops.where(finite, g * ops.cast(c, g.dtype), ops.zeros_like(g)), s.dtype)
            if self.weight_decay_mode == "decoupled" and self._decays[i]:
                s = (s + self.weight_decay * ops.convert_to_tensor(w)) / (1.0 - lr * self.weight_decay)
            out.append(s)
        return out

    def diagnostics(self):
        """The latest diagnostics as NumPy values: grad_norm (||g_t||, after L2 decay),
        momentum_norm (||u_t||), momentum_norm_bound (the bound on ||u_t|| this
        optimizer's rule guarantees, `momentum_norm_bound()`; None where it has none), update_norm
        (||w_{t+1} - w_t||), skipped_steps, and the per-variable vectors of
        `per_variable_diagnostics` (in `optimizer.variables` order of the model's
        trainable variables). momentum_norm is read from the momentum now (exact
        whenever this is called); update_norm is that of the update
        `refreshed_at_update` (counted from 1; 0 = none yet), refreshed inside the step
        on updates 1, 1 + diagnostics_every, ... (updates, not micro-batches, under
        `gradient_accumulation_steps`; on PyTorch, counted from this object's first
        update, so after loading a checkpoint from its first update there, which
        `refreshed_at_update` records). Wrapped in Keras' `LossScaleOptimizer` (a
        mixed_float16 model) or the trainers' Horovod wrapper, use
        `keras_sngm.diagnostics(model.optimizer)`."""
        out = {k: ops.convert_to_numpy(v.value) for k, v in self._state.items()}
        out["momentum_norm"] = float(ops.sqrt(sum(squared_norm(u.value) for u in self.momentums)))
        out["momentum_norm_bound"] = self.momentum_norm_bound()
        return out

    def momentum_norm_bound(self):
        """The bound on ||u_t|| that the update rule guarantees whatever the gradients,
        or None where it has none (the default: a direction whose length follows the
        gradient's or the weights' size, as in MSGD and LARS)."""
        return None

    def _apply(self, grads, variables, momenta, scales, finite, learning_rate, indices):
        """One elementwise pass per variable (XLA-fused on TensorFlow): read g, u, w;
        write u, w.

        A skipped step becomes beta=1, lr=0, d=0 through three scalars, so no
        per-element select on u or w is needed.
        """
        beta = ops.where(finite, self.momentum, 1.0)
        lr = ops.where(finite, learning_rate, 0.0)
        for k, (g, w, u, i) in enumerate(zip(grads, variables, momenta, indices)):
            d = ops.where(finite, g * ops.cast(scales[k], g.dtype), ops.zeros_like(g))  # d_s = c_s * g_s
            u_new = ops.cast(beta, u.dtype) * u + ops.cast(d, u.dtype)           # u <- beta * u + d
            step = ops.cast(beta, u.dtype) * u_new + ops.cast(d, u.dtype) if self.nesterov else u_new  # nesterov
            if self.weight_decay_mode == "decoupled" and self._decays[i]:
                step = step + self.weight_decay * w                              # outside the normalization
            self.assign(u, u_new)
            self.assign_sub(w, ops.cast(lr, w.dtype) * step)                     # w <- w - lr * u

    def _scales(self, grad_norms, weight_norms, indices):
        """The factors c_s of the directions d_s = c_s * g_s, as a vector: one per variable,
        from the vector of ||g_s|| (after L2 decay); `weight_norms()` gives ||w_s||."""
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
                "nesterov": self.nesterov,
            }
        )
        return config
