"""keras-sngm: normalized-gradient optimizers for large-batch training in Keras 3.

`SNGM` (global norm), `BlockSNGM` (per-variable norm) and `LARS` (per-variable trust
ratio), and the paper's momentum-SGD baseline `MSGD` (L2 in the gradient, as
PyTorch), after Zhao, Xie and Li, "Stochastic Normalized Gradient Descent with Momentum
for Large-Batch Training" (arXiv 2007.13985).
"""

from keras_sngm.block_sngm import BlockSNGM
from keras_sngm.lars import LARS
from keras_sngm.msgd import MSGD
from keras_sngm.sngm import SNGM

__all__ = ["SNGM", "BlockSNGM", "LARS", "MSGD"]
__version__ = "0.1.0"
