"""The fast fake-quant paths are bit-identical to the reference formula.

Paths under test, each against :func:`fxquant.numerics.affine.fake_quantize_reference` (the
literal ``(clamp(round(x / s) + zp, qmin, qmax) - zp) * s``) and the reference STE mask
(unclamped code in ``[qmin, qmax]``, as a bool mask):

* the in-place pure-torch path (``fake_quantize`` / ``fake_quantize_inplace_with_mask``);
* ``fake_quantize_ste`` (float STE mask; its gradient must equal ``grad * bool_mask``);
* the opt-in fused ``torch.compile`` kernels (:mod:`fxquant.numerics.fused`), when they compile
  here (skipped, with the reason, when no compiler works; a kernel that compiles but differs
  fails).

Outputs are compared as bit patterns (so ``-0.0`` vs ``+0.0`` counts), NaN positions must agree.
Cases: every grid of 2..16 bits (signed / unsigned, full / narrow), zero points at ``qmin``,
``qmax``, the symmetric code and random ones, both :class:`ScaleMath` modes, exact ties
``(k + 0.5) * s`` and ``+-1`` ulp around them, ``+-0``, ``+-inf``, ``+-FLT_MAX``, NaN, scales
from ``2**-126`` to ``2**91``, per channel on every axis (negative too) of 1-4-d tensors, float32
and float64 inputs; hypothesis adds random draws.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxquant.numerics import QDType, ScaleMath, fake_quantize, fake_quantize_ste, qint8, quint8
from fxquant.numerics import fused as fused_mod
from fxquant.numerics.affine import (
    fake_quantize_inplace_with_mask,
    fake_quantize_reference,
    fast_path_applies,
    unclamped_codes,
)
from fxquant.numerics.autograd import fake_quantize_with_mask

GRIDS = [QDType(b, s, n) for b in range(2, 17) for s in (True, False) for n in (False, True)]
FLT_MAX = float(np.finfo(np.float32).max)


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().contiguous()
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    nan_a, nan_e = torch.isnan(actual), torch.isnan(expected)
    assert torch.equal(nan_a, nan_e), f"{what}: NaN positions differ"
    a, e = _bits(actual)[~nan_a], _bits(expected)[~nan_e]
    if not torch.equal(a, e):
        i = int((a != e).nonzero()[0])
        raise AssertionError(
            f"{what}: {int((a != e).sum())} differ; e.g. {actual[~nan_a][i].item()!r} vs "
            f"{expected[~nan_e][i].item()!r}"
        )


def reference_mask(x, scale, zp, dtype, axis, math) -> torch.Tensor:
    q = unclamped_codes(x, scale, zp, axis, math)
    return (q >= dtype.qmin) & (q <= dtype.qmax)


def tie_inputs(dtype: QDType, zp: np.ndarray, scale: np.ndarray, shape, rng) -> np.ndarray:
    """Ties ``(k + 0.5) * s``, codes, +-1 ulp nudges, outliers and specials, shaped ``shape``."""
    lo = np.broadcast_to(dtype.qmin - zp.astype(np.float64), shape)
    hi = np.broadcast_to(dtype.qmax - zp.astype(np.float64), shape)
    k = np.floor(rng.uniform(lo - 3, hi + 3))
    kind = rng.integers(0, 5, size=shape)
    u = np.select(
        [kind == 0, kind == 1, kind == 2, kind == 3],
        [k + 0.5, k, -(k + 0.5), rng.uniform(lo - 2, hi + 2)],
        rng.choice([-1.0, 1.0], shape) * 10.0 ** rng.uniform(-3, 9, shape),
    )
    x = (u * np.broadcast_to(scale.astype(np.float64), shape)).astype(np.float32)
    nudge = rng.integers(0, 6, size=shape)
    x = np.where(nudge == 0, np.nextafter(x, np.float32(np.inf)), x)
    x = np.where(nudge == 1, np.nextafter(x, np.float32(-np.inf)), x)
    flat = x.reshape(-1)
    specials = np.array(
        [0.0, -0.0, np.inf, -np.inf, FLT_MAX, -FLT_MAX, np.nan, -1e-30], dtype=np.float32
    )
    n = min(len(specials), flat.size)
    flat[rng.choice(flat.size, n, replace=False)] = specials[:n]
    return np.ascontiguousarray(x)


def channel_shape(ndim: int, axis: int, c: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[axis % ndim] = c
    return tuple(shape)


def check_all_paths(x, scale, zp, dtype, axis, math, fused: bool = False) -> bool:
    """Compare every path on one case; returns whether the fused kernel ran on it."""
    what = f"{dtype} axis={axis} {math.name} shape={tuple(x.shape)} {x.dtype}"
    ref = fake_quantize_reference(x, scale, zp, dtype, axis, math)
    ref_mask = reference_mask(x, scale, zp, dtype, axis, math)
    assert fast_path_applies(x, dtype)
    assert_same(fake_quantize(x, scale, zp, dtype, axis, math), ref, what + " fake_quantize")
    out, mask = fake_quantize_inplace_with_mask(x, scale, zp, dtype, axis, math)
    assert_same(out, ref, what + " inplace_with_mask")
    assert torch.equal(mask.bool(), ref_mask), what + " mask"
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # STE: gradient == grad * bool mask, bit for bit
    xa = x.clone().requires_grad_(True)
    ya = fake_quantize_ste(xa, scale, zp, dtype, axis, math)
    assert_same(ya, ref, what + " ste forward")
    g = torch.randn(x.shape, dtype=x.dtype)
    ya.backward(g)
    assert_same(xa.grad, g * ref_mask, what + " ste gradient")
    if fused:
        got = fused_mod.fused_fake_quantize(x, scale, zp, dtype, axis, math, with_mask=True)
        if got is None:  # declined (size-1 view dimension, float64 ...) or broken
            _check_not_broken()
            return False
        assert_same(got[0], ref, what + " fused")
        assert torch.equal(got[1].bool(), ref_mask), what + " fused mask"
        got = fused_mod.fused_fake_quantize(x, scale, zp, dtype, axis, math, with_mask=False)
        assert got is not None and got[1] is None, what
        assert_same(got[0], ref, what + " fused (no mask)")
        return True
    return False


def _check_not_broken() -> None:
    broken = fused_mod._State.broken
    if broken is None:
        return
    if broken.startswith("fused kernel"):  # compiled but gave different bits: a bug
        pytest.fail(broken)
    pytest.skip(f"fused kernels unavailable here: {broken}")


def sweep(rng, dtypes, fused: bool = False, dtype_x=torch.float32) -> tuple[int, int]:
    """Deterministic sweep; returns (cases, cases on which the fused kernel ran)."""
    n = n_fused = 0
    for dtype in dtypes:
        mid = 0 if dtype.signed else (dtype.qmin + dtype.qmax + 1) // 2
        for math in ScaleMath:
            for zp in (dtype.qmin, dtype.qmax, mid, int(rng.integers(dtype.qmin, dtype.qmax + 1))):
                for e in (-126, -14, 0, 7, 91):
                    s = np.float32(np.ldexp(rng.uniform(1.0, 2.0) if e % 2 else 1.0, e))
                    x = tie_inputs(dtype, np.asarray(zp), np.asarray(s), (257,), rng)
                    n_fused += check_all_paths(
                        torch.from_numpy(x).to(dtype_x),
                        torch.tensor(s),
                        torch.tensor(zp, dtype=torch.int32),
                        dtype,
                        None,
                        math,
                        fused,
                    )
                    n += 1
            for ndim in range(1, 5):
                for axis in range(-ndim, ndim):
                    shape = tuple(int(v) for v in rng.integers(1, 5, size=ndim))
                    c = shape[axis]
                    scale = np.ldexp(rng.uniform(1, 2, c), rng.integers(-20, 20, c)).astype(
                        np.float32
                    )
                    zps = rng.integers(dtype.qmin, dtype.qmax + 1, c)
                    bshape = channel_shape(ndim, axis, c)
                    x = tie_inputs(dtype, zps.reshape(bshape), scale.reshape(bshape), shape, rng)
                    n_fused += check_all_paths(
                        torch.from_numpy(x).to(dtype_x),
                        torch.from_numpy(scale),
                        torch.from_numpy(zps.astype(np.int32)),
                        dtype,
                        axis,
                        math,
                        fused,
                    )
                    n += 1
    return n, n_fused


def test_inplace_path_sweep_all_grids():
    rng = np.random.default_rng(0)
    assert sweep(rng, GRIDS)[0] >= 60 * 2 * 4 * 5


def test_inplace_path_float64_inputs():
    rng = np.random.default_rng(1)
    assert sweep(rng, [qint8, quint8, QDType(16, True), QDType(4, False)], dtype_x=torch.float64)[0]


def test_exact_ties_go_to_even_with_signed_zero():
    s = torch.tensor(0.5)
    x = torch.tensor([-0.25, -0.0, 0.0, 0.25, 0.75, 1.25, -0.75, -1.25])  # codes -0.5, ..., -2.5
    for zp in (0, 3, -3):
        z = torch.tensor(zp, dtype=torch.int32)
        out = fake_quantize(x, s, z, qint8)
        assert_same(out, fake_quantize_reference(x, s, z, qint8), f"zp={zp}")
        assert not torch.signbit(out[:3]).any()  # -0.0 never leaks out of the fast path
        assert out[3:].tolist() == [0.0, 1.0, 1.0, -1.0, -1.0]


def test_saturation_inf_and_flt_max():
    x = torch.tensor([float("inf"), -float("inf"), FLT_MAX, -FLT_MAX])
    for dtype in (qint8, quint8, QDType(16, False), QDType(2, True, True)):
        for zp in (dtype.qmin, dtype.qmax):
            check_all_paths(
                x,
                torch.tensor(0.1),
                torch.tensor(zp, dtype=torch.int32),
                dtype,
                None,
                ScaleMath.DIVIDE,
            )


def test_fast_path_scope():
    x = torch.randn(4)
    assert fast_path_applies(x, qint8)
    assert not fast_path_applies(x.half(), qint8)
    assert not fast_path_applies(x, QDType(24, True))
    with torch.enable_grad():
        assert not fast_path_applies(x.requires_grad_(), qint8)  # reference keeps autograd


def test_fake_quantize_keeps_autograd_of_reference():
    """With grad recording, ``fake_quantize`` still builds the reference's graph (d/ds)."""
    x = torch.randn(16)
    s = torch.tensor(0.1, requires_grad=True)
    fake_quantize(x, s, torch.tensor(0, dtype=torch.int32), qint8).sum().backward()
    assert s.grad is not None


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from(GRIDS))
    math = draw(st.sampled_from(list(ScaleMath)))
    per_channel = draw(st.booleans())
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    axis = draw(st.integers(-len(shape), len(shape) - 1)) if per_channel else None
    e = draw(st.integers(-120, 85))
    seed = draw(st.integers(0, 2**32 - 1))
    return dtype, math, shape, axis, e, seed


