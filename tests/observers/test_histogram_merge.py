"""``HistogramObserver.merge_`` / ``widen_``: merging is exact and order-independent.

The distributed merge (``fxquant.distributed``) relies on it: observers that saw parts of the
data, merged in any order and grouping, hold bit for bit the state of one observer that saw all
of it -- histogram, range exponent, min / max, and so every searched range.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxquant.numerics import qint8, quint8
from fxquant.observers import HistogramObserver, ObserverError

STATE = ("hist", "range_exp", "min_val", "max_val")


def _same(a: HistogramObserver, b: HistogramObserver) -> None:
    for name in STATE:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def _parts(seed: int, n_parts: int, ch_axis):
    g = torch.Generator().manual_seed(seed)
    # magnitudes from 1e-3 to 1e3 so that the parts have different ranges R
    shape = (5, 40) if ch_axis is not None else (200,)
    return [torch.randn(*shape, generator=g) * 10.0 ** (i * 6 / n_parts - 3)
            for i in range(n_parts)]


@settings(max_examples=30)
@given(seed=st.integers(0, 2**16), n_parts=st.integers(1, 4), bins=st.sampled_from([16, 256]),
       per_channel=st.booleans())
def test_merged_parts_equal_one_observer_over_all(seed, n_parts, bins, per_channel):
    ch_axis = 0 if per_channel else None
    parts = _parts(seed, n_parts, ch_axis)
    whole = HistogramObserver(bins=bins, ch_axis=ch_axis)
    for p in parts:
        whole(p)
    singles = []
    for p in parts:
        singles.append(HistogramObserver(bins=bins, ch_axis=ch_axis))
        singles[-1](p)
    for order in (range(n_parts), reversed(range(n_parts))):
        merged = HistogramObserver(bins=bins, ch_axis=ch_axis)
        for i in order:
            merged.merge_(singles[i])
        _same(merged, whole)
    if n_parts == 4:  # a tree: (0 + 2) + (3 + 1)
        left, right = HistogramObserver(bins=bins, ch_axis=ch_axis), singles[3]
        left.merge_(singles[0])
        left.merge_(singles[2])
        right.merge_(singles[1])
        left.merge_(right)
        _same(left, whole)
        for dtype, sym in ((qint8, True), (quint8, False)):
            for a, b in zip(merged.compute_range(dtype, sym), whole.compute_range(dtype, sym),
                            strict=True):
                assert torch.equal(a, b)


def test_widen_moves_counts_as_a_larger_range_would_have():
    x = torch.randn(500)
    small = HistogramObserver(bins=64)
    small(x)
    big = HistogramObserver(bins=64)
    big(torch.cat([x, torch.tensor([1000.0])]))
    small.widen_(big.range_exp)
    one = HistogramObserver(bins=64)
    one(torch.tensor([1000.0]))
    one.widen_(big.range_exp)
    assert torch.equal(small.hist + one.hist, big.hist)
    with pytest.raises(ValueError, match="below range_exp"):
        big.widen_(big.range_exp - 1)


def test_merge_of_nothing_and_into_nothing():
    a = HistogramObserver(bins=32, ch_axis=1)
    empty = HistogramObserver(bins=32, ch_axis=1)
    a.merge_(empty)  # nothing observed: nothing changes
    assert a.hist.shape == (0, 32) and not a.has_stats()
    b = HistogramObserver(bins=32, ch_axis=1)
    b(torch.randn(4, 3, 2))
    a.merge_(b)  # into an observer that saw nothing: it takes the channel count
    _same(a, b)


def test_merge_refuses_other_shapes():
    a = HistogramObserver(bins=32, ch_axis=0)
    a(torch.randn(3, 4))
    a.name = "layer1.out"
    for other, data in ((HistogramObserver(bins=32, ch_axis=0), torch.randn(4, 4)),
                        (HistogramObserver(bins=64, ch_axis=0), torch.randn(3, 4)),
                        (HistogramObserver(bins=32), torch.randn(3, 4))):
        other(data)
        with pytest.raises(ObserverError, match=r"layer1\.out"):
            a.merge_(other)
