"""Choosing a clipping range from a histogram: percentile, MSE and entropy (KL) search.

Pure functions over uniform-bin histograms.  A histogram is ``counts`` of shape ``[bins]``
(per tensor) or ``[C, bins]`` (one row per channel), with bin ``j`` covering
``[lo + j * width, lo + (j + 1) * width)``; ``lo`` and ``width`` are floats or ``[C]`` tensors.
Zero must lie on a bin edge (``-lo / width`` an integer in ``[0, bins]``), as it does for the
centred histograms of :class:`fxquant.observers.HistogramObserver` and for magnitude
histograms (``lo = 0``).  The *magnitude histogram* folds the bins below zero onto those above.

Every function takes ``(counts, lo, width, dtype, symmetric)`` and returns ``(min, max)``
float64 tensors of shape ``()`` or ``[C]``: ``(-amax, amax)`` when ``symmetric``
(:func:`fxquant.numerics.choose_qparams` also widens every range to contain 0).  Ranges end on
bin edges (the percentile interpolates inside a bin) and never reach past the outermost
non-empty bins (for ``amax``: of the magnitude histogram).  Where the data lies inside a bin is
unknown, so callers that track the exact data range should clip to it.

Methods (:class:`RangeMethod`):

* PERCENTILE: the ``percentile`` quantile of ``|x|`` (symmetric), or the ``100 - percentile``
  and ``percentile`` quantiles of ``x``; linear interpolation inside the bin.
* MSE: minimises the expected squared error of fake quantization.  Values inside the range
  contribute the uniform rounding noise ``scale**2 / 12``; each clipped bin contributes
  ``count * ((center - bound)**2 + width**2 / 12)`` (data uniform inside the bin).  The zero
  point's rounding shift and int8's extra negative code are ignored.  Symmetric: every
  ``amax`` edge of the magnitude histogram.  Asymmetric: edge pairs ``lo <= 0 <= hi``,
  exhaustively up to 4096 pairs, else a strided grid of about 4096 pairs followed by every
  pair within one stride of its best (one-signed data is always exhaustive).
* ENTROPY: TensorRT's KL-divergence calibration of ``amax`` (Migacz, "8-bit Inference with
  TensorRT", GTC 2017; reference code ``pytorch_quantization.calib.histogram.
  _compute_amax_entropy``) on the magnitude histogram.  Clipping after ``i`` bins, the
  reference ``P`` is the first ``i`` bins with the mass beyond folded into bin ``i - 1``;
  ``Q`` merges the ``i`` bins into ``levels`` groups (group ``g`` holds bins
  ``[ceil(g*i/levels), ceil((g+1)*i/levels))``) and spreads each group's count evenly over its
  non-empty bins.  Every ``i`` from ``levels`` to the last non-empty bin is tried; the smallest
  ``KL(P || Q)`` wins (ties: the largest ``i``; if every candidate is infinite, or there are
  fewer than ``levels`` bins, no clipping).  As in TensorRT the first bin takes the count of
  the second, so a spike of exact zeros (ReLU) does not dominate.  ``levels`` is ``2**bits``
  for an asymmetric range of one-signed data (result ``[0, amax]`` or ``[-amax, 0]``), else
  ``2**(bits-1)``; an asymmetric range of two-signed data is ``[-amax, amax]`` cut to the
  non-empty bins.

Everything is vectorised over channels and candidates with cumulative sums.  MSE sums are exact
in float64, so a channel's result does not depend on the other rows of the batch.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

import torch

from ..errors import ConfigError
from .dtypes import QDType

__all__ = [
    "RangeMethod",
    "percentile_range",
    "mse_range",
    "entropy_range",
    "search_range",
]

Range = tuple[torch.Tensor, torch.Tensor]
_Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_PAIR_BUDGET = 4096  # pairs searched at once by the asymmetric MSE search
_CHUNK_ELEMS = 1 << 17  # [channels, candidates, levels] KL block: small enough for L2 cache


class RangeMethod(enum.Enum):
    """How a histogram observer turns its histogram into a clipping range.

    PERCENTILE: a quantile of the data (``|x|`` when symmetric); robust, ignores the dtype.
    MSE: the range with the smallest expected fake-quantization squared error.
    ENTROPY: TensorRT's KL-divergence calibration; the usual choice for activations.
    """

    PERCENTILE = "percentile"
    MSE = "mse"
    ENTROPY = "entropy"

    @classmethod
    def parse(cls, value: RangeMethod | str) -> RangeMethod:
        """``value`` as a member; strings are matched case-insensitively."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            for member in cls:
                if member.value == value.lower():
                    return member
        valid = ", ".join(repr(m.value) for m in cls)
        raise ConfigError(f"unknown range method {value!r}; valid: {valid}")


