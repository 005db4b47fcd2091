"""``choose_qparams``: degenerate ranges, zero exactly representable, power-of-two scales,
symmetric conventions, and (hypothesis) coverage of ``[min, max]`` up to half a step.

Tolerances are in quantization steps ``s``: every ``x`` in ``[min, max]`` must fake-quantize
to within ``s / 2`` of itself, plus 4 float32 ulps of ``max(|min|, |max|)`` for the roundings of
``s`` to float32, of ``x / s`` and of ``(q - zp) * s``.  Grids up to 16 bits (float32 cannot
carry a 32-bit code exactly, so qint32 is checked for the degenerate cases only).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fxquant.numerics import (
    DEFAULT_EPS,
    QDType,
    ScaleMath,
    choose_qparams,
    fake_quantize,
    qint4,
    qint8,
    qint16,
    qint32,
    quantize,
    quint4,
    quint8,
    quint16,
)

GRIDS = [
    d.narrow(n) for d in (qint4, quint4, qint8, quint8, qint16, quint16) for n in (False, True)
]
ALL = [*GRIDS, qint32, qint32.narrow(), QDType(2, True), QDType(3, False, True)]
MATHS = list(ScaleMath)
F32_1E30 = float(np.float32(1e30))
F32_1E_6 = float(np.float32(1e-6))


def fq(x, scale, zp, dtype, math=ScaleMath.DIVIDE):
    return fake_quantize(torch.as_tensor(x, dtype=torch.float32), scale, zp, dtype, math=math)


def check_valid(scale: torch.Tensor, zp: torch.Tensor, dtype: QDType, shape=()) -> None:
    assert scale.dtype == torch.float32 and zp.dtype == torch.int32
    assert scale.shape == shape and zp.shape == shape
    assert bool(torch.isfinite(scale).all()) and bool((scale >= DEFAULT_EPS).all())
    assert bool(((zp >= dtype.qmin) & (zp <= dtype.qmax)).all())


# -- degenerate ranges ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ALL, ids=repr)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "affine"])
@pytest.mark.parametrize("power_of_two", [False, True], ids=["plain", "pow2"])
@pytest.mark.parametrize("value", [0.0, 3.7, -3.7, 1e-30, -1e-30, 1e20, -1e20])
def test_constant_tensor_gives_positive_scale_and_exact_zero(dtype, symmetric, power_of_two, value):
    data = torch.full((5, 3), value)
    lo, hi = torch.aminmax(data)
    scale, zp = choose_qparams(lo, hi, dtype, symmetric, power_of_two)
    check_valid(scale, zp, dtype)
    for math in MATHS:
        zero = fq(torch.zeros(4), scale, zp, dtype, math)
        assert zero.tolist() == [0.0] * 4, "0 must be exactly representable"
        if dtype.bits <= 16:  # the constant itself is within half a step
            err = (fq(data, scale, zp, dtype, math) - data).abs().max()
            assert float(err) <= 0.5 * float(scale) + 4 * float(np.spacing(np.float32(abs(value))))
    if symmetric and dtype.signed:
        assert int(zp) == 0
    if symmetric and not dtype.signed:
        assert int(zp) == (dtype.qmin + dtype.qmax + 1) // 2


def test_all_zero_range_uses_eps():
    for dtype in (qint8, quint8):
        for symmetric in (True, False):
            scale, zp = choose_qparams(torch.tensor(0.0), torch.tensor(0.0), dtype, symmetric)
            assert float(scale) == np.float32(DEFAULT_EPS)
            assert int(zp) == (dtype.qmin if not symmetric else 0 if dtype.signed else 128)
            scale, _ = choose_qparams(
                torch.tensor(0.0), torch.tensor(0.0), dtype, symmetric, eps=1e-3
            )
            assert float(scale) == np.float32(1e-3)


def test_positive_and_negative_constants_pin_the_zero_point_to_the_ends():
    """The range is widened to include 0: a positive constant gets zp = qmin, a negative qmax."""
    s, z = choose_qparams(torch.tensor(2.55), torch.tensor(2.55), quint8, symmetric=False)
    assert int(z) == 0 and float(s) == np.float32(2.55 / 255)
    assert int(quantize(torch.tensor(2.55), s, z, quint8)) == 255
    s, z = choose_qparams(torch.tensor(-2.55), torch.tensor(-2.55), quint8, symmetric=False)
    assert int(z) == 255 and int(quantize(torch.tensor(-2.55), s, z, quint8)) == 0
    s, z = choose_qparams(torch.tensor(-1.0), torch.tensor(-1.0), qint8, symmetric=False)
    assert int(z) == 127 and int(quantize(torch.tensor(-1.0), s, z, qint8)) == -128


def test_min_greater_than_max_raises():
    with pytest.raises(ValueError, match="min_val > max_val"):
        choose_qparams(torch.tensor(1.0), torch.tensor(0.0), qint8, symmetric=True)
    with pytest.raises(ValueError):
        choose_qparams(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0]), qint8, symmetric=False)


# -- known values ---------------------------------------------------------------------------------
def test_known_values():
    s, z = choose_qparams(torch.tensor(-1.27), torch.tensor(0.5), qint8, symmetric=True)
    assert float(s) == np.float32(1.27 / 127) and int(z) == 0
    s, z = choose_qparams(torch.tensor(-1.27), torch.tensor(0.5), quint8, symmetric=True)
    assert float(s) == np.float32(1.27 / 127) and int(z) == 128
    s, z = choose_qparams(torch.tensor(-1.0), torch.tensor(3.0), quint8, symmetric=False)
    assert float(s) == np.float32(4.0 / 255) and int(z) == 64  # round(63.75)
    s, z = choose_qparams(
        torch.tensor(-1.0), torch.tensor(3.0), quint8, symmetric=False, power_of_two=True
    )
    assert float(s) == 2.0**-5 and int(z) == 32  # 4/255 rounded up to 1/32; round(32.0)
    s, z = choose_qparams(torch.tensor(-1.0), torch.tensor(1.0), qint8.narrow(), symmetric=True)
    assert float(s) == np.float32(1.0 / 127) and int(z) == 0


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("power_of_two", [False, True])
def test_per_channel_equals_elementwise(symmetric, power_of_two):
    rng = np.random.default_rng(0)
    lo = torch.from_numpy(-np.abs(rng.normal(0, 3, 17)).astype(np.float32))
    hi = torch.from_numpy(np.abs(rng.normal(0, 3, 17)).astype(np.float32))
    lo[3], hi[3] = 0.0, 0.0
    lo[4] = 1.0  # positive constant channel
    hi[5] = -2.0  # negative constant channel
    lo[5] = -2.0
    scale, zp = choose_qparams(lo, hi, quint8, symmetric, power_of_two)
    check_valid(scale, zp, quint8, (17,))
    for i in range(17):
        s_i, z_i = choose_qparams(lo[i], hi[i], quint8, symmetric, power_of_two)
        assert torch.equal(scale[i], s_i) and torch.equal(zp[i], z_i)


# -- symmetric conventions ------------------------------------------------------------------------
@settings(max_examples=300)
@given(
    dtype=st.sampled_from([d for d in GRIDS if d.signed]),
    amax=st.floats(F32_1E_6, F32_1E30, width=32),
    other=st.floats(0.0, 1.0),
    negative_side=st.booleans(),
    math=st.sampled_from(MATHS),
)
def test_symmetric_signed_maps_amax_to_qmax(dtype, amax, other, negative_side, math):
    assume(amax / dtype.qmax >= DEFAULT_EPS)
    lo, hi = (-amax, amax * other) if negative_side else (-amax * other, amax)
    scale, zp = choose_qparams(torch.tensor(lo), torch.tensor(hi), dtype, symmetric=True)
    assert int(zp) == 0
    q = quantize(torch.tensor([amax, -amax], dtype=torch.float32), scale, zp, dtype, math=math)
    assert q.tolist() == [dtype.qmax, -dtype.qmax]


def test_symmetric_unsigned_maps_amax_to_qmax():
    for dtype in (quint8, quint4, quint16, quint8.narrow()):
        scale, zp = choose_qparams(torch.tensor(-0.3), torch.tensor(2.9), dtype, symmetric=True)
        mid = (dtype.qmin + dtype.qmax + 1) // 2
        q = quantize(torch.tensor([2.9, -2.9, 0.0]), scale, zp, dtype)
        assert q.tolist() == [dtype.qmax, 2 * mid - dtype.qmax, mid]


# -- power of two ---------------------------------------------------------------------------------
def is_power_of_two(t: torch.Tensor) -> bool:
    mantissa, _ = torch.frexp(t)
    return bool((mantissa == 0.5).all())


ranges = st.tuples(
    st.floats(-F32_1E30, F32_1E30, width=32, allow_subnormal=False),
    st.floats(-F32_1E30, F32_1E30, width=32, allow_subnormal=False),
).map(sorted)
small_ranges = st.tuples(st.floats(-100, 100, width=32), st.floats(-100, 100, width=32)).map(sorted)


@settings(max_examples=400)
@given(
    rng_=st.one_of(ranges, small_ranges),
    dtype=st.sampled_from(GRIDS),
    symmetric=st.booleans(),
)
def test_power_of_two_is_exact_and_never_clips_more(rng_, dtype, symmetric):
    lo, hi = (torch.tensor(v, dtype=torch.float32) for v in rng_)
    plain_s, plain_z = choose_qparams(lo, hi, dtype, symmetric)
    p2_s, p2_z = choose_qparams(lo, hi, dtype, symmetric, power_of_two=True)
    check_valid(p2_s, p2_z, dtype)
    assert is_power_of_two(p2_s)
    assert float(p2_s) >= float(plain_s)
    assert float(p2_s) <= 2 * float(plain_s)  # the next power of two up, not further
    if symmetric:  # same zero point, wider grid: the clipping range only grows
        assert int(p2_z) == int(plain_z)
        plain_lo, plain_hi = ((q - int(plain_z)) * float(plain_s) for q in (dtype.qmin, dtype.qmax))
        p2_lo, p2_hi = ((q - int(p2_z)) * float(p2_s) for q in (dtype.qmin, dtype.qmax))
        assert p2_lo <= plain_lo and p2_hi >= plain_hi
        # whatever the plain scale does not clip, the power-of-two scale does not clip either
        probe = np.linspace(plain_lo, plain_hi, 257).astype(np.float32)
        probe = torch.from_numpy(np.clip(probe, np.float32(plain_lo), np.float32(plain_hi)))
        err = (fq(probe, p2_s, p2_z, dtype) - probe).abs()
        tol = 0.5 * float(p2_s) + 4 * np.spacing(probe.abs().numpy())
        assert bool((err.numpy() <= tol).all())


# -- coverage property ----------------------------------------------------------------------------
@settings(max_examples=600)
@given(
    rng_=st.one_of(ranges, small_ranges),
    dtype=st.sampled_from(GRIDS),
    symmetric=st.booleans(),
    power_of_two=st.booleans(),
    math=st.sampled_from(MATHS),
)
def test_range_is_covered_up_to_half_a_step(rng_, dtype, symmetric, power_of_two, math):
    lo, hi = rng_
    scale, zp = choose_qparams(torch.tensor(lo), torch.tensor(hi), dtype, symmetric, power_of_two)
    check_valid(scale, zp, dtype)
    x = np.concatenate([np.linspace(lo, hi, 101), [lo, hi, 0.0 if lo <= 0 <= hi else lo]])
    x = np.clip(x.astype(np.float32), np.float32(lo), np.float32(hi))
    err = (fq(torch.from_numpy(x), scale, zp, dtype, math) - torch.from_numpy(x)).abs().double()
    tol = 0.5 * float(scale) + 4 * float(np.spacing(np.float32(max(abs(lo), abs(hi)))))
    assert float(err.max()) <= tol, f"max error {float(err.max())} > {tol} (scale {float(scale)})"


# -- the exact shortcuts: one range in Python floats, symmetric signed grids in float32 -----------
def _float64_path(lo: torch.Tensor, hi: torch.Tensor, *args, **kwargs):
    """The float64 tensor arithmetic itself (a 1-d float64 range takes no shortcut)."""
    s, z = choose_qparams(lo.double().reshape(-1), hi.double().reshape(-1), *args, **kwargs)
    return s.reshape(lo.shape), z.reshape(lo.shape)


def assert_same_qparams(got, ref, what: str) -> None:
    (s, z), (rs, rz) = got, ref
    assert s.dtype == rs.dtype == torch.float32 and z.dtype == rz.dtype == torch.int32, what
    assert s.shape == rs.shape and z.shape == rz.shape, what
    assert torch.equal(s.view(torch.int32), rs.view(torch.int32)), f"{what}: {s} vs {rs}"
    assert torch.equal(z, rz), f"{what}: {z} vs {rz}"


SHORTCUT_GRIDS = [*ALL, QDType(24, True), QDType(24, True, True), QDType(5, False)]
F32_EXTREMES = [0.0, -0.0, 2.0**-149, -(2.0**-149), 1.17e-38, 1e-30, 3e-8, 1.0, 65504.0, 1e30,
                float(np.finfo(np.float32).max)]


def _shortcut_cases(rng, n: int):
    for i in range(n):
        a, b = (np.float32(rng.standard_normal() * 10.0 ** rng.uniform(-44, 38)) for _ in "ab")
        if i % 7 == 0:
            a = np.float32(rng.choice(F32_EXTREMES)) * np.float32(rng.choice([-1, 1]))
        if i % 11 == 0:
            b = a
        yield (min(a, b), max(a, b), SHORTCUT_GRIDS[i % len(SHORTCUT_GRIDS)],
               bool(i % 2), bool(i % 5 == 0), [DEFAULT_EPS, 1e-30, 0.1, 0.0, 1e-3][i % 5])


def test_one_range_in_python_floats_matches_the_float64_tensors():
    rng = np.random.default_rng(3)
    for lo, hi, dtype, symmetric, p2, eps in _shortcut_cases(rng, 4000):
        lo_t, hi_t = torch.tensor(float(lo)), torch.tensor(float(hi))
        what = f"[{lo}, {hi}] {dtype} sym={symmetric} p2={p2} eps={eps}"
        ref = _float64_path(lo_t, hi_t, dtype, symmetric, p2, eps)
        assert_same_qparams(choose_qparams(lo_t, hi_t, dtype, symmetric, p2, eps), ref, what)
        # Python numbers and float64 0-d tensors take the same shortcut
        assert_same_qparams(choose_qparams(float(lo), float(hi), dtype, symmetric, p2, eps),
                            ref, what + " (floats)")


def test_symmetric_signed_float32_shortcut_matches_the_float64_tensors():
    rng = np.random.default_rng(4)
    for i in range(400):
        c = int(rng.integers(1, 40))
        vals = [next(_shortcut_cases(rng, 1))[:2] for _ in range(c)]
        lo = torch.tensor([float(v[0]) for v in vals], dtype=torch.float32)
        hi = torch.tensor([float(v[1]) for v in vals], dtype=torch.float32)
        dtype = [qint8, qint4, qint16, QDType(24, True), qint8.narrow(), QDType(2, True)][i % 6]
        eps = [DEFAULT_EPS, 1e-30, 0.1, 0.0][i % 4]
        ref = _float64_path(lo, hi, dtype, True, False, eps)
        assert_same_qparams(choose_qparams(lo, hi, dtype, True, False, eps), ref, f"{dtype} {eps}")


@settings(max_examples=500)
@given(
    a=st.floats(width=32, allow_nan=False, allow_infinity=False),
    b=st.floats(width=32, allow_nan=False, allow_infinity=False),
    dtype=st.sampled_from(SHORTCUT_GRIDS),
    symmetric=st.booleans(),
    power_of_two=st.booleans(),
    eps=st.sampled_from([DEFAULT_EPS, 1e-30, 0.25, 0.0]),
)
def test_shortcuts_hypothesis(a, b, dtype, symmetric, power_of_two, eps):
    lo, hi = sorted((a, b))
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
    ref = _float64_path(lo_t, hi_t, dtype, symmetric, power_of_two, eps)
    assert_same_qparams(choose_qparams(lo_t, hi_t, dtype, symmetric, power_of_two, eps), ref,
                        "one range")
    lo_c, hi_c = torch.tensor([lo, -abs(hi), 0.0]), torch.tensor([hi, abs(hi), abs(lo)])
    ref = _float64_path(lo_c, hi_c, dtype, symmetric, power_of_two, eps)
    assert_same_qparams(choose_qparams(lo_c, hi_c, dtype, symmetric, power_of_two, eps), ref,
                        "per channel")


def test_shortcut_declines_what_it_cannot_reproduce():
    # non-finite ranges, zero scales (eps 0) and overflowing scales take the tensor arithmetic
    inf = torch.tensor(float("inf"))
    s, _ = choose_qparams(torch.tensor(0.0), inf, qint8, True)
    assert torch.isinf(s)
    s, z = choose_qparams(torch.tensor(0.0), torch.tensor(0.0), quint8, False, eps=0.0)
    ref = _float64_path(torch.tensor(0.0), torch.tensor(0.0), quint8, False, eps=0.0)
    assert torch.equal(s, ref[0]) and torch.equal(z, ref[1])
    with pytest.raises(ValueError, match="min_val > max_val"):
        choose_qparams(2.0, 1.0, qint8, True)
