"""Int32 bias of a quantized conv / linear: see :mod:`fxquant.numerics.bias` (moved there so that
the runtime simulation below the export layer rounds biases with the same functions)."""

from ..numerics.bias import (
    INT32_MAX,
    bias_scale,
    channel_scale,
    fix_weight_scale,
    overflowing_channels,
    quantize_bias,
)

__all__ = [
    "INT32_MAX",
    "bias_scale",
    "channel_scale",
    "overflowing_channels",
    "fix_weight_scale",
    "quantize_bias",
]
