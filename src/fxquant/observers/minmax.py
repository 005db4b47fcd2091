"""Running min/max and moving-average min/max observers."""

from __future__ import annotations

import torch

from ..errors import ConfigError, bounded
from ..numerics import QDType
from .base import Observer, channel_aminmax, channel_view

__all__ = ["MinMaxObserver", "MovingAverageMinMaxObserver"]


class MinMaxObserver(Observer):
    """Tracks the running minimum and maximum (per tensor, or per channel with ``ch_axis``).

    Buffers: ``min_val`` / ``max_val`` (0-d, or ``[C]`` after the first per-channel batch).
    """

    def __init__(self, ch_axis: int | None = None) -> None:
        super().__init__(ch_axis)
        shape = (0,) if ch_axis is not None else ()
        self.register_buffer("min_val", torch.full(shape, float("inf")))
        self.register_buffer("max_val", torch.full(shape, float("-inf")))

    def _batch_minmax(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ch_axis is None:
            lo, hi = torch.aminmax(x)  # any layout: no reshape copy of a non-contiguous x
        else:
            lo, hi = channel_aminmax(channel_view(x, self.ch_axis))
        lo, hi = lo.float(), hi.float()
        self._check_finite(lo, hi)
        return lo, hi

    def _combine(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.min_val.shape != lo.shape:  # first per-channel batch
            self.min_val = lo.clone()
            self.max_val = hi.clone()
            return
        torch.minimum(self.min_val, lo, out=self.min_val)
        torch.maximum(self.max_val, hi, out=self.max_val)

    def _observe(self, x: torch.Tensor) -> None:
        self._combine(*self._batch_minmax(x))

    def has_stats(self) -> bool:
        lo, hi = self.min_val, self.max_val
        if lo.dim() == 0 and lo.device.type == "cpu":
            return lo.item() <= hi.item()  # two reads instead of three tensor operations
        return lo.numel() > 0 and bool((lo <= hi).all())

    def compute_range(self, dtype: QDType, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min_val, self.max_val

    def reset(self) -> None:
        """Forget everything observed."""
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of per-batch min/max: ``m += c * (batch - m)``.

    The first batch initialises the average.  ``averaging_constant`` is ``c`` in ``(0, 1]``.
    """

    def __init__(self, averaging_constant: float = 0.01, ch_axis: int | None = None) -> None:
        if isinstance(averaging_constant, bool) \
                or not isinstance(averaging_constant, (int, float)) \
                or not 0.0 < averaging_constant <= 1.0:
            raise ConfigError(
                f"{type(self).__name__}: averaging_constant must be in (0, 1], got "
                f"{bounded(repr(averaging_constant))}"
            )
        super().__init__(ch_axis)
        self.averaging_constant = float(averaging_constant)

    def _combine(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.min_val.shape != lo.shape or not self.has_stats():
            self.min_val = lo.clone()
            self.max_val = hi.clone()
            return
        c = self.averaging_constant
        self.min_val.add_(lo - self.min_val, alpha=c)
        self.max_val.add_(hi - self.max_val, alpha=c)

    def extra_repr(self) -> str:
        return f"averaging_constant={self.averaging_constant}, ch_axis={self.ch_axis}"
