"""``aimet_torch.v2.auto_quant``: :class:`~fxquant.compat.aimet.auto_quant.AutoQuant`."""

from ..auto_quant import AutoQuant

__all__ = ["AutoQuant"]
