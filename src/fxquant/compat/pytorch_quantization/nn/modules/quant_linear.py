"""``pytorch_quantization.nn.modules.quant_linear``."""

from ..layers import QuantLinear

__all__ = ["QuantLinear"]
