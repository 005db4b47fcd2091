"""Observer statistics across ranks, merged exactly: N ranks hold what one process would.

What each observer kind of an activation quantizer synchronises:

========================================  ======================================================
observer                                  under torch.distributed (world size > 1)
========================================  ======================================================
``MinMaxObserver``                        running min / max all-reduced (MIN / MAX): equal to
                                          one process over the union of the ranks' data
``HistogramObserver`` (percentile, MSE,   histograms merged: the ranks agree on the common range
entropy)                                  ``R`` (MAX of the range exponents), move their counts
                                          there exactly and sum them.  Equal bit for bit to one
                                          process over the union (the histogram is a function of
                                          the multiset of values), and so is the range searched
                                          from it
``MovingAverageMinMaxObserver``           every observation all-reduces the *batch* min / max
                                          first (MIN / MAX), then takes one averaging step:
                                          ``m += c * (min_r batch_min_r - m)``.  Equal to one
                                          process whose batch ``t`` is the concatenation of the
                                          ranks' batches ``t``
``FixedScaleObserver``                    nothing to synchronise
========================================  ======================================================

When: in ``CALIBRATION`` min-max and histogram observers accumulate rank-locally (no collective
per batch) and are merged when the quantizer leaves ``CALIBRATION`` (end of
:func:`fxquant.calibrate`, :func:`fxquant.set_fake_quantize`, or :func:`fxquant.sync_observers`);
ranks may then see different numbers of batches.  In ``QAT`` (and for moving averages in
``CALIBRATION`` too) every observation is reduced before it is used, so scales are identical on
every rank at every step.  Between merges the local statistics live in an accumulator outside the
module's buffers, so DDP's buffer broadcast (``broadcast_buffers=True``) cannot overwrite them;
the buffers themselves only ever hold merged, rank-identical state.

Weight quantizers observe the weights, which DDP keeps identical on every rank: they are never
reduced per step; at the end of a calibration their min / max are merged too (idempotent for
identical weights; a rank that saw no batch still ends calibrated).  Weight histograms and moving
averages stay rank-local.

Every rank must make the same observing calls in the same order (as DDP requires of forward
passes anyway): a forward that observes on one rank only waits for the others.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Protocol

import torch
import torch.distributed as dist

from ..errors import ObserverError
from ..observers import (
    FixedScaleObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    Observer,
)
from .settings import DistributedSync

__all__ = ["observe_distributed", "merge_pending", "syncs_every_batch", "discard_pending"]

_ACC = "_fxquant_dist_acc"  # instance attribute (outside the buffers) holding the accumulator
_NO_CHANNELS = 1 << 62


class _Quantizer(Protocol):  # what this module needs of a FakeQuantize (no import cycle)
    observer: Observer
    is_weight: bool
    distributed_sync: DistributedSync
    _dirty: bool


_LOCAL, _DEFERRED, _EVERY = "local", "deferred", "every batch"


def _plan(fq: _Quantizer, calibrating: bool) -> str:
    """How ``fq`` observes under an active sync: rank-locally, accumulated until the merge, or
    reduced at every observation.  Depends on configuration only (the same on every rank)."""
    obs = fq.observer
    if not isinstance(obs, (MinMaxObserver, HistogramObserver)):
        return _LOCAL
    moving = isinstance(obs, MovingAverageMinMaxObserver)
    if fq.is_weight:  # identical weights on every rank: merging min / max is idempotent
        minmax = isinstance(obs, MinMaxObserver) and not moving
        return _DEFERRED if calibrating and minmax else _LOCAL
    if moving or not calibrating:
        return _EVERY
    return _DEFERRED


def syncs_every_batch(fq: Any) -> bool:
    """True when ``fq`` reduces every calibration batch across ranks (a moving average under an
    active distributed sync): then every rank must calibrate on the same number of batches."""
    return (
        fq.distributed_sync.active()
        and _plan(fq, True) == _EVERY
        and not (fq.fixed_in_qat and bool(fq.calibrated))
    )


def observe_distributed(fq: _Quantizer, x: torch.Tensor, calibrating: bool) -> None:
    """Observe ``x`` with ``fq``'s observer under an active distributed sync (see module doc)."""
    obs = fq.observer
    plan = _plan(fq, calibrating)
    if plan == _LOCAL:
        if not (fq.is_weight or isinstance(obs, FixedScaleObserver)):
            warnings.warn(
                f"quantizer {obs.name or '<unnamed>'!r}: {type(obs).__name__} has no distributed "
                "merge; its statistics stay rank-local (use a min-max, moving-average or "
                "histogram observer, or fxquant.set_distributed_sync(module, False) to silence)",
                stacklevel=4,
            )
        obs(x)
        return
    acc = _accumulator(obs)
    if plan == _DEFERRED:
        acc(x)  # rank-local until merge_pending
        return
    acc.reset()
    acc(x)
    _merge([obs], fq.distributed_sync.group)


def merge_pending(quantizers: Iterable[_Quantizer]) -> None:
    """Merge what ``quantizers`` accumulated rank-locally since their last merge (collective).

    Every rank must call it with the same quantizers in the same order; quantizers without an
    active distributed sync and those that do not accumulate (moving averages, weight
    histograms ...) are skipped on every rank alike: the choice depends on configuration only.
    """
    groups: dict[int, tuple[Any, list[Observer]]] = {}
    for fq in quantizers:
        sync = fq.distributed_sync
        if _plan(fq, True) != _DEFERRED or not sync.active():
            continue
        groups.setdefault(id(sync.group), (sync.group, []))[1].append(fq.observer)
        fq._dirty = True  # the merged statistics may hold data this rank did not see
    for group, observers in groups.values():
        _merge(observers, group)


