"""``horizon_plugin_pytorch.nn.quantized``: fxquant's ``FloatFunctional``."""

from ....nn import FloatFunctional

__all__ = ["FloatFunctional"]
