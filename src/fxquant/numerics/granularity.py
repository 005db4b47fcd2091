"""Quantization granularity as data: one scale for the tensor, or one per channel."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, bounded

__all__ = ["PerTensor", "PerChannel", "Granularity", "granularity_from_axis"]


@dataclass(frozen=True)
class PerTensor:
    """A single (scale, zero_point) pair for the whole tensor."""

    def __repr__(self) -> str:
        return "per_tensor"


@dataclass(frozen=True)
class PerChannel:
    """One (scale, zero_point) pair per slice along ``axis``.

    Conv / Linear weights use axis 0 (output channels); ConvTranspose weights axis 1.
    """

    axis: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise ConfigError(f"PerChannel: axis must be an int, got {bounded(repr(self.axis))}")

    def __repr__(self) -> str:
        return f"per_channel(axis={self.axis})"


Granularity = PerTensor | PerChannel


def granularity_from_axis(ch_axis: int | None) -> Granularity:
    """``None`` -> :class:`PerTensor`, an int -> :class:`PerChannel` on that axis."""
    return PerTensor() if ch_axis is None else PerChannel(int(ch_axis))
