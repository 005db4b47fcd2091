"""``aimet_torch.adaround``: :mod:`.adaround_weight` (``Adaround``, ``AdaroundParameters``)."""

from .adaround_weight import Adaround, AdaroundParameters

__all__ = ["Adaround", "AdaroundParameters"]
