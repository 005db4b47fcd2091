"""``modelopt.torch.quantization.nn``: ``TensorQuantizer`` and the quantized layers."""

from ..pytorch_quantization.nn import *  # noqa: F403
from ..pytorch_quantization.nn import __all__  # noqa: F401