def discard_pending(quantizers: Iterable[_Quantizer]) -> None:
    """Drop rank-local statistics not merged yet (after a failed calibration; no collective)."""
    for fq in quantizers:
        acc = fq.observer.__dict__.get(_ACC)
        if acc is not None:
            acc.reset()


# ---------------------------------------------------------------------------------------------
# accumulators and the batched reduction


def _accumulator(obs: Observer) -> Observer:
    """The rank-local accumulator of ``obs`` (same statistics, kept outside its buffers)."""
    acc = obs.__dict__.get(_ACC)
    device = next(iter(obs.buffers())).device
    if acc is None:
        if isinstance(obs, HistogramObserver):
            acc = HistogramObserver(bins=obs.bins, ch_axis=obs.ch_axis)
        else:
            acc = MinMaxObserver(ch_axis=obs.ch_axis)
        acc.name = obs.name
        obs.__dict__[_ACC] = acc  # not a submodule: no state_dict entry, no DDP broadcast
    if acc.min_val.device != device:
        acc.to(device)
    return acc


def _channels(acc: Observer) -> int:
    return acc.min_val.numel() if acc.ch_axis is not None else 1


def _size_empty(acc: Observer, channels: int) -> None:
    """Give a per-channel accumulator that saw nothing on this rank the agreed channel count."""
    device = acc.min_val.device
    if isinstance(acc, HistogramObserver):
        acc._init_channels(channels, device)
    else:
        acc.min_val = torch.full((channels,), float("inf"), device=device)
        acc.max_val = torch.full((channels,), float("-inf"), device=device)


def _merge(observers: list[Observer], group: Any) -> None:
    """Reduce the accumulators of ``observers`` across ``group``, fold them in, reset them.

    At most three collectives whatever the number of observers: channel counts (only when a
    per-channel observer is present), one MAX of ``[-min, max, range exponent]`` and one SUM
    of the histogram counts moved to the agreed range.
    """
    accs = [_accumulator(o) for o in observers]
    device = accs[0].min_val.device
    _agree_channels(observers, accs, group, device)
    pairs = list(zip(observers, accs, strict=True))
    hists = [(o, a) for o, a in pairs if isinstance(a, HistogramObserver)]
    parts: list[torch.Tensor] = []
    for a in accs:
        parts += [-a.min_val.double().reshape(-1), a.max_val.double().reshape(-1)]
        if isinstance(a, HistogramObserver):
            parts.append(a.range_exp.double().reshape(-1))
    for o, _ in hists:  # the merged state must be the same on every rank before the merge
        total = o.hist.sum().double().reshape(1)
        parts += [total, -total]
    maxed = torch.cat(parts).to(device)
    dist.all_reduce(maxed, op=dist.ReduceOp.MAX, group=group)
    pos = 0
    for a in accs:
        n = a.min_val.numel()
        a.min_val.copy_(-maxed[pos : pos + n].reshape(a.min_val.shape))
        a.max_val.copy_(maxed[pos + n : pos + 2 * n].reshape(a.max_val.shape))
        pos += 2 * n
        if isinstance(a, HistogramObserver):
            a.widen_(maxed[pos : pos + n].reshape(a.range_exp.shape).to(torch.int64))
            pos += n
    for o, _ in hists:
        hi, neg_lo = maxed[pos], maxed[pos + 1]
        pos += 2
        if float(hi) != -float(neg_lo):
            raise ObserverError(
                f"quantizer {o.name or '<unnamed>'!r}: its merged histogram differs between "
                f"ranks ({int(-neg_lo)} vs {int(hi)} values) before this merge; start every "
                "rank from the same state (the same checkpoint, or a fresh prepare)"
            )
    if hists:
        counts = torch.cat([a.hist.reshape(-1) for _, a in hists])
        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
        pos = 0
        for _, a in hists:
            n = a.hist.numel()
            a.hist.copy_(counts[pos : pos + n].reshape(a.hist.shape))
            pos += n
    for o, a in zip(observers, accs, strict=True):
        _fold(o, a)
        a.reset()


def _agree_channels(
    observers: list[Observer], accs: list[Observer], group: Any, device: torch.device
) -> None:
    per_channel = [(o, a) for o, a in zip(observers, accs, strict=True) if a.ch_axis is not None]
    if not per_channel:
        return
    counts = [_channels(a) for _, a in per_channel]
    t = torch.tensor([[c, -(c or _NO_CHANNELS)] for c in counts], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    for (o, a), c, (most, neg_fewest) in zip(per_channel, counts, t.tolist(), strict=True):
        if most and -neg_fewest != most:
            raise ObserverError(
                f"quantizer {o.name or '<unnamed>'!r} saw {-neg_fewest} channels on one rank and "
                f"{most} on another (axis {o.ch_axis}); every rank must feed the same model"
            )
        if most and c == 0:
            _size_empty(a, most)


def _fold(obs: Observer, acc: Observer) -> None:
    """Fold the reduced accumulator into the observer's (merged, rank-identical) state."""
    if not acc.has_stats():
        return
    if isinstance(obs, HistogramObserver):
        obs.merge_(acc)  # type: ignore[arg-type]
    else:
        obs._combine(acc.min_val.clone(), acc.max_val.clone())  # type: ignore[attr-defined]
