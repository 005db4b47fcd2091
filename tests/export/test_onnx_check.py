"""The self-check's bar: quantization noise passes, a wrong graph does not."""

from __future__ import annotations

import pytest

from fxquant.export.onnx_check import acceptable
from fxquant.export.verify import TensorDiff


def _q(hist: dict[int, int]) -> TensorDiff:
    total = sum(hist.values())
    steps = max(abs(k) for k in hist)
    return TensorDiff("t", "q", (total,), 0.1, 0.1 * steps, steps, hist.get(0, 0) / total, hist)


@pytest.mark.parametrize(("hist", "ok"), [
    ({0: 1000}, True),
    ({-1: 300, 0: 400, 1: 300}, True),  # chaotic 1-step flips of a deep random network
    ({-5: 5, -1: 200, 0: 590, 1: 200, 5: 5}, True),  # a few far ones: 1%
    ({-5: 6, -1: 200, 0: 588, 1: 200, 5: 6}, False),  # more than 1% more than 2 steps off
    ({-5: 300, 0: 400, 5: 300}, False),  # a wrong scale / lost op: most elements far off
])
def test_quantized_output_bar(hist, ok):
    assert acceptable(_q(hist)) is ok


@pytest.mark.parametrize(("identical", "sqnr", "ok"), [
    (1.0, float("inf"), True), (0.5, 45.0, True), (0.5, 12.0, False), (0.5, None, False),
])
def test_float_output_bar(identical, sqnr, ok):
    d = TensorDiff("t", None, (10,), None, 1.0, None, identical, {}, sqnr_db=sqnr)
    assert acceptable(d) is ok