# ---------------------------------------------------------------------------------------------
# histogram plumbing


def _as_rows(counts: torch.Tensor, lo, width) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if counts.dim() not in (1, 2) or counts.shape[-1] < 1:
        raise ValueError(f"counts must be [bins] or [C, bins], got shape {tuple(counts.shape)}")
    h = counts.detach().to(torch.float64).reshape(-1, counts.shape[-1])
    if bool((h < 0).any()):
        raise ValueError("counts must be non-negative")
    c = h.shape[0]
    lo_t = torch.as_tensor(lo, dtype=torch.float64, device=h.device).reshape(-1).expand(c)
    width_t = torch.as_tensor(width, dtype=torch.float64, device=h.device).reshape(-1).expand(c)
    if not bool((width_t > 0).all()):
        raise ValueError(f"bin width must be > 0, got {width}")
    return h, lo_t, width_t


def _zero_edge(lo: torch.Tensor, width: torch.Tensor, bins: int) -> torch.Tensor:
    """Index of the bin edge at 0 (ValueError if 0 is not an edge of the histogram)."""
    pos = -lo / width
    z = torch.round(pos)
    if not bool(((pos - z).abs() <= 1e-6).all() and (z >= 0).all() and (z <= bins).all()):
        raise ValueError(
            "zero must lie on a bin edge inside the histogram (-lo / width an integer in "
            f"[0, bins]); got lo={lo.tolist()}, width={width.tolist()}"
        )
    return z.long()


