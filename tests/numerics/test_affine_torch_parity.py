"""Bit-exact parity of ``fake_quantize(..., math=ScaleMath.RECIPROCAL)`` with torch's ops.

Reference ops: ``torch.fake_quantize_per_tensor_affine`` (both the float/int and the tensor
qparams overloads) and ``torch.fake_quantize_per_channel_affine``; float32 inputs.  Outputs are
compared bit for bit (as int32 bit patterns, so even the sign of zero must agree), and the
gradient of :func:`fxquant.numerics.fake_quantize_ste` w.r.t. ``x`` must equal the gradient of
torch's op (its clipped straight-through mask) bit for bit.

Grids: every ``[qmin, qmax]`` of 2..16 bits, signed and unsigned, full and narrow range
(``TORCH_DTYPES``, 60 grids, which includes int4/uint4/int8/uint8/int16/uint16); symmetric and
arbitrary zero points (including ``qmin`` and ``qmax``); per channel on every axis (also negative
axes for fxquant) of 1-4-d tensors; scales from 2**-126 (smallest normal float32) to 2**91.

Case count (a *case* is one tensor quantized by both implementations and compared; inputs mix
in-range values, exact and near (+-1 ulp) rounding ties, integers and outliers up to 1e9 steps):

==============================  ==================================================  ======
hypothesis, per tensor          ``N_HYPOTHESIS``                                      3000
hypothesis, per channel         ``N_HYPOTHESIS``                                      3000
exact ties, per tensor          12 named grids x 9 power-of-two scales x 4 zps         432
exact ties, per channel         12 named grids x 10 (ndim, axis) pairs                  120
clipping (+-inf, FLT_MAX, ...)  60 grids x 3 scales x 3 zero points                    540
seeded random, per tensor       ``N_SWEEP``                                            1500
seeded random, per channel      ``N_SWEEP``                                            1500
total                                                                                  10092
==============================  ==================================================  ======

Each case is counted when compared; when every test of this module ran, the module teardown
asserts the total is at least ``MIN_CASES`` = 10,000.

Out of scope, where the two differ by design: NaN inputs (torch maps NaN to ``qmin``, fxquant
propagates NaN; observers reject NaN anyway), float16 / float64 inputs (torch computes in float32
and rounds even a float64 output through float32, fxquant computes in the input's dtype), and
grids wider than 24 bits (float32 cannot hold every code).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxquant.numerics import (
    QDType,
    ScaleMath,
    fake_quantize,
    fake_quantize_ste,
    qint4,
    qint8,
    qint16,
    quantize_codes,
    quint4,
    quint8,
    quint16,
)

N_HYPOTHESIS = 3000
N_SWEEP = 1500
MIN_CASES = 10_000

TORCH_DTYPES = [
    QDType(bits, signed, narrow)
    for bits in range(2, 17)
    for signed in (True, False)
    for narrow in (False, True)
]
NAMED = [
    d.narrow(n) for d in (qint4, quint4, qint8, quint8, qint16, quint16) for n in (False, True)
]
POW2_EXPONENTS = (-126, -60, -14, -3, 0, 1, 5, 24, 80)
FLT_MAX = float(np.finfo(np.float32).max)
RECIP = ScaleMath.RECIPROCAL

_CASES: collections.Counter[str] = collections.Counter()  # cases compared, per kind
_RAN: set[str] = set()  # tests of this module that ran


@pytest.fixture(autouse=True)
def _record_test(request: pytest.FixtureRequest):
    yield
    _RAN.add(request.node.name)


@pytest.fixture(scope="module", autouse=True)
def _total_case_count(request: pytest.FixtureRequest):
    yield
    wanted = {item.name for item in request.session.items if item.module is request.module}
    if wanted <= _RAN:  # the whole module ran (not a -k subset)
        total = sum(_CASES.values())
        assert total >= MIN_CASES, f"only {total} torch-parity cases compared: {dict(_CASES)}"


# -- helpers -------------------------------------------------------------------------------------
def symmetric_zp(dtype: QDType) -> int:
    """The zero point choose_qparams uses for symmetric ranges."""
    return 0 if dtype.signed else (dtype.qmin + dtype.qmax + 1) // 2


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    a = actual.detach().contiguous().view(torch.int32)
    e = expected.detach().contiguous().view(torch.int32)
    if not torch.equal(a, e):
        bad = (a != e).nonzero()
        i = tuple(bad[0].tolist())
        raise AssertionError(
            f"{what}: {len(bad)} of {a.numel()} differ; first at {i}: "
            f"fxquant {actual.detach()[i].item()!r} vs torch {expected.detach()[i].item()!r}"
        )


def compare_with_torch(
    counter: str,
    x: torch.Tensor,
    scale: torch.Tensor,
    zp: torch.Tensor,
    dtype: QDType,
    axis: int | None = None,
    grad: bool = True,
) -> None:
    """One case: forward bit-exact vs torch, and (``grad``) STE mask gradient bit-exact."""
    qmin, qmax = dtype.qmin, dtype.qmax
    ctx = f"{dtype} axis={axis} shape={tuple(x.shape)}"

    def ref_fn(t: torch.Tensor) -> torch.Tensor:
        if axis is None:
            return torch.fake_quantize_per_tensor_affine(t, float(scale), int(zp), qmin, qmax)
        return torch.fake_quantize_per_channel_affine(t, scale, zp, axis % x.dim(), qmin, qmax)

    expected = ref_fn(x)
    assert_bitwise_equal(fake_quantize(x, scale, zp, dtype, axis, RECIP), expected, ctx)
    if axis is None:  # the tensor-qparams overload dispatches to another kernel
        alt = torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)
        assert_bitwise_equal(alt, expected, ctx + " (tensor qparams overload)")
    if grad:
        gen = torch.Generator().manual_seed(_CASES[counter])
        upstream = torch.randn(x.shape, dtype=torch.float32, generator=gen)
        xa = x.clone().requires_grad_(True)
        ya = fake_quantize_ste(xa, scale, zp, dtype, axis, RECIP)
        assert_bitwise_equal(ya, expected, ctx + " (ste forward)")
        ya.backward(upstream)
        xb = x.clone().requires_grad_(True)
        ref_fn(xb).backward(upstream)
        assert_bitwise_equal(xa.grad, xb.grad, ctx + " (ste gradient)")
    _CASES[counter] += 1


def make_inputs(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    scale: np.ndarray,
    zp: np.ndarray,
    dtype: QDType,
) -> np.ndarray:
    """float32 inputs around the grid: ``scale`` / ``zp`` broadcast against ``shape``.

    Each element is (at random) uniform over the codes +-2, an exact tie ``k + 0.5``, an exact
    code ``k``, or an outlier up to 1e9 steps away; a quarter are then moved by +-1 ulp.
    """
    lo = np.broadcast_to(dtype.qmin - zp.astype(np.float64), shape)
    hi = np.broadcast_to(dtype.qmax - zp.astype(np.float64), shape)
    kind = rng.integers(0, 4, size=shape)
    uniform = rng.uniform(lo - 2, hi + 2)
    ints = rng.integers(lo.astype(np.int64) - 2, hi.astype(np.int64) + 3).astype(np.float64)
    outlier = rng.choice([-1.0, 1.0], size=shape) * 10.0 ** rng.uniform(-3, 9, size=shape)
    u = np.select([kind == 0, kind == 1, kind == 2], [uniform, ints + 0.5, ints], outlier)
    x = (u * np.broadcast_to(scale.astype(np.float64), shape)).astype(np.float32)
    nudge = rng.integers(0, 8, size=shape)
    x = np.where(nudge == 0, np.nextafter(x, np.float32(np.inf)), x)
    x = np.where(nudge == 1, np.nextafter(x, np.float32(-np.inf)), x)
    return np.ascontiguousarray(x, dtype=np.float32)


def channel_shape(ndim: int, axis: int, c: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[axis % ndim] = c
    return tuple(shape)


def random_scales(rng: np.random.Generator, n: int, e_lo: int, e_hi: int) -> np.ndarray:
    return np.ldexp(rng.uniform(1.0, 2.0, n), rng.integers(e_lo, e_hi + 1, n)).astype(np.float32)


def random_zero_points(rng: np.random.Generator, n: int, dtype: QDType, mode: str) -> np.ndarray:
    if mode == "symmetric":
        return np.full(n, symmetric_zp(dtype), dtype=np.int64)
    if mode == "extreme":
        return rng.choice([dtype.qmin, dtype.qmax], size=n).astype(np.int64)
    return rng.integers(dtype.qmin, dtype.qmax + 1, n)


# -- hypothesis ----------------------------------------------------------------------------------
@st.composite
def per_tensor_cases(draw):
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    mantissa = draw(st.floats(1.0, 2.0, exclude_max=True))
    exponent = draw(st.integers(-126, 90))
    scale = np.float32(np.ldexp(mantissa, exponent))
    zp = draw(st.one_of(st.just(symmetric_zp(dtype)), st.integers(dtype.qmin, dtype.qmax)))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=4)))
    seed = draw(st.integers(0, 2**32 - 1))
    return dtype, scale, zp, shape, seed


@st.composite
def per_channel_cases(draw):
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    base_exponent = draw(st.integers(-120, 84))
    zp_mode = draw(st.sampled_from(["symmetric", "random", "extreme"]))
    seed = draw(st.integers(0, 2**32 - 1))
    return dtype, shape, axis, base_exponent, zp_mode, seed


@settings(max_examples=N_HYPOTHESIS)
@given(per_tensor_cases())
def test_per_tensor_matches_torch(case):
    dtype, scale, zp, shape, seed = case
    rng = np.random.default_rng(seed)
    x = make_inputs(rng, shape, np.asarray(scale), np.asarray(zp), dtype)
    compare_with_torch(
        "hypothesis_per_tensor",
        torch.from_numpy(x),
        torch.tensor(scale, dtype=torch.float32),
        torch.tensor(zp, dtype=torch.int32),
        dtype,
    )


@settings(max_examples=N_HYPOTHESIS)
@given(per_channel_cases())
def test_per_channel_matches_torch(case):
    dtype, shape, axis, base_exponent, zp_mode, seed = case
    rng = np.random.default_rng(seed)
    c = shape[axis]
    scale = random_scales(rng, c, base_exponent - 6, base_exponent + 6)
    zp = random_zero_points(rng, c, dtype, zp_mode)
    bshape = channel_shape(len(shape), axis, c)
    x = make_inputs(rng, shape, scale.reshape(bshape), zp.reshape(bshape), dtype)
    compare_with_torch(
        "hypothesis_per_channel",
        torch.from_numpy(x),
        torch.from_numpy(scale),
        torch.from_numpy(zp.astype(np.int32)),
        dtype,
        axis,
    )


# -- deterministic sweeps ------------------------------------------------------------------------
def _zero_points(dtype: QDType) -> list[int]:
    return [
        dtype.qmin,
        dtype.qmax,
        symmetric_zp(dtype),
        dtype.qmin + (dtype.qmax - dtype.qmin) // 3,
    ]


def _tie_offsets(dtype: QDType, zp: int, full: bool = True) -> np.ndarray:
    """Offsets k + 0.5 (ties), k, k +- 0.25 for every code of the grid and 3 beyond each end."""
    k = np.arange(dtype.qmin - zp - 3, dtype.qmax - zp + 4, dtype=np.float64)
    if not full:
        return np.concatenate([k + 0.5, k])
    return np.concatenate([k + 0.5, k, k + 0.25, k - 0.25, -(k + 0.5)])


@pytest.mark.parametrize("dtype", NAMED, ids=repr)
def test_exact_ties_per_tensor(dtype):
    """Power-of-two scales make ``(k + 0.5) * scale`` and its product with 1/scale exact ties."""
    for e in POW2_EXPONENTS:
        scale = np.float32(np.ldexp(1.0, e))
        for zp in _zero_points(dtype):
            u = _tie_offsets(dtype, zp)
            x = torch.from_numpy((u * np.float64(scale)).astype(np.float32))
            s, z = torch.tensor(scale), torch.tensor(zp, dtype=torch.int32)
            compare_with_torch("ties_per_tensor", x, s, z, dtype)
            # independent check of the convention: ties go to the even code
            codes = quantize_codes(x, s, z, dtype, math=RECIP).numpy().astype(np.float64)
            ties = u[: len(u) // 5]  # the k + 0.5 block
            even = np.where(np.floor(ties) % 2 == 0, np.floor(ties), np.ceil(ties))
            expected = np.clip(even + zp, dtype.qmin, dtype.qmax)
            np.testing.assert_array_equal(codes[: len(ties)], expected)


@pytest.mark.parametrize("dtype", NAMED, ids=repr)
def test_exact_ties_per_channel(dtype):
    """Every axis of 1-4-d tensors; 3 channels with different power-of-two scales and zps."""
    for ndim in range(1, 5):
        for axis in range(ndim):
            c = 3
            zps = np.roll(np.array([dtype.qmin, symmetric_zp(dtype), dtype.qmax]), axis)
            scales = np.ldexp(1.0, np.roll(np.array([-20, 0, 7]), axis)).astype(np.float32)
            rows = [_tie_offsets(dtype, int(z), full=False) for z in zps]
            n = max(len(r) for r in rows)
            n += -n % 4
            u = np.stack([np.resize(r, n) for r in rows])  # [C, n], padded by repetition
            rest = {1: (), 2: (n,), 3: (2, n // 2), 4: (2, 2, n // 4)}[ndim]
            if ndim == 1:  # one element per channel: every element has its own scale
                u, c = u.reshape(-1), 3 * n
                scales, zps = np.resize(scales, c), np.resize(zps, c)
            x = (u * scales.astype(np.float64).reshape(-1, *[1] * (u.ndim - 1))).astype(np.float32)
            x = np.moveaxis(x.reshape(c, *rest), 0, axis)
            compare_with_torch(
                "ties_per_channel",
                torch.from_numpy(np.ascontiguousarray(x)),
                torch.from_numpy(scales),
                torch.from_numpy(zps.astype(np.int32)),
                dtype,
                axis,
            )


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=repr)
def test_clipping_matches_torch(dtype):
    """Far outside the grid (up to +-inf) and the boundary ties ``qmin - 0.5`` / ``qmax + 0.5``."""
    for scale in (np.float32(1.37e-9), np.float32(0.0123), np.float32(3.3e4)):
        for zp in (dtype.qmin, dtype.qmax, symmetric_zp(dtype)):
            lo, hi = dtype.qmin - zp, dtype.qmax - zp
            steps = np.array(
                [lo - 0.5, lo - 0.51, lo - 0.49, lo - 1, hi + 0.5, hi + 0.49, hi + 0.51, hi + 1]
                + [s * m * dtype.levels for s in (-1, 1) for m in (1.5, 1e3, 1e6)]
            )
            far = np.array([FLT_MAX, -FLT_MAX, np.inf, -np.inf], dtype=np.float32)
            x = np.concatenate([(steps * np.float64(scale)).astype(np.float32), far])
            compare_with_torch(
                "clipping",
                torch.from_numpy(x),
                torch.tensor(scale),
                torch.tensor(zp, dtype=torch.int32),
                dtype,
            )


def test_seeded_random_per_tensor():
    rng = np.random.default_rng(20240601)
    for _ in range(N_SWEEP):
        dtype = TORCH_DTYPES[rng.integers(len(TORCH_DTYPES))]
        scale = random_scales(rng, 1, -126, 90)
        zp = random_zero_points(rng, 1, dtype, rng.choice(["symmetric", "random", "extreme"]))
        x = make_inputs(rng, (int(rng.integers(1, 65)),), scale, zp, dtype)
        compare_with_torch(
            "sweep_per_tensor",
            torch.from_numpy(x),
            torch.tensor(scale[0]),
            torch.tensor(int(zp[0]), dtype=torch.int32),
            dtype,
            grad=False,
        )


def test_seeded_random_per_channel():
    rng = np.random.default_rng(20240602)
    for _ in range(N_SWEEP):
        dtype = TORCH_DTYPES[rng.integers(len(TORCH_DTYPES))]
        shape = tuple(int(d) for d in rng.integers(1, 5, size=rng.integers(1, 5)))
        axis = int(rng.integers(-len(shape), len(shape)))
        c = shape[axis]
        e0 = int(rng.integers(-120, 85))
        scale = random_scales(rng, c, e0 - 6, e0 + 6)
        zp = random_zero_points(rng, c, dtype, rng.choice(["symmetric", "random", "extreme"]))
        bshape = channel_shape(len(shape), axis, c)
        x = make_inputs(rng, shape, scale.reshape(bshape), zp.reshape(bshape), dtype)
        compare_with_torch(
            "sweep_per_channel",
            torch.from_numpy(x),
            torch.from_numpy(scale),
            torch.from_numpy(zp.astype(np.int32)),
            dtype,
            axis,
            grad=False,
        )


def test_reciprocal_and_divide_really_differ():
    """The sweeps above would not notice a swap of ScaleMath if the two never disagreed.

    Near ties, ``x * fl(1/s)`` and ``x / s`` round to different codes for some scales; DIVIDE
    must then differ from torch and RECIPROCAL must not.
    """
    rng = np.random.default_rng(7)
    scale = random_scales(rng, 4096, -8, 0)
    x = ((rng.integers(-100, 100, 4096) + 0.5) * scale.astype(np.float64)).astype(np.float32)
    nudged = np.concatenate(
        [x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))]
    )
    xs, ss = torch.from_numpy(nudged), torch.from_numpy(np.tile(scale, 3))
    zp = torch.zeros_like(ss, dtype=torch.int32)
    expected = torch.fake_quantize_per_channel_affine(xs, ss, zp, 0, -128, 127)
    recip = fake_quantize(xs, ss, zp, qint8, 0, ScaleMath.RECIPROCAL)
    divide = fake_quantize(xs, ss, zp, qint8, 0, ScaleMath.DIVIDE)
    assert_bitwise_equal(recip, expected, "reciprocal")
    assert int((divide != expected).sum()) > 0


def test_ste_gradient_mask_with_scale_and_zero_point_tensors():
    """The STE mask is 1 exactly where torch's op passes gradient, including at qmin / qmax."""
    x = torch.tensor(
        [-1.29, -1.28, -1.2849, -1.2851, 0.0, 1.27, 1.2749, 1.2751, 5.0], requires_grad=True
    )
    s, z = torch.tensor(0.01), torch.tensor(0, dtype=torch.int32)
    fake_quantize_ste(x, s, z, qint8, math=RECIP).sum().backward()
    xt = x.detach().clone().requires_grad_(True)
    torch.fake_quantize_per_tensor_affine(xt, 0.01, 0, -128, 127).sum().backward()
    assert torch.equal(x.grad, xt.grad)
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
