"""Histogram observers: a streaming histogram, then a percentile / MSE / entropy range search.

The histogram has a fixed number of bins (a power of two) over ``[-R, R)``, where ``R`` is the
smallest power of two strictly above every ``|x|`` seen so far.  Value ``x`` falls in bin
``floor(x * (bins / 2) / R) + bins / 2``: multiplying by a power of two is exact in floating
point, so the index is exact.  When a batch exceeds ``R``, ``R`` grows by ``f = 2**d`` and old
bin ``k`` (counted from the centre) moves to ``floor(k / f)`` -- exactly the bin its values would
have gone to had ``R`` been that large from the start.  The histogram (and so the range) is
therefore a function of the multiset of observed values only: bit-identical whatever the batch
size, split or order, with memory bounded by ``bins``.

``R`` is strictly above ``max|x|`` (``2**(floor(log2 max|x|) + 1)``) rather than
``2**ceil(log2 max|x|)``: a value equal to ``R`` would need a closed last bin, and that bin would
merge inconsistently on growth.  The data thus always covers more than half of the magnitude
range (``R / 2 <= max|x| < R``).
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError, bounded
from ..numerics import QDType, native
from ..numerics.range_search import RangeMethod, search_range
from .base import Observer, ObserverError, channel_aminmax, channel_view

__all__ = ["HistogramObserver", "PercentileObserver", "MSEObserver"]

# log2(R) never goes below this: data with max|x| < 2**-100 lands in the two centre bins.
# It also keeps the scale factor 2**(log2(bins / 2) - log2 R) a normal float32.
_MIN_EXP = -100


class HistogramObserver(Observer):
    """Streaming fixed-bin histogram; the range comes from :func:`fxquant.numerics.range_search`.

    Args:
        method: a :class:`RangeMethod` (or its string value): ``"entropy"`` (TensorRT KL
            calibration), ``"mse"`` or ``"percentile"``.
        bins: number of bins over ``[-R, R)``; a power of two, at least 16.  Symmetric
            searches see ``bins / 2`` magnitude bins, of which the data fills more than half.
        percentile: used by the percentile method, in ``(0, 100]``.
        ch_axis: ``None`` per tensor, else the channel axis (one histogram and ``R`` per channel).

    Buffers: ``hist`` (int64 ``[bins]`` or ``[C, bins]``), ``range_exp`` (int64 ``log2 R``, 0-d or
    ``[C]``), ``min_val`` / ``max_val`` (float32 exact data range).  The returned range is clipped
    to ``[min_val, max_val]``.
    """

    def __init__(
        self,
        method: RangeMethod | str = RangeMethod.ENTROPY,
        bins: int = 2048,
        percentile: float = 99.99,
        ch_axis: int | None = None,
    ) -> None:
        super().__init__(ch_axis)
        self.method = RangeMethod.parse(method)
        name = type(self).__name__
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 16 or bins & (bins - 1):
            raise ConfigError(f"{name}: bins must be a power of two >= 16, got "
                              f"{bounded(repr(bins))}")
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) \
                or not 0.0 < percentile <= 100.0:
            raise ConfigError(f"{name}: percentile must be in (0, 100], got "
                              f"{bounded(repr(percentile))}")
        self.bins = bins
        self.percentile = float(percentile)
        per_channel = ch_axis is not None
        self.register_buffer(
            "hist", torch.zeros((0, bins) if per_channel else (bins,), dtype=torch.int64)
        )
        shape = (0,) if per_channel else ()
        self.register_buffer("range_exp", torch.full(shape, _MIN_EXP, dtype=torch.int64))
        self.register_buffer("min_val", torch.full(shape, float("inf")))
        self.register_buffer("max_val", torch.full(shape, float("-inf")))

    # -- observing ----------------------------------------------------------------------------

    def _observe(self, x: torch.Tensor) -> None:
        if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # exact widening
        if self.ch_axis is None:
            self._observe_tensor(x)
            return
        v = channel_view(x, self.ch_axis)
        lo, hi = channel_aminmax(v)
        self._check_finite(lo, hi)
        if self.hist.shape[0] != v.shape[0]:
            if self.hist.shape[0] != 0:
                raise ObserverError(
                    f"quantizer {self.name or '<unnamed>'!r} ({type(self).__name__}) saw "
                    f"{v.shape[0]} channels on axis {self.ch_axis}, previously "
                    f"{self.hist.shape[0]}"
                )
            self._init_channels(v.shape[0], v.device)
        exp = self.range_exp
        new_exp = torch.maximum(exp, _exponent_above(torch.maximum(-lo, hi)))
        hist = self.hist
        if bool((new_exp > exp).any()):
            hist = _regrid(hist, new_exp - exp)
        hist = hist + _bin_counts(v, new_exp, self.bins)
        self._store(hist, new_exp, lo.float(), hi.float())

    def _observe_tensor(self, x: torch.Tensor) -> None:
        """Per-tensor observation: one full reduction for the range, one pass to bin.

        Once the range holds the data (after the first batches), a contiguous float32 batch
        takes one native pass instead (:func:`fxquant.numerics.native.histogram_observe`: the
        same counts, minimum and maximum).  Otherwise: the same arithmetic as the per-channel
        path (so the same histogram), with a full-tensor ``aminmax`` (a reduction along
        ``dim=1`` of a ``[1, N]`` view is several times slower) and the bins counted by
        :func:`_bin_counts_flat`.  On the CPU the range exponent is
        found from the two numbers of the batch range (``math.frexp`` is exact, as
        ``torch.frexp``) and the counts are added in place.
        """
        if native.histogram_observe(x, self.hist, self.range_exp, self.min_val, self.max_val):
            return  # the batch fits the current range: one native pass, the same state
        lo, hi = torch.aminmax(x)
        self._check_finite(lo, hi)
        if x.device.type == "cpu" and self.range_exp.device.type == "cpu":
            amax = max(-lo.item(), hi.item())
            exp = max(math.frexp(amax)[1], _MIN_EXP) if amax > 0 else _MIN_EXP
            old = int(self.range_exp)
            new = max(old, exp)
            counts = _bin_counts_flat(x, new, self.bins)
            if new > old:
                grown = _regrid(self.hist[None], torch.tensor([new - old]))[0]
                self.hist.copy_(grown.add_(counts))
                self.range_exp.fill_(new)
            else:
                self.hist.add_(counts)
            torch.minimum(self.min_val, lo.float(), out=self.min_val)
            torch.maximum(self.max_val, hi.float(), out=self.max_val)
            return
        exp = self.range_exp
        new_exp = torch.maximum(exp, _exponent_above(torch.maximum(-lo, hi)))
        hist = self.hist
        grow = int(new_exp - exp)
        if grow > 0:
            hist = _regrid(hist[None], (new_exp - exp)[None])[0]
        hist = hist + _bin_counts_flat(x, int(new_exp), self.bins)
        self._store(hist, new_exp, lo.float(), hi.float())

    def _init_channels(self, c: int, device: torch.device) -> None:
        self.hist = torch.zeros(c, self.bins, dtype=torch.int64, device=device)
        self.range_exp = torch.full((c,), _MIN_EXP, dtype=torch.int64, device=device)
        self.min_val = torch.full((c,), float("inf"), device=device)
        self.max_val = torch.full((c,), float("-inf"), device=device)

    def _store(self, hist, exp, lo, hi) -> None:
        self.hist.copy_(hist)
        self.range_exp.copy_(exp)
        torch.minimum(self.min_val, lo, out=self.min_val)
        torch.maximum(self.max_val, hi, out=self.max_val)

    # -- answering ----------------------------------------------------------------------------

    def has_stats(self) -> bool:
        return self.min_val.numel() > 0 and bool((self.min_val <= self.max_val).all())

    def histogram(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(counts, lo, width)`` of the current histogram (float64 ``lo`` / ``width``)."""
        r = _pow2(self.range_exp)
        return self.hist, -r, 2.0 * r / self.bins

    def compute_range(self, dtype: QDType, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        counts, lo, width = self.histogram()
        r_lo, r_hi = search_range(
            self.method, counts, lo, width, dtype, symmetric, percentile=self.percentile
        )
        r_lo = torch.maximum(r_lo, self.min_val.double())
        r_hi = torch.minimum(r_hi, self.max_val.double())
        r_lo = torch.minimum(r_lo, r_hi)  # a range inside one bin may end below min_val
        return r_lo.float(), r_hi.float()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        hist = state_dict.get(prefix + "hist")
        if hist is not None and hist.shape[-1] != self.bins:
            raise ObserverError(
                f"{type(self).__name__} has bins={self.bins} but the checkpoint's histogram at "
                f"{prefix}hist has {hist.shape[-1]}; build the observer with bins={hist.shape[-1]}"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- merging (distributed calibration, see fxquant.distributed) ---------------------------

    def widen_(self, exp: torch.Tensor) -> None:
        """Grow ``R`` to ``2**exp`` (``exp >= range_exp``; ``[C]`` per channel).

        Each count moves to the bin its value would have had at that range from the start, so
        the state stays exactly that of the same data observed with the larger range.
        """
        exp = exp.to(self.range_exp)
        grow = exp - self.range_exp
        if bool((grow < 0).any()):
            raise ValueError(f"widen_: exponent {exp.tolist()} is below range_exp")
        if bool((grow > 0).any()):
            self.hist.copy_(_regrid_rows(self.hist, grow))
        self.range_exp.copy_(exp)

    def merge_(self, other: HistogramObserver) -> None:
        """Add everything ``other`` observed, exactly.

        The histogram is a function of the multiset of observed values, so afterwards this
        observer holds bit for bit what it would hold had it also seen ``other``'s data.  Both
        need the same ``bins`` (and channel count, once both have seen data).
        """
        if not other.has_stats():
            return
        if self.hist.shape != other.hist.shape:
            if self.hist.shape[0] != 0 or other.hist.dim() != 2 or other.bins != self.bins:
                raise ObserverError(
                    f"quantizer {self.name or '<unnamed>'!r}: cannot merge a histogram of shape "
                    f"{tuple(other.hist.shape)} into one of shape {tuple(self.hist.shape)}"
                )
            self._init_channels(other.hist.shape[0], self.hist.device)  # nothing seen here yet
        exp = torch.maximum(self.range_exp, other.range_exp)
        self.widen_(exp)
        theirs = other.hist
        if bool((exp > other.range_exp).any()):
            theirs = _regrid_rows(theirs, exp - other.range_exp)
        self._store(self.hist + theirs, exp, other.min_val, other.max_val)

    def reset(self) -> None:
        """Forget everything observed."""
        self.hist.zero_()
        self.range_exp.fill_(_MIN_EXP)
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))

    def extra_repr(self) -> str:
        return (
            f"method={self.method.value}, bins={self.bins}, percentile={self.percentile}, "
            f"ch_axis={self.ch_axis}"
        )


