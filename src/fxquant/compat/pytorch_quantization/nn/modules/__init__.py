"""``pytorch_quantization.nn.modules``: NVIDIA's module layout (``tensor_quantizer``,
``quant_conv``, ``quant_linear``, ``quant_pooling``, ``quant_rnn``)."""

from ..layers import *  # noqa: F403
from ..layers import __all__ as _layers
from ..tensor_quantizer import TensorQuantizer

__all__ = ["TensorQuantizer", *_layers]
