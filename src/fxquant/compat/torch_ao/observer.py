"""torch.ao-style observers (``dtype`` / ``qscheme`` / ``reduce_range`` arguments) on fxquant's.

Each class is an fxquant observer (statistics in buffers) that also accepts torch.ao's
constructor arguments and answers torch.ao's ``calculate_qparams()`` (no arguments).
:func:`grid_of` turns those arguments into fxquant terms: a :class:`~fxquant.QDType`, symmetry
and the channel axis.

What differs from torch.ao: fxquant's symmetric signed grid is ``amax / qmax`` (``amax / 127``
for int8, so ``+amax`` is representable) where torch.ao divides by ``(qmax - qmin) / 2``
(127.5); ``HistogramObserver`` runs fxquant's exact streaming histogram with an MSE range search
(torch.ao's minimises the same L2 error on its own histogram), so its ranges are close, not
equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ... import observers as fxobs
from ...errors import ConfigError
from ...numerics import QDType

__all__ = [
    "Grid",
    "grid_of",
    "ObserverBase",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "HistogramObserver",
    "PlaceholderObserver",
    "NoopObserver",
    "default_observer",
    "default_weight_observer",
    "default_per_channel_weight_observer",
    "default_histogram_observer",
    "default_placeholder_observer",
]

_PER_CHANNEL = {torch.per_channel_affine, torch.per_channel_symmetric}
_SYMMETRIC = {torch.per_tensor_symmetric, torch.per_channel_symmetric}
_QSCHEMES = {torch.per_tensor_affine, torch.per_tensor_symmetric} | _PER_CHANNEL

# torch dtype -> (bits, signed); None: stays float
_DTYPES: dict[Any, tuple[int, bool] | None] = {
    torch.quint8: (8, False),
    torch.uint8: (8, False),
    torch.qint8: (8, True),
    torch.int8: (8, True),
    torch.quint4x2: (4, False),
    torch.uint16: (16, False),
    torch.int16: (16, True),
    torch.qint32: (32, True),
    torch.int32: (32, True),
    torch.float32: None,
    torch.float16: None,
    torch.bfloat16: None,
    torch.float: None,
}


@dataclass(frozen=True)
class Grid:
    """torch.ao observer arguments in fxquant terms.

    Attributes:
        dtype: the integer grid (``reduce_range`` / ``quant_min`` / ``quant_max`` applied), or
            ``None`` for a float (placeholder) observer.
        symmetric: symmetric qscheme.
        ch_axis: channel axis of a per-channel qscheme, else ``None``.
        eps: smallest scale.
    """

    dtype: QDType | None
    symmetric: bool
    ch_axis: int | None
    eps: float


def _grid_from_limits(quant_min: int, quant_max: int, where: str) -> QDType:
    if quant_min == 0 and quant_max > 0 and (quant_max + 1) & quant_max == 0:
        return QDType(int(math.log2(quant_max + 1)), False)
    n = quant_max + 1
    if quant_max > 0 and n & (n - 1) == 0 and quant_min in (-n, -quant_max):
        return QDType(int(math.log2(n)) + 1, True, narrow_range=quant_min == -quant_max)
    raise ConfigError(
        f"{where}: quant_min={quant_min}, quant_max={quant_max} is not an integer grid fxquant "
        "has (unsigned [0, 2^b - 1], signed [-2^(b-1), 2^(b-1) - 1] or its narrow [-q, q])"
    )


def grid_of(kwargs: dict[str, Any], where: str = "observer", per_channel: bool = False) -> Grid:
    """The :class:`Grid` described by torch.ao observer / FakeQuantize keyword arguments.

    ``dtype`` (default ``torch.quint8``), ``qscheme`` (default per-tensor affine, or per-channel
    affine when ``per_channel``), ``reduce_range``, ``quant_min`` / ``quant_max``, ``ch_axis``,
    ``eps``; anything else is ignored.
    """
    dtype = kwargs.get("dtype", torch.quint8)
    default_scheme = torch.per_channel_affine if per_channel else torch.per_tensor_affine
    qscheme = kwargs.get("qscheme", default_scheme)
    eps = float(kwargs.get("eps", torch.finfo(torch.float32).eps))
    if dtype not in _DTYPES:
        raise ConfigError(f"{where}: dtype {dtype} is not supported; use torch.quint8, "
                          "torch.qint8, torch.qint32, torch.int16 or a float dtype")
    if qscheme not in _QSCHEMES:
        raise ConfigError(f"{where}: qscheme {qscheme} is not supported (per_tensor_affine, "
                          "per_tensor_symmetric, per_channel_affine, per_channel_symmetric)")
    base = _DTYPES[dtype]
    axis = kwargs.get("ch_axis")
    ch_axis = (0 if axis is None else int(axis)) if qscheme in _PER_CHANNEL else None
    if base is None:
        return Grid(None, qscheme in _SYMMETRIC, ch_axis, eps)
    qmin, qmax = kwargs.get("quant_min"), kwargs.get("quant_max")
    if qmin is not None and qmax is not None:
        grid = _grid_from_limits(int(qmin), int(qmax), where)
    else:
        grid = QDType(*base)
    if kwargs.get("reduce_range", False):
        grid = QDType(grid.bits - 1, grid.signed, grid.narrow_range)
    return Grid(grid, qscheme in _SYMMETRIC, ch_axis, eps)


class ObserverBase:
    """Mixin: torch.ao's constructor arguments and ``calculate_qparams()`` for an fxquant
    observer.  ``self.grid`` holds them in fxquant terms (:class:`Grid`)."""

    _per_channel = False

    def _set_grid(self, kwargs: dict[str, Any]) -> None:
        self.grid = grid_of(kwargs, type(self).__name__, self._per_channel)
        self.qscheme = kwargs.get(
            "qscheme", torch.per_channel_affine if self._per_channel else torch.per_tensor_affine
        )
        self.reduce_range = bool(kwargs.get("reduce_range", False))

    def calculate_qparams(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """torch.ao: ``(scale, zero_point)`` of what was observed; fxquant's signature
        ``(dtype, symmetric, ...)`` works too."""
        if args or kwargs:
            return super().calculate_qparams(*args, **kwargs)  # type: ignore[misc]
        g = self.grid
        if g.dtype is None:
            raise ConfigError(f"{type(self).__name__}: a float observer has no qparams")
        scale, zp = super().calculate_qparams(g.dtype, g.symmetric, eps=g.eps)  # type: ignore[misc]
        return scale, zp.to(torch.int64)


def _kw(local: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in local.items() if k not in ("self", "__class__", "kwargs")}


class MinMaxObserver(ObserverBase, fxobs.MinMaxObserver):
    """Running min / max (torch.ao arguments)."""

    def __init__(self, dtype: torch.dtype = torch.quint8,
                 qscheme: torch.qscheme = torch.per_tensor_affine, reduce_range: bool = False,
                 quant_min: int | None = None, quant_max: int | None = None,
                 factory_kwargs: dict | None = None, eps: float = torch.finfo(torch.float32).eps,
                 is_dynamic: bool = False, ch_axis: int | None = None, **kwargs: Any) -> None:
        per_channel = qscheme in _PER_CHANNEL
        fxobs.MinMaxObserver.__init__(self, ch_axis=ch_axis if per_channel else None)
        self._per_channel = per_channel
        self._set_grid(_kw(locals()))
        if self.grid.ch_axis is not None:
            self.ch_axis = self.grid.ch_axis


class MovingAverageMinMaxObserver(ObserverBase, fxobs.MovingAverageMinMaxObserver):
    """Moving-average min / max (torch.ao arguments)."""

    def __init__(self, averaging_constant: float = 0.01, dtype: torch.dtype = torch.quint8,
                 qscheme: torch.qscheme = torch.per_tensor_affine, reduce_range: bool = False,
                 quant_min: int | None = None, quant_max: int | None = None,
                 eps: float = torch.finfo(torch.float32).eps, is_dynamic: bool = False,
                 ch_axis: int | None = None, **kwargs: Any) -> None:
        per_channel = qscheme in _PER_CHANNEL
        fxobs.MovingAverageMinMaxObserver.__init__(
            self, averaging_constant, ch_axis=ch_axis if per_channel else None
        )
        self._per_channel = per_channel
        self._set_grid(_kw(locals()))
        if self.grid.ch_axis is not None:
            self.ch_axis = self.grid.ch_axis


class PerChannelMinMaxObserver(MinMaxObserver):
    """Per-channel running min / max (default ``ch_axis=0``, per-channel affine)."""

    _per_channel = True

    def __init__(self, ch_axis: int = 0, dtype: torch.dtype = torch.quint8,
                 qscheme: torch.qscheme = torch.per_channel_affine, **kwargs: Any) -> None:
        super().__init__(dtype=dtype, qscheme=qscheme, ch_axis=ch_axis, **kwargs)


class MovingAveragePerChannelMinMaxObserver(MovingAverageMinMaxObserver):
    """Per-channel moving-average min / max."""

    _per_channel = True

    def __init__(self, averaging_constant: float = 0.01, ch_axis: int = 0,
                 dtype: torch.dtype = torch.quint8,
                 qscheme: torch.qscheme = torch.per_channel_affine, **kwargs: Any) -> None:
        super().__init__(averaging_constant, dtype=dtype, qscheme=qscheme, ch_axis=ch_axis,
                         **kwargs)


class HistogramObserver(ObserverBase, fxobs.HistogramObserver):
    """Histogram with an MSE (L2) range search -- fxquant's exact streaming histogram."""

    def __init__(self, bins: int = 2048, dtype: torch.dtype = torch.quint8,
                 qscheme: torch.qscheme = torch.per_tensor_affine, reduce_range: bool = False,
                 quant_min: int | None = None, quant_max: int | None = None,
                 eps: float = torch.finfo(torch.float32).eps, is_dynamic: bool = False,
                 ch_axis: int | None = None, **kwargs: Any) -> None:
        bins = 1 << max(4, (int(bins) - 1).bit_length())  # fxquant's bins are a power of two
        fxobs.HistogramObserver.__init__(self, fxobs.RangeMethod.MSE, bins)
        self._set_grid(_kw(locals()))


class PlaceholderObserver(ObserverBase, fxobs.MinMaxObserver):
    """Keeps a tensor in float (``dtype=torch.float``); anything else quantizes per tensor."""

    def __init__(self, dtype: torch.dtype = torch.float32, **kwargs: Any) -> None:
        fxobs.MinMaxObserver.__init__(self)
        self._set_grid({"dtype": dtype, **kwargs})


class NoopObserver(PlaceholderObserver):
    """torch.ao's no-op observer: the tensor stays float."""


default_observer = MinMaxObserver.with_args(quant_min=0, quant_max=127)
"""torch.ao's ``default_observer``: quint8 min-max with a 7-bit range."""
default_weight_observer = MinMaxObserver.with_args(
    dtype=torch.qint8, qscheme=torch.per_tensor_symmetric
)
default_per_channel_weight_observer = PerChannelMinMaxObserver.with_args(
    dtype=torch.qint8, qscheme=torch.per_channel_symmetric
)
default_histogram_observer = HistogramObserver.with_args(quant_min=0, quant_max=127)
default_placeholder_observer = PlaceholderObserver
