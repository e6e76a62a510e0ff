"""SNGM: stochastic normalized gradient descent with momentum."""

import keras
from keras import ops

from keras_sngm._base import NormalizedMomentumOptimizer


@keras.saving.register_keras_serializable(package="keras_sngm")
class SNGM(NormalizedMomentumOptimizer):
    """Stochastic normalized gradient descent with momentum (SNGM).

    The mini-batch gradient is divided by its Euclidean norm over ALL trainable
    variables together before it enters the momentum (Zhao et al., eq. 7-8):

    ```python
    g = g + weight_decay * w              # weight_decay_mode="l2" (default)
    u = momentum * u + g / norm(g)        # norm over every variable at once
    w = w - learning_rate * u
    ```

    With `weight_decay_mode="decoupled"` the decay is kept out of the norm:
    `w = w - learning_rate * (u + weight_decay * w)`. `momentum=0` gives SNGD.
    Since `||u|| <= 1 / (1 - momentum)` (Lemma 2), every step has length at most
    `learning_rate / (1 - momentum)` whatever the batch size, which is why no warm-up
    is needed. Pair it with a decaying schedule, e.g.
    `keras.optimizers.schedules.PolynomialDecay(lr, T, end_learning_rate=0, power=1.1)`.

    The norm is taken after loss-scale unscaling, gradient accumulation and
    cross-replica averaging. A zero gradient gives a zero direction. A NaN or Inf
    gradient skips the step: weights and momentum are left untouched and
    `skipped_steps` is incremented (`iterations` advances; unlike
    `keras.optimizers.LossScaleOptimizer`'s skip, see `NormalizedMomentumOptimizer`).

    Keras' clipping comes first: `clipnorm` (per variable) changes the direction, since
    it changes the variables' relative sizes; `global_clipnorm` changes nothing unless
    L2 decay is on (it scales every gradient alike, and the norm divides that out; the
    L2 term is added after it); `clipvalue` clips elementwise.

    Example (two variables, one norm over both; the step is `lr` long whatever the
    gradient's size):

    >>> import numpy as np, keras, keras_sngm
    >>> w, b = keras.Variable(np.ones(2, "float32")), keras.Variable(np.zeros(1, "float32"))
    >>> opt = keras_sngm.SNGM(learning_rate=0.1, momentum=0.9)
    >>> opt.apply([np.array([30.0, 0.0], "float32"), np.array([40.0], "float32")], [w, b])
    >>> np.round(keras.ops.convert_to_numpy(w), 4), np.round(keras.ops.convert_to_numpy(b), 4)
    (array([0.94, 1.  ], dtype=float32), array([-0.08], dtype=float32))
    >>> float(keras_sngm.diagnostics(opt)["grad_norm"])  # ||g|| = ||(30, 0, 40)||
    50.0

    Args:
        learning_rate: A float, a `keras.optimizers.schedules.LearningRateSchedule`
            or a callable taking no arguments. Defaults to `0.1`.
        momentum: float in [0, 1), the `beta` of the paper. Defaults to `0.9`.
        weight_decay: float >= 0. Defaults to `0.0`.
        weight_decay_mode: `"l2"` (added to the gradient before normalization, as
            in the paper's experiments) or `"decoupled"`. Defaults to `"l2"`.
        weight_decay_exclude: list of regular expressions; variables whose `path`
            matches one get no weight decay. Defaults to `()`.
        jit_compile: whether the update of all variables is one XLA-compiled
            function. Defaults to `True`.
        diagnostics_every: int >= 0; the momentum and update norms kept for
            `diagnostics()` are refreshed every this many steps (one more read of
            the momentum); 0 turns them off. Defaults to `100`.
        nesterov: bool; look-ahead step `w = w - learning_rate * (momentum * u + d)`
            with `u` already updated and `d` the direction that entered it (as
            PyTorch's SGD and optax's `trace(nesterov=True)`). Defaults to `False`.
        name: String. The name of the optimizer. Defaults to `None`.
        **kwargs: any other keyword argument of `keras.optimizers.Optimizer`
            (`gradient_accumulation_steps`, `loss_scale_factor`, `use_ema`, ...).

    References:
        - [Zhao, Xie and Li, 2020](https://arxiv.org/abs/2007.13985), "Stochastic
          Normalized Gradient Descent with Momentum for Large-Batch Training".
    """

    uniform_scale = True  # one factor, 1/||g||, for every variable

    def momentum_norm_bound(self):
        """Lemma 2: ||d_t|| <= 1, so ||u_t|| <= sum_k beta^k = 1/(1-beta)."""
        return 1.0 / (1.0 - self.momentum)

    def _scales(self, grad_norms, weight_norms, indices):
        norm = ops.sqrt(ops.sum(ops.square(grad_norms)))             # ||g_t|| over all variables
        c = ops.where(norm > 0, 1.0 / ops.maximum(norm, 1e-30), 0.0)  # eq. (7): d = g / ||g||; 0 if g = 0
        return ops.broadcast_to(c, ops.shape(grad_norms))
