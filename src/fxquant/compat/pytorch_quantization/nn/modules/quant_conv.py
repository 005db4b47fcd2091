"""``pytorch_quantization.nn.modules.quant_conv``."""

from ..layers import (
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantConvTranspose1d,
    QuantConvTranspose2d,
    QuantConvTranspose3d,
)

__all__ = ["QuantConv1d", "QuantConv2d", "QuantConv3d", "QuantConvTranspose1d",
           "QuantConvTranspose2d", "QuantConvTranspose3d"]
