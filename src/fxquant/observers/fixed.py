"""An observer whose scale never changes."""

from __future__ import annotations

import torch

from ..numerics import DEFAULT_EPS, QDType
from .base import Observer, ObserverError

__all__ = ["FixedScaleObserver"]


class FixedScaleObserver(Observer):
    """Returns exactly ``scale`` and ``zero_point`` whatever it sees.

    Args:
        scale: the fixed positive scale.
        dtype: optional dtype this scale is meant for; a quantizer of another dtype raises.
        zero_point: fixed zero point (default 0, i.e. symmetric).

    Observed data is still checked for NaN / Inf.
    """

    def __init__(self, scale: float, dtype: QDType | None = None, zero_point: int = 0) -> None:
        super().__init__(None)
        if not float(scale) > 0.0:
            raise ValueError(f"FixedScaleObserver: scale must be > 0, got {scale}")
        self.dtype = dtype
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor(int(zero_point), dtype=torch.int32))

    def _observe(self, x: torch.Tensor) -> None:
        self._check_finite(*torch.aminmax(x.reshape(-1)))  # min alone misses +Inf

    def has_stats(self) -> bool:
        return True

    def compute_range(self, dtype: QDType, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        zp = self.zero_point.float()
        return (dtype.qmin - zp) * self.scale, (dtype.qmax - zp) * self.scale

    def calculate_qparams(
        self, dtype: QDType, symmetric: bool, power_of_two: bool = False, eps: float = DEFAULT_EPS
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dtype is not None and self.dtype != dtype:
            raise ObserverError(
                f"quantizer {self.name or '<unnamed>'!r}: FixedScaleObserver was given dtype "
                f"{self.dtype} but the quantizer uses {dtype}; make them agree"
            )
        if not dtype.qmin <= int(self.zero_point) <= dtype.qmax:
            raise ObserverError(
                f"quantizer {self.name or '<unnamed>'!r}: fixed zero_point {int(self.zero_point)} "
                f"is outside {dtype} [{dtype.qmin}, {dtype.qmax}]"
            )
        return self.scale.clone(), self.zero_point.clone()

    def extra_repr(self) -> str:
        return f"scale={float(self.scale)}, zero_point={int(self.zero_point)}, dtype={self.dtype}"
