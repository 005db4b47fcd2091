"""``torch.ao.nn.quantized``: the float-side ``FloatFunctional`` (fxquant's own)."""

from ....nn import FloatFunctional

__all__ = ["FloatFunctional"]
