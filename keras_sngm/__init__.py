"""keras-sngm: normalized-gradient optimizers for large-batch training in Keras 3.

`SNGM` (global norm), `BlockSNGM` (per-variable norm) and `LARS` (per-variable trust
ratio), and the paper's momentum-SGD baseline `MSGD` (L2 in the gradient, as
PyTorch), after Zhao, Xie and Li, "Stochastic Normalized Gradient Descent with Momentum
for Large-Batch Training" (arXiv 2007.13985).
"""

import keras

# The Keras versions the test suite runs on: the oldest and the newest supported.
SUPPORTED_KERAS = ("3.12.0", "3.16.0")  # >= first, < second


def _version(text):
    return tuple(int(p) for p in text.split("+")[0].split(".")[:3] if p.isdigit())


def check_keras_version(installed):
    """Raises ImportError unless `installed` is in the supported range."""
    low, high = SUPPORTED_KERAS
    if not _version(low) <= _version(installed) < _version(high):
        raise ImportError(f"keras_sngm supports Keras >={low},<{high}; the installed Keras is {installed}. "
                          f"Install a supported one: pip install 'keras>={low},<{high}'")


check_keras_version(keras.__version__)

from keras_sngm.block_sngm import BlockSNGM  # noqa: E402
from keras_sngm.lars import LARS  # noqa: E402
from keras_sngm.msgd import MSGD  # noqa: E402
from keras_sngm.sngm import SNGM  # noqa: E402
from keras_sngm import callbacks  # noqa: E402  (SNGMDiagnostics)


def diagnostics(optimizer):
    """`optimizer.diagnostics()` of the keras_sngm optimizer inside `optimizer`: itself,
    or the one Keras' `LossScaleOptimizer` (a mixed_float16 model's `model.optimizer`) or
    any other wrapper with an `inner_optimizer` holds.

    Args:
        optimizer: a keras_sngm optimizer, or a wrapper of one.

    Returns:
        The dict of `NormalizedMomentumOptimizer.diagnostics()`.
    """
    inner = optimizer
    while not hasattr(inner, "diagnostics") and hasattr(inner, "inner_optimizer"):
        inner = inner.inner_optimizer
    if not hasattr(inner, "diagnostics"):
        raise TypeError(f"{type(optimizer).__name__} holds no keras_sngm optimizer (SNGM, BlockSNGM, LARS, MSGD). "
                        f"Received: {optimizer!r}")
    return inner.diagnostics()


__all__ = ["SNGM", "BlockSNGM", "LARS", "MSGD", "callbacks", "diagnostics"]
__version__ = "0.2.0"