def _magnitude(h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Fold bins below the zero edge onto those above: counts of ``|x|`` in width-sized bins."""
    bins = h.shape[1]
    m = int(torch.maximum(z, bins - z).max())
    k = torch.arange(m, device=h.device)
    pos = z[:, None] + k
    neg = z[:, None] - 1 - k
    out = torch.where(pos < bins, h.gather(1, pos.clamp(max=bins - 1)), 0.0)
    return out + torch.where(neg >= 0, h.gather(1, neg.clamp(min=0)), 0.0)


def _cumsum0(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(x.cumsum(-1), (1, 0))


def _nonzero_span(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First non-empty bin and one past the last (``bins, 0`` for an empty row)."""
    bins = h.shape[1]
    idx = torch.arange(bins, device=h.device).expand_as(h)
    nz = h > 0
    first = torch.where(nz, idx, bins).amin(1)
    end = torch.where(nz, idx + 1, 0).amax(1)
    return first, end


def _finish(lo_idx, hi_idx, lo, width, squeeze: bool) -> Range:
    a = lo + lo_idx.to(torch.float64) * width
    b = lo + hi_idx.to(torch.float64) * width
    return (a[0], b[0]) if squeeze else (a, b)


def _symmetric_result(amax: torch.Tensor, squeeze: bool) -> Range:
    return (-amax[0], amax[0]) if squeeze else (-amax, amax)


# ---------------------------------------------------------------------------------------------
# percentile


def _quantile(h: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` quantile in bin units (linear inside the bin), ``[C]``."""
    cs = _cumsum0(h)
    total = cs[:, -1:]
    target = q * total
    _, end = _nonzero_span(h)
    # first bin whose cumulative count exceeds the target: it is non-empty
    j = torch.searchsorted(cs[:, 1:].contiguous(), target.contiguous(), right=True)[:, 0]
    j = torch.minimum(j, (end - 1).clamp(min=0))
    hj = h.gather(1, j[:, None])[:, 0]
    below = cs.gather(1, j[:, None])[:, 0]
    frac = torch.where(hj > 0, (target[:, 0] - below) / hj.clamp(min=1e-300), 0.0)
    return j.to(torch.float64) + frac.clamp(0.0, 1.0)


def percentile_range(
    counts: torch.Tensor,
    lo,
    width,
    dtype: QDType,
    symmetric: bool,
    *,
    percentile: float = 99.99,
) -> Range:
    """Clip at the ``percentile`` of ``|x|`` (symmetric) or at the ``100 - p`` / ``p`` percentiles.

    ``dtype`` is unused (kept so every method shares one signature).
    """
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    squeeze = counts.dim() == 1
    h, lo_t, width_t = _as_rows(counts, lo, width)
    q = percentile / 100.0
    if symmetric:
        m = _magnitude(h, _zero_edge(lo_t, width_t, h.shape[1]))
        return _symmetric_result(_quantile(m, q) * width_t, squeeze)
    a = lo_t + _quantile(h, 1.0 - q) * width_t
    b = lo_t + _quantile(h, q) * width_t
    return (a[0], b[0]) if squeeze else (a, b)


# ---------------------------------------------------------------------------------------------
# candidate search over edge pairs (a, b): bins [a, b) lie inside the range


def _argmin_last(values: torch.Tensor) -> torch.Tensor:
    """Index of the minimum along the last dim; the last one on ties."""
    k = values.shape[-1]
    return k - 1 - values.flip(-1).argmin(-1)


def _search_pairs(
    objective: _Objective,
    a_min: torch.Tensor,
    a_max: torch.Tensor,
    b_min: torch.Tensor,
    b_max: torch.Tensor,
    budget: int = _PAIR_BUDGET,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge pair minimising ``objective(a [C, K], b [C, K]) -> [C, K]`` per row.

    ``a`` ranges over ``[a_min, a_max]`` and ``b`` over ``[b_min, b_max]`` (inclusive, per row).
    Exhaustive when one side has a single candidate or the largest row has at most ``budget``
    pairs; otherwise a strided grid of about ``budget`` pairs, then all pairs within one stride
    of its best.  Rows whose candidates
    all score ``inf`` get the widest pair ``(a_min, b_max)``.
    """
    dev = a_min.device
    span_a = a_max - a_min + 1
    span_b = b_max - b_min + 1
    na_max, nb_max = int(span_a.max()), int(span_b.max())
    if na_max * nb_max <= budget or min(na_max, nb_max) == 1:  # exhaustive
        na, nb = na_max, nb_max
    else:
        na = max(1, min(na_max, math.isqrt(budget * na_max // nb_max)))
        nb = max(1, min(nb_max, budget // na))
    step_a = (span_a + na - 1) // na
    step_b = (span_b + nb - 1) // nb

    def best_of(a_cand, b_cand):  # [C, na] (descending), [C, nb] (ascending)
        c = a_cand.shape[0]
        a = a_cand[:, :, None].expand(-1, -1, b_cand.shape[1]).reshape(c, -1)
        b = b_cand[:, None, :].expand(-1, a_cand.shape[1], -1).reshape(c, -1)
        vals = objective(a, b)
        i = _argmin_last(vals)[:, None]  # ties: smallest a, then largest b
        return a.gather(1, i)[:, 0], b.gather(1, i)[:, 0], vals.gather(1, i)[:, 0]

    steps_a = torch.arange(na, device=dev) * step_a[:, None]
    steps_b = torch.arange(nb, device=dev) * step_b[:, None]
    a_best, b_best, v_best = best_of(
        torch.maximum(a_max[:, None] - steps_a, a_min[:, None]),
        torch.minimum(b_min[:, None] + steps_b, b_max[:, None]),
    )
    sa, sb = int(step_a.max()), int(step_b.max())
    if sa > 1 or sb > 1:
        off_a = torch.arange(-(sa - 1), sa, device=dev)
        off_b = torch.arange(-(sb - 1), sb, device=dev)
        # offsets beyond a row's own stride collapse onto the coarse best
        off_a = torch.where(off_a.abs() < step_a[:, None], off_a, 0)
        off_b = torch.where(off_b.abs() < step_b[:, None], off_b, 0)
        a_ref = (a_best[:, None] - off_a).clamp(a_min[:, None], a_max[:, None])
        b_ref = (b_best[:, None] + off_b).clamp(b_min[:, None], b_max[:, None])
        a_best, b_best, v_best = best_of(a_ref, b_ref)
    failed = torch.isinf(v_best)
    return torch.where(failed, a_min, a_best), torch.where(failed, b_max, b_best)


# ---------------------------------------------------------------------------------------------
# MSE


def _mse_objective(h: torch.Tensor, steps: int) -> _Objective:
    """Expected squared error (in bin-width units) of the range ``[edge a, edge b]``.

    Sums are in bin units with centers ``j + 1/2``, so they are exact in float64 (multiples of
    1/4) up to 2**53; the ``1/12`` within-bin terms are added separately.
    """
    j = torch.arange(h.shape[1], device=h.device, dtype=torch.float64) + 0.5
    c0, c1, c2 = _cumsum0(h), _cumsum0(h * j), _cumsum0(h * j * j)
    n0, n1, n2 = c0[:, -1:], c1[:, -1:], c2[:, -1:]
    e = torch.arange(h.shape[1] + 1, device=h.device, dtype=torch.float64)
    # clipped below a: sum h (a - c)^2 ; clipped above b: sum h (c - b)^2  (+ count / 12)
    left = e * e * c0 - 2 * e * c1 + c2 + c0 / 12
    s0, s1, s2 = n0 - c0, n1 - c1, n2 - c2
    right = e * e * s0 - 2 * e * s1 + s2 + s0 / 12

    def objective(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        scale = (b - a).to(torch.float64) / steps
        inside = c0.gather(1, b) - c0.gather(1, a)
        return inside * scale * scale / 12 + left.gather(1, a) + right.gather(1, b)

    return objective


def _symmetric_steps(dtype: QDType) -> int:
    """Codes between 0 and ``amax`` on the symmetric grid of :func:`choose_qparams`."""
    if dtype.signed:
        return dtype.qmax
    return dtype.qmax - (dtype.qmin + dtype.qmax + 1) // 2


def mse_range(counts: torch.Tensor, lo, width, dtype: QDType, symmetric: bool) -> Range:
    """The range minimising the expected fake-quantization MSE (see the module docstring)."""
    squeeze = counts.dim() == 1
    h, lo_t, width_t = _as_rows(counts, lo, width)
    z = _zero_edge(lo_t, width_t, h.shape[1])
    if symmetric:
        m = _magnitude(h, z)
        _, end = _nonzero_span(m)
        zero = torch.zeros_like(end)
        _, b = _search_pairs(
            _mse_objective(m, _symmetric_steps(dtype)), zero, zero, end.clamp(max=1), end
        )
        return _symmetric_result(b.to(torch.float64) * width_t, squeeze)
    first, end = _nonzero_span(h)
    a, b = _search_pairs(
        _mse_objective(h, dtype.qmax - dtype.qmin),
        torch.minimum(first, z),
        z,
        z,
        torch.maximum(end, z),
    )
    return _finish(a, b, lo_t, width_t, squeeze)


# ---------------------------------------------------------------------------------------------
# entropy (KL divergence)


def _xlogx(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x * torch.log(x.clamp(min=1e-300)), 0.0)


def _kl_divergence(h: torch.Tensor, levels: int, b: torch.Tensor) -> torch.Tensor:
    """``KL(P || Q)`` of TensorRT's calibration when clipping after bin ``b`` (``[K]``): ``[C, K]``.

    ``P`` is ``h[:b]`` with the mass beyond folded into bin ``b - 1``; ``Q`` as in the module
    docstring.  With ``N`` the total count, ``S`` the count below ``b``, ``T = N - S`` and
    ``G_g`` / ``n_g`` the count and non-empty bins of group ``g``::

        KL = (sum_j P_j log P_j - sum_g G_g log(G_g / n_g) - T log(G_last / n_last)) / N
             + log(S / N)

    Needs ``b >= levels``; ``inf`` where the folded mass lands on an empty bin (``Q = 0``).
    """
    cs = _cumsum0(h)
    cnz = _cumsum0((h > 0).to(torch.float64))
    hl = _cumsum0(_xlogx(h))
    total = cs[:, -1:]
    c = h.shape[0]
    g = torch.arange(levels + 1, device=h.device)

    def chunk(b: torch.Tensor) -> torch.Tensor:  # [K] candidates shared by all rows
        k = b.shape[0]
        bounds = ((g * b[:, None] + levels - 1) // levels).reshape(-1)  # ceil(g * b / levels)
        group = cs.index_select(1, bounds).view(c, k, -1).diff(dim=-1)
        nonempty = cnz.index_select(1, bounds).view(c, k, -1).diff(dim=-1)
        # sum_g G log(G / n) with 0 log 0 = 0 (an empty group has G = n = 0)
        log_n = torch.log(nonempty.clamp_(min=1.0))
        g_log_q = torch.log(group.clamp(min=1e-300)).sub_(log_n).mul_(group)
        log_q_last = torch.log(group[..., -1].clamp(min=1e-300)) - log_n[..., -1]
        inside = cs.index_select(1, b)
        beyond = total - inside
        h_last = h.index_select(1, b - 1)
        p_log_p = hl.index_select(1, b - 1) + _xlogx(h_last + beyond)
        p_log_q = g_log_q.sum(-1) + beyond * log_q_last
        kl = (p_log_p - p_log_q) / total + torch.log(inside.clamp(min=1e-300) / total)
        return torch.where((beyond > 0) & (h_last == 0), torch.inf, kl)

    step = max(1, _CHUNK_ELEMS // (c * (levels + 1)))
    return torch.cat([chunk(b[i : i + step]) for i in range(0, b.shape[0], step)], dim=1)


def _entropy_amax(m: torch.Tensor, levels: int) -> torch.Tensor:
    """Clip edge (bin units) chosen by KL calibration on magnitude histograms ``m``, ``[C]``."""
    _, end = _nonzero_span(m)
    spiked = m.clone()
    if m.shape[1] > 1:  # TensorRT: bins[0] = bins[1], so a spike of zeros does not dominate
        spiked[:, 0] = m[:, 1]
    if int(end.max()) < levels:  # too few bins for this many levels: no clipping
        return end
    cand = torch.arange(levels, int(end.max()) + 1, device=m.device)
    kl = _kl_divergence(spiked, levels, cand)
    kl = torch.where(cand <= end[:, None], kl, torch.inf)
    i = _argmin_last(kl)
    failed = torch.isinf(kl.gather(1, i[:, None])[:, 0])
    return torch.where(failed, end, cand[i])


def entropy_range(counts: torch.Tensor, lo, width, dtype: QDType, symmetric: bool) -> Range:
    """TensorRT-style KL-divergence calibration of ``amax`` (see the module docstring).

    The search runs on the magnitude histogram.  Asymmetric ranges of one-signed data get
    ``2**bits`` levels and the range ``[0, amax]`` (or ``[-amax, 0]``); otherwise the search uses
    ``2**(bits-1)`` levels, and an asymmetric range is ``[-amax, amax]`` cut to the non-empty
    bins.
    """
    squeeze = counts.dim() == 1
    h, lo_t, width_t = _as_rows(counts, lo, width)
    z = _zero_edge(lo_t, width_t, h.shape[1])
    m = _magnitude(h, z)
    first, end = _nonzero_span(h)
    one_sided = torch.zeros_like(z, dtype=torch.bool)
    if not symmetric:
        one_sided = (first >= z) | (end <= z)
    amax = torch.empty_like(z)
    for flag, levels in ((False, 1 << (dtype.bits - 1)), (True, 1 << dtype.bits)):
        rows = one_sided == flag
        if bool(rows.any()):
            amax[rows] = _entropy_amax(m[rows], levels)
    if symmetric:
        return _symmetric_result(amax.to(torch.float64) * width_t, squeeze)
    a = torch.maximum(z - amax, torch.minimum(first, z))
    b = torch.minimum(z + amax, torch.maximum(end, z))
    return _finish(a, b, lo_t, width_t, squeeze)


# ---------------------------------------------------------------------------------------------
# dispatch


def search_range(
    method: RangeMethod | str,
    counts: torch.Tensor,
    lo,
    width,
    dtype: QDType,
    symmetric: bool,
    *,
    percentile: float = 99.99,
) -> Range:
    """Run ``method`` on the histogram; ``percentile`` is only used by PERCENTILE."""
    method = RangeMethod.parse(method)
    if method is RangeMethod.PERCENTILE:
        return percentile_range(counts, lo, width, dtype, symmetric, percentile=percentile)
    return _SEARCH[method](counts, lo, width, dtype, symmetric)


_SEARCH = {RangeMethod.MSE: mse_range, RangeMethod.ENTROPY: entropy_range}
