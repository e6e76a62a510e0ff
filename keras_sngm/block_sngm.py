"""Block-wise SNGM: SNGM with the norm taken per variable."""

import math

import keras
from keras import ops

from keras_sngm._base import NormalizedMomentumOptimizer


@keras.saving.register_keras_serializable(package="keras_sngm")
class BlockSNGM(NormalizedMomentumOptimizer):
    """Block-wise SNGM: each variable (block s) normalized by its own norm.

    Zhao et al., eq. 13-14:

    ```python
    g_s = g_s + weight_decay * w_s        # weight_decay_mode="l2" (default)
    u_s = momentum * u_s + g_s / norm(g_s)
    w_s = w_s - learning_rate * u_s
    ```

    The paper proves this is never faster than `SNGM` (whose norm spans all
    variables); it is here for comparison. Weight decay, exclusions, non-finite
    gradients and `**kwargs` behave as in `keras_sngm.SNGM`. Since each variable is
    divided by its own norm, neither `clipnorm` nor `global_clipnorm` changes the step
    unless L2 decay is on (added after the clipping); `clipvalue` does.

    Example (each variable normalized by its own norm):

    >>> import numpy as np, keras, keras_sngm
    >>> w, b = keras.Variable(np.ones(2, "float32")), keras.Variable(np.zeros(1, "float32"))
    >>> opt = keras_sngm.BlockSNGM(learning_rate=0.1)
    >>> opt.apply([np.array([30.0, 0.0], "float32"), np.array([40.0], "float32")], [w, b])
    >>> np.round(keras.ops.convert_to_numpy(w), 4), np.round(keras.ops.convert_to_numpy(b), 4)
    (array([0.9, 1. ], dtype=float32), array([-0.1], dtype=float32))

    Args:
        learning_rate: A float, a `keras.optimizers.schedules.LearningRateSchedule`
            or a callable taking no arguments. Defaults to `0.1`.
        momentum: float in [0, 1). Defaults to `0.9`.
        weight_decay: float >= 0. Defaults to `0.0`.
        weight_decay_mode: `"l2"` or `"decoupled"`. Defaults to `"l2"`.
        weight_decay_exclude: list of regular expressions on `variable.path`.
            Defaults to `()`.
        jit_compile: whether the update is one XLA-compiled function.
            Defaults to `True`.
        diagnostics_every: int >= 0; the momentum and update norms kept for
            `diagnostics()` are refreshed every this many steps (one more read of
            the momentum); 0 turns them off. Defaults to `100`.
        nesterov: bool; look-ahead step `w = w - learning_rate * (momentum * u + d)`
            with `u` already updated and `d` the direction that entered it (as
            PyTorch's SGD and optax's `trace(nesterov=True)`). Defaults to `False`.
        name: String. The name of the optimizer. Defaults to `None`.
        **kwargs: any other keyword argument of `keras.optimizers.Optimizer`.

    References:
        - [Zhao, Xie and Li, 2020](https://arxiv.org/abs/2007.13985), section 4.
    """

    per_variable_diagnostics = ("block_grad_norms",)

    def _scales(self, grad_norms, weight_norms, indices):
        return ops.where(grad_norms > 0, 1.0 / ops.maximum(grad_norms, 1e-30), 0.0)  # eq. (13): g_s / ||g_s||

    def momentum_norm_bound(self):
        """Lemma 2 per block: ||u_s|| <= 1/(1-beta) for each of the S variables, so the whole
        momentum ||u_t|| <= sqrt(S)/(1-beta) (approached when each block's direction stays
        the same), not SNGM's 1/(1-beta)."""
        return math.sqrt(len(self.momentums)) / (1.0 - self.momentum) if self.built else None