class PercentileObserver(HistogramObserver):
    """:class:`HistogramObserver` clipping at a percentile of the data."""

    def __init__(
        self, percentile: float = 99.99, bins: int = 2048, ch_axis: int | None = None
    ) -> None:
        super().__init__(RangeMethod.PERCENTILE, bins, percentile, ch_axis)


class MSEObserver(HistogramObserver):
    """:class:`HistogramObserver` minimising the expected fake-quantization MSE."""

    def __init__(self, bins: int = 2048, ch_axis: int | None = None) -> None:
        super().__init__(RangeMethod.MSE, bins, ch_axis=ch_axis)


# ---------------------------------------------------------------------------------------------
# exact binning


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """``2.0**e`` in float64 (exact for integer ``e``)."""
    return torch.exp2(e.to(torch.float64))


def _exponent_above(amax: torch.Tensor) -> torch.Tensor:
    """Smallest ``e >= _MIN_EXP`` with ``amax < 2**e`` (int64)."""
    _, e = torch.frexp(amax)  # amax = m * 2**e, m in [0.5, 1): amax < 2**e
    e = e.to(torch.int64)
    return torch.where(amax > 0, e, _MIN_EXP).clamp(min=_MIN_EXP)


def _regrid(hist: torch.Tensor, grow: torch.Tensor) -> torch.Tensor:
    """Merge each row's bins for ``R`` grown by ``2**grow`` (int64 ``[C]``, ``>= 0``)."""
    bins = hist.shape[1]
    half = bins // 2
    k = torch.arange(-half, half, device=hist.device)
    # beyond a factor bins/2 every bin lands in one of the two centre bins
    shift = grow.clamp(max=half.bit_length() - 1)[:, None]
    target = torch.bitwise_right_shift(k[None, :], shift) + half  # floor(k / 2**shift)
    return torch.zeros_like(hist).scatter_add_(1, target, hist)


