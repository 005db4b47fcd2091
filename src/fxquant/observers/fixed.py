"""An observer whose scale never changes."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import ConfigError, bounded
from ..numerics import DEFAULT_EPS, QDType
from .base import Observer, ObserverError

__all__ = ["FixedScaleObserver", "check_scale"]

_F32 = torch.finfo(torch.float32)


def check_scale(what: str, value: Any) -> float:
    """``value`` as a scale: a finite positive number whose float32 is a normal number;
    :class:`ConfigError` naming ``what`` otherwise."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number, got {bounded(repr(value))}")
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not math.isfinite(v) or not _F32.tiny <= v <= _F32.max:
        raise ConfigError(
            f"{what} must be a finite positive scale within float32 "
            f"([{_F32.tiny:.3g}, {_F32.max:.3g}]), got {bounded(repr(value), 40)}"
        )
    return v


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
        scale = check_scale("FixedScaleObserver: scale", scale)
        if dtype is not None and not isinstance(dtype, QDType):
            raise ConfigError(f"FixedScaleObserver: dtype must be a QDType (e.g. fxquant.qint8) "
                              f"or None, got {bounded(repr(dtype))}")
        if isinstance(zero_point, bool) or not isinstance(zero_point, int) \
                or not -(1 << 31) <= zero_point < (1 << 31):
            raise ConfigError(f"FixedScaleObserver: zero_point must be an int32 integer, got "
                              f"{bounded(repr(zero_point))}")
        self.dtype = dtype
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor(zero_point, dtype=torch.int32))

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
