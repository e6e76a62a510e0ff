"""LARS: layer-wise adaptive rate scaling, with the paper's two scale functions."""

import math

import keras
from keras import ops

from keras_sngm._base import BIAS_AND_NORM_PATTERNS, NormalizedMomentumOptimizer, _check_patterns, _matches

PHIS = ("identity", "clip")


@keras.saving.register_keras_serializable(package="keras_sngm")
class LARS(NormalizedMomentumOptimizer):
    """LARS: each variable's gradient scaled by a trust ratio before the momentum.

    ```python
    g_s = g_s + weight_decay * w_s                  # weight_decay_mode="l2" (default)
    r_s = trust_coefficient * phi(norm(w_s)) / (norm(g_s) + epsilon)
    u_s = momentum * u_s + r_s * g_s
    w_s = w_s - learning_rate * u_s
    ```

    `phi="identity"` is phi(z) = z (You et al.); `phi="clip"` is
    phi(z) = min(max(z, phi_lower), phi_upper). Zhao et al. show that phi(z) = z can
    converge to a wrong point: on F(x) = (x + 1)^2 / 2 from x > 0 it drives x to 0,
    not to the minimum -1. Variables matching `trust_ratio_exclude` (biases and
    normalization parameters by default) use r_s = 1, as does any variable whose
    phi(norm(w_s)) or norm(g_s) is zero. Non-finite gradients skip the step, as in
    `keras_sngm.SNGM`. The trust ratio divides each gradient by its own norm, so
    `clipnorm` and `global_clipnorm` change only the excluded variables' steps (and,
    with L2 decay, the mix of g_s and the decay added after the clipping).

    Example (trust ratio 0.001 * ||w|| / ||g|| = 0.001 * 5 / 0.5 = 0.01):

    >>> import numpy as np, keras, keras_sngm
    >>> w = keras.Variable(np.array([3.0, 4.0], "float32"))
    >>> opt = keras_sngm.LARS(learning_rate=1.0, trust_coefficient=0.001)
    >>> opt.apply([np.array([0.3, 0.4], "float32")], [w])
    >>> np.round(keras.ops.convert_to_numpy(w), 4)
    array([2.997, 3.996], dtype=float32)
    >>> np.round(keras_sngm.diagnostics(opt)["trust_ratios"], 6)
    array([0.01], dtype=float32)

    Args:
        learning_rate: A float, a `keras.optimizers.schedules.LearningRateSchedule`
            or a callable taking no arguments. Defaults to `0.1`.
        momentum: float in [0, 1). Defaults to `0.9`.
        weight_decay: float >= 0. Defaults to `0.0`.
        weight_decay_mode: `"l2"` (inside the trust ratio's gradient norm) or
            `"decoupled"`. Defaults to `"l2"`.
        weight_decay_exclude: list of regular expressions on `variable.path`.
            Defaults to biases and normalization parameters.
        trust_coefficient: float > 0, the `eta` of You et al. Defaults to `0.001`.
        epsilon: float >= 0 added to norm(g_s). Defaults to `1e-9`.
        phi: `"identity"` or `"clip"`. Defaults to `"identity"`.
        phi_lower: lower bound of `phi="clip"`, >= 0. Defaults to `0.0`.
        phi_upper: upper bound of `phi="clip"`, > phi_lower. Defaults to `10.0`.
        trust_ratio_exclude: list of regular expressions on `variable.path`;
            matching variables take plain momentum steps. Defaults to biases and
            normalization parameters.
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
        - [You, Gitman and Ginsburg, 2017](https://arxiv.org/abs/1708.03888),
          "Large Batch Training of Convolutional Networks".
        - [Zhao, Xie and Li, 2020](https://arxiv.org/abs/2007.13985), section 4.
    """

    default_weight_decay_exclude = BIAS_AND_NORM_PATTERNS
    per_variable_diagnostics = ("block_grad_norms", "trust_ratios")

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=0.0,
        weight_decay_mode="l2",
        weight_decay_exclude=None,
        trust_coefficient=0.001,
        epsilon=1e-9,
        phi="identity",
        phi_lower=0.0,
        phi_upper=10.0,
        trust_ratio_exclude=BIAS_AND_NORM_PATTERNS,
        jit_compile=True,
        diagnostics_every=100,
        nesterov=False,
        name=None,
        **kwargs,
    ):
        if not _positive(trust_coefficient):
            raise ValueError(f"`trust_coefficient` must be a float > 0. Received: trust_coefficient={trust_coefficient!r}")
        if not (_positive(epsilon) or epsilon == 0):
            raise ValueError(f"`epsilon` must be a float >= 0. Received: epsilon={epsilon!r}")
        if phi not in PHIS:
            raise ValueError(f"`phi` must be one of {PHIS}. Received: phi={phi!r}")
        if not (
            isinstance(phi_lower, (int, float))
            and isinstance(phi_upper, (int, float))
            and 0 <= phi_lower < phi_upper
            and math.isfinite(phi_lower)
        ):
            raise ValueError(
                "`phi_lower` and `phi_upper` must satisfy 0 <= phi_lower < phi_upper. "
                f"Received: phi_lower={phi_lower!r}, phi_upper={phi_upper!r}"
            )
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            weight_decay=weight_decay,
            weight_decay_mode=weight_decay_mode,
            weight_decay_exclude=weight_decay_exclude,
            jit_compile=jit_compile,
            diagnostics_every=diagnostics_every,
            nesterov=nesterov,
            name=name,
            **kwargs,
        )
        self.trust_coefficient = float(trust_coefficient)
        self.epsilon = float(epsilon)
        self.phi = phi
        self.phi_lower = float(phi_lower)
        self.phi_upper = float(phi_upper)
        self.trust_ratio_exclude = _check_patterns("trust_ratio_exclude", trust_ratio_exclude)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._trusted = [not _matches(self.trust_ratio_exclude, v) for v in variables]

    def _phi(self, z):
        if self.phi == "clip":
            return ops.clip(z, self.phi_lower, self.phi_upper)  # min(max(z, lower), upper)
        return z

    def _scales(self, grad_norms, weight_norms, indices):
        trusted = [self._trusted[i] for i in indices]
        if not any(trusted):
            return ops.ones_like(grad_norms)
        p = self._phi(weight_norms())                                   # phi(||w_s||)
        trust = self.trust_coefficient * p / (grad_norms + self.epsilon)  # / ||g_s||
        ok = ops.logical_and(ops.logical_and(p > 0, grad_norms > 0), ops.convert_to_tensor(trusted))
        return ops.where(ok, trust, 1.0)                                 # r_s = 1 where excluded or zero

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "trust_coefficient": self.trust_coefficient,
                "epsilon": self.epsilon,
                "phi": self.phi,
                "phi_lower": self.phi_lower,
                "phi_upper": self.phi_upper,
                "trust_ratio_exclude": list(self.trust_ratio_exclude),
            }
        )
        return config


def _positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
