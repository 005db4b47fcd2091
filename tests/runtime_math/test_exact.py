"""fxquant.runtime_math.exact: float kernels give the exact integer accumulator.

Reference: the same conv / linear / matmul in int64 arithmetic (float64 holds these sums
exactly); cases are built so that the float32 bound is exceeded and the reduction must be split,
and so that a single float32 call would round (shown on the same data).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fxquant.runtime_math.exact import EXACT_FLOAT32, exact_conv, exact_linear, exact_matmul


def _codes(*shape: int, lo: int = -127, hi: int = 128) -> torch.Tensor:
    return torch.randint(lo, hi, shape).float()


@pytest.mark.parametrize("groups", [1, 4])
def test_conv_is_exact_beyond_the_float32_bound(groups):
    x = _codes(2, 128 * groups, 6, 6, lo=-255, hi=256)
    w = _codes(8, 128, 3, 3)
    bias = torch.randint(-(2**30), 2**30, (8,)).double()
    bound = 255.0
    assert float((w.abs().sum((1, 2, 3)) * bound).max()) > EXACT_FLOAT32  # must split
    ref = F.conv2d(x.double(), w.double(), bias, padding=1, groups=groups)

    def conv(xi, wi, bi):
        return F.conv2d(xi, wi, bi, padding=1, groups=groups)

    got = exact_conv(conv, x, w, bias, bound, groups)
    assert got.dtype == torch.float32 and torch.equal(got, ref.float())


def test_conv_within_the_bound_is_one_float32_call():
    x = _codes(2, 8, 5, 5, lo=0, hi=256)
    w = _codes(4, 8, 3, 3)
    bias = torch.randint(-1000, 1000, (4,)).double()
    got = exact_conv(lambda a, b, c: F.conv2d(a, b, c), x, w, bias, 255.0, 1)
    assert torch.equal(got, F.conv2d(x.double(), w.double(), bias).float())


def test_linear_and_matmul_are_exact():
    x = _codes(64, 2048, lo=-255, hi=256)
    w = _codes(16, 2048)
    bias = torch.randint(-(2**28), 2**28, (16,)).double()
    ref = (x.double() @ w.double().T + bias).float()
    assert torch.equal(exact_linear(x, w, bias, 255.0), ref)
    single = (x @ w.T + bias.float())  # one float32 call rounds partial sums
    assert not torch.equal(single, ref)
    a, b = _codes(4, 8, 700, lo=-255, hi=256), _codes(4, 700, 9, lo=-255, hi=256)
    assert torch.equal(exact_matmul(a, b, 255.0, 255.0), (a.double() @ b.double()).float())


def test_reduced_matmul_precision_falls_back_to_float64():
    x = _codes(8, 64, lo=0, hi=256)
    w = _codes(4, 64)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        got = exact_linear(x, w, None, 255.0)
    finally:
        torch.set_float32_matmul_precision(before)
    assert torch.equal(got, (x.double() @ w.double().T).float())


def test_two_halves_add_in_float32_and_round_once():
    """A reduction between one and two float32 bounds: two calls (the bias in the first), one
    float32 add -- IEEE rounds the exact sum once, so the result is float32(acc) even where the
    accumulator is beyond 2^24 and float32(acc) != acc."""
    torch.manual_seed(0)
    x = torch.full((2, 600, 3, 3), 255.0)
    x[1] = _codes(600, 3, 3, lo=0, hi=256)
    w = torch.where(torch.rand(4, 600, 1, 1) < 0.9, 127.0, -127.0)
    w[0] = 127.0  # channel 0: every partial sum the bound, acc = 600 * 127 * 255 + bias
    bias = torch.tensor([2**22 + 1, -(2**22), 12345, -7], dtype=torch.float64)
    calls = []

    def conv(a, b, c):
        calls.append(a.shape[1])
        return F.conv2d(a, b, c)

    got = exact_conv(conv, x, w, bias, 255.0, 1)
    ref = F.conv2d(x.double(), w.double(), bias)
    assert float(ref.abs().max()) > EXACT_FLOAT32 and not torch.equal(ref.float().double(), ref)
    assert len(calls) == 2 and sum(calls) == 600  # two halves, no float64 pass
    assert got.dtype == torch.float32 and torch.equal(got, ref.float())
