"""Momentum SGD with L2 in the gradient: the paper's MSGD baseline (PyTorch's SGD)."""

import keras
from keras import ops

from keras_sngm._base import NormalizedMomentumOptimizer


@keras.saving.register_keras_serializable(package="keras_sngm")
class MSGD(NormalizedMomentumOptimizer):
    """Momentum SGD as `torch.optim.SGD(momentum, weight_decay)` steps: the paper's
    MSGD baseline (Zhao et al., eq. 3 with L2 regularization).

    ```python
    g = g + weight_decay * w              # weight_decay_mode="l2" (default)
    u = momentum * u + g
    w = w - learning_rate * u
    ```

    It differs from `keras.optimizers.SGD(momentum, weight_decay)` in two ways:
    Keras decays decoupled (`w -= lr * wd * w`, outside the momentum: about
    `1 - momentum` times the effective decay of L2 in the momentum), and Keras folds the
    learning rate into the velocity (`v = momentum * v - lr * g`), which differs from
    this rule whenever the learning rate changes. It is SNGM with the normalization
    factor fixed at 1, and shares its XLA update, non-finite step skipping and
    `diagnostics()`.

    Example (two steps with the same gradient: u = 1, then 0.9 + 1):

    >>> import numpy as np, keras, keras_sngm
    >>> w = keras.Variable(np.ones(2, "float32"))
    >>> opt = keras_sngm.MSGD(learning_rate=0.1, momentum=0.9)
    >>> for _ in range(2):
    ...     opt.apply([np.ones(2, "float32")], [w])
    >>> np.round(keras.ops.convert_to_numpy(w), 4)
    array([0.71, 0.71], dtype=float32)

    Args:
        learning_rate: A float, a `keras.optimizers.schedules.LearningRateSchedule`
            or a callable taking no arguments. Defaults to `0.1`.
        momentum: float in [0, 1). Defaults to `0.9`.
        weight_decay: float >= 0. Defaults to `0.0`.
        weight_decay_mode: `"l2"` (added to the gradient, as PyTorch and the paper)
            or `"decoupled"`. Defaults to `"l2"`.
        weight_decay_exclude: list of regular expressions on `variable.path`.
            Defaults to `()`.
        jit_compile: whether the update is one XLA-compiled function. Defaults to `True`.
        diagnostics_every: int >= 0, as in `SNGM`. Defaults to `100`.
        nesterov: bool, as in `SNGM` (PyTorch's `SGD(nesterov=True)`). Defaults to `False`.
        name: String. Defaults to `None`.
        **kwargs: any other keyword argument of `keras.optimizers.Optimizer`.

    References:
        - [Zhao, Xie and Li, 2020](https://arxiv.org/abs/2007.13985), the MSGD baseline
          of their experiments.
        - [Sutskever et al., 2013](https://proceedings.mlr.press/v28/sutskever13.html),
          "On the importance of initialization and momentum in deep learning".
    """

    normalized = False  # its step length is lr * ||u||, which grows with ||g||

    def _scales(self, grad_norms, weight_norms, indices):
        return ops.ones_like(grad_norms)   # d = g: no normalization