def _case_tensors(case):
    dtype, math, shape, axis, e, seed = case
    rng = np.random.default_rng(seed)
    if axis is None:
        scale = np.asarray(np.ldexp(rng.uniform(1, 2), e), dtype=np.float32)
        zp = np.asarray(rng.integers(dtype.qmin, dtype.qmax + 1))
        x = tie_inputs(dtype, zp, scale, shape, rng)
    else:
        c = shape[axis]
        scale = np.ldexp(rng.uniform(1, 2, c), rng.integers(e - 6, e + 6, c)).astype(np.float32)
        zp = rng.integers(dtype.qmin, dtype.qmax + 1, c)
        b = channel_shape(len(shape), axis, c)
        x = tie_inputs(dtype, zp.reshape(b), scale.reshape(b), shape, rng)
    return (
        torch.from_numpy(x),
        torch.from_numpy(np.asarray(scale)),
        torch.from_numpy(np.asarray(zp).astype(np.int32)),
        dtype,
        axis,
        math,
    )


@settings(max_examples=600)
@given(cases())
def test_hypothesis_inplace_path(case):
    check_all_paths(*_case_tensors(case))


# -- fused (opt-in torch.compile) kernels -------------------------------------------------------
@pytest.fixture
def fused_on(monkeypatch):
    monkeypatch.setattr(fused_mod, "FUSED_MIN_NUMEL", 0)  # small test tensors take it too
    with fused_mod.fused_kernels(True) as ok:
        if not ok:
            pytest.skip(
                f"fused kernels unavailable: {fused_mod._State.broken or 'no torch.compile'}"
            )
        yield


