"""``pytorch_quantization.nn.modules.quant_pooling``."""

from ..layers import (
    QuantAdaptiveAvgPool1d,
    QuantAdaptiveAvgPool2d,
    QuantAdaptiveAvgPool3d,
    QuantAvgPool1d,
    QuantAvgPool2d,
    QuantAvgPool3d,
    QuantMaxPool1d,
    QuantMaxPool2d,
    QuantMaxPool3d,
)

__all__ = ["QuantAvgPool1d", "QuantAvgPool2d", "QuantAvgPool3d", "QuantAdaptiveAvgPool1d",
           "QuantAdaptiveAvgPool2d", "QuantAdaptiveAvgPool3d", "QuantMaxPool1d",
           "QuantMaxPool2d", "QuantMaxPool3d"]