def _regrid_rows(hist: torch.Tensor, grow: torch.Tensor) -> torch.Tensor:
    """:func:`_regrid` for a per-tensor ``[bins]`` (0-d ``grow``) or per-channel histogram."""
    if hist.dim() == 1:
        return _regrid(hist[None], grow.reshape(1))[0]
    return _regrid(hist, grow)


def _bin_counts(v: torch.Tensor, exp: torch.Tensor, bins: int) -> torch.Tensor:
    """Exact int64 ``[C, bins]`` histogram of the rows of ``v`` over ``[-2**exp, 2**exp)``."""
    half = bins // 2
    c = v.shape[0]
    shift = (half.bit_length() - 1) - exp  # x * 2**shift lies in [-half, half)
    factor = _pow2(shift)[:, None].to(v.dtype)  # exact: a normal float32 by _MIN_EXP
    scaled = torch.floor_(v * factor)
    if int(shift.min()) < 0:
        # scaling down, a tiny negative value may underflow to -0.0: it still belongs to bin -1
        scaled = torch.where((scaled == 0) & (v < 0), -1.0, scaled)
    idx = scaled.to(torch.int64).add_(half)
    if c > 1:
        idx.add_(torch.arange(c, device=v.device)[:, None] * bins)
    return torch.bincount(idx.reshape(-1), minlength=c * bins).reshape(c, bins)


