"""``aimet_torch.v2.quantsim``: :class:`~fxquant.compat.aimet.quantsim.QuantizationSimModel`."""

from ..quantsim import QuantizationSimModel

__all__ = ["QuantizationSimModel"]