def test_fused_off_by_default():
    assert not fused_mod._State.enabled
    assert (
        fused_mod.fused_fake_quantize(
            torch.randn(8), torch.tensor(0.1), torch.tensor(0, dtype=torch.int32), qint8
        )
        is None
    )


@pytest.mark.slow
def test_fused_sweep(fused_on):
    rng = np.random.default_rng(2)
    grids = [
        qint8,
        quint8,
        QDType(4, True),
        QDType(4, False, True),
        QDType(16, True),
        QDType(16, False),
        QDType(2, True),
    ]
    n, n_fused = sweep(rng, grids, fused=True)
    assert n_fused >= n // 3, (n, n_fused)  # per-tensor cases and per-channel without size-1 dims


@pytest.mark.slow
@settings(max_examples=200)
@given(cases())
def test_fused_hypothesis(case):
    saved = fused_mod.FUSED_MIN_NUMEL
    fused_mod.FUSED_MIN_NUMEL = 0
    try:
        with fused_mod.fused_kernels(True) as ok:
            if not ok:
                pytest.skip(f"fused kernels unavailable: {fused_mod._State.broken}")
            check_all_paths(*_case_tensors(case), fused=True)
    finally:
        fused_mod.FUSED_MIN_NUMEL = saved


@pytest.mark.slow
def test_fused_used_by_public_functions(fused_on):
    x = torch.randn(3, 5, 4) * 3
    s, z = torch.rand(5) * 0.1 + 0.01, torch.zeros(5, dtype=torch.int32)
    ref = fake_quantize_reference(x, s, z, qint8, 1)
    assert_same(fake_quantize(x, s, z, qint8, 1), ref, "fake_quantize (fused on)")
    out, mask = fake_quantize_with_mask(x, s, z, qint8, 1)
    assert torch.equal(mask.bool(), reference_mask(x, s, z, qint8, 1, ScaleMath.DIVIDE))
    assert_same(out, ref, "fake_quantize_with_mask (fused on)")
    assert fused_mod.fused_enabled()  # verified, not turned off