def _bin_counts_flat(x: torch.Tensor, exp: int, bins: int) -> torch.Tensor:
    """Exact int64 ``[bins]`` histogram of all of ``x`` over ``[-2**exp, 2**exp)``.

    The same bins as :func:`_bin_counts` (``floor(x * 2**shift)``, exact: a multiplication by a
    power of two), counted by the native kernel (:mod:`fxquant.numerics.native`) where it
    applies, else in fewer passes than :func:`_bin_counts`: ``mul``, ``floor_``,
    ``add_(bins / 2)`` in float (integers of at most ``bins`` in magnitude are exact), int32
    indices, ``bincount``.  Any layout of ``x`` works (no reshape copy of a non-contiguous
    tensor before the first pass).
    """
    half = bins // 2
    shift = (half.bit_length() - 1) - exp
    counts = native.histogram(x, shift, bins)  # one pass, per-thread counts (CPU)
    if counts is not None:
        return counts
    if bins > 1 << 23:  # float index arithmetic would not be exact: the general path
        return _bin_counts(x.reshape(1, -1), torch.tensor([exp], device=x.device), bins)[0]
    factor = _pow2(torch.tensor(shift)).to(x.dtype)  # exact: a normal float by _MIN_EXP
    scaled = torch.mul(x, factor.to(x.device)).floor_()
    if shift < 0:
        # scaling down, a tiny negative value may underflow to -0.0: it still belongs to bin -1
        scaled = torch.where((scaled == 0) & (x < 0), -1.0, scaled)
    idx = scaled.add_(half).to(torch.int32)
    return torch.bincount(idx.reshape(-1), minlength=bins).to(torch.int64)
