"""``quantize`` / ``dequantize`` (``ScaleMath.DIVIDE``) against an independent numpy reference.

The reference below is written from the ONNX operator spec, not from fxquant:

* QuantizeLinear: ``y = saturate(round_half_to_even(x / y_scale) + y_zero_point)``; the division
  is IEEE float32 division, ``np.rint`` rounds half to even, the zero point is added in exact
  integer arithmetic (float64 holds every code) and the result saturates to ``[qmin, qmax]``.
* DequantizeLinear: ``y = (x - x_zero_point) * x_scale``; the subtraction is done in integers,
  converted to float32 and multiplied in float32 (ONNX Runtime's order).  For int32 inputs ONNX
  has no zero point (it must be 0), so int32 is only tested with zero point 0.

Every comparison is bit-exact (codes equal, float outputs equal as bit patterns).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxquant.numerics import (
    QDType,
    ScaleMath,
    clip_mask,
    dequantize,
    fake_quantize,
    qint4,
    qint8,
    qint16,
    qint32,
    quantize,
    quint4,
    quint8,
    quint16,
    storage_dtype,
)

DIVIDE = ScaleMath.DIVIDE
GRIDS = [QDType(b, s, n) for b in range(2, 17) for s in (True, False) for n in (False, True)]
NAMED = [
    d.narrow(n) for d in (qint4, quint4, qint8, quint8, qint16, quint16) for n in (False, True)
]
NP_STORAGE = {
    torch.int8: np.int8,
    torch.uint8: np.uint8,
    torch.int16: np.int16,
    torch.int32: np.int32,
    torch.int64: np.int64,
}


# -- the reference ------------------------------------------------------------------------------
def _per_axis(p: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    if axis is None or p.ndim == 0:
        return p
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return p.reshape(shape)


def onnx_quantize_linear(x, y_scale, y_zero_point, qmin, qmax, out_dtype, axis=None):
    """ONNX QuantizeLinear in numpy (float32 division, half-to-even, exact zp add, saturate)."""
    x = np.asarray(x, dtype=np.float32)
    scale = _per_axis(np.asarray(y_scale, dtype=np.float32), x.ndim, axis)
    zp = _per_axis(np.asarray(y_zero_point, dtype=np.int64), x.ndim, axis)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        r = np.rint(x / scale)
    assert r.dtype == np.float32
    return np.clip(r.astype(np.float64) + zp, qmin, qmax).astype(out_dtype)


def onnx_dequantize_linear(q, x_scale, x_zero_point, axis=None):
    """ONNX DequantizeLinear in numpy: integer subtraction, then float32 multiply."""
    q = np.asarray(q)
    scale = _per_axis(np.asarray(x_scale, dtype=np.float32), q.ndim, axis)
    zp = _per_axis(np.asarray(x_zero_point, dtype=np.int64), q.ndim, axis)
    return (q.astype(np.int64) - zp).astype(np.float32) * scale


# -- helpers --------------------------------------------------------------------------------------
def assert_bits_equal(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    if actual.dtype == np.float32:
        a, e = actual.view(np.int32), expected.view(np.int32)
    else:
        a, e = actual, expected
    bad = np.flatnonzero(a.reshape(-1) != e.reshape(-1))
    assert bad.size == 0, (
        f"{what}: {bad.size} of {a.size} differ; first: fxquant {actual.reshape(-1)[bad[0]]!r} "
        f"vs reference {expected.reshape(-1)[bad[0]]!r}"
    )


def check_against_onnx(
    x: np.ndarray, scale: np.ndarray, zp: np.ndarray, dtype: QDType, axis=None
) -> None:
    """quantize, dequantize, fake_quantize and clip_mask vs the reference, bit for bit."""
    ctx = f"{dtype} axis={axis} shape={x.shape}"
    xt, st_, zt = (
        torch.from_numpy(x),
        torch.from_numpy(scale),
        torch.from_numpy(zp.astype(np.int32)),
    )
    sdt = storage_dtype(dtype)
    q = quantize(xt, st_, zt, dtype, axis, DIVIDE)
    assert q.dtype == sdt, ctx
    q_ref = onnx_quantize_linear(x, scale, zp, dtype.qmin, dtype.qmax, NP_STORAGE[sdt], axis)
    assert_bits_equal(q.numpy(), q_ref, ctx + " quantize")
    deq = dequantize(q, st_, zt, axis)
    assert deq.dtype == torch.float32
    deq_ref = onnx_dequantize_linear(q_ref, scale, zp, axis)
    assert_bits_equal(deq.numpy(), deq_ref, ctx + " dequantize")
    assert_bits_equal(
        fake_quantize(xt, st_, zt, dtype, axis, DIVIDE).numpy(), deq_ref, ctx + " fake_quantize"
    )
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        unclamped = np.rint(x / _per_axis(scale, x.ndim, axis)).astype(np.float64) + _per_axis(
            zp, x.ndim, axis
        )
    mask_ref = (unclamped >= dtype.qmin) & (unclamped <= dtype.qmax)
    np.testing.assert_array_equal(
        clip_mask(xt, st_, zt, dtype, axis, DIVIDE).numpy(), mask_ref, err_msg=ctx
    )


def make_inputs(
    rng: np.random.Generator, shape, scale: np.ndarray, zp: np.ndarray, dtype: QDType
) -> np.ndarray:
    """In-range values, ties k + 0.5 (nudged by +-1 ulp at random) and outliers, in float32."""
    lo = np.broadcast_to(dtype.qmin - zp.astype(np.float64), shape)
    hi = np.broadcast_to(dtype.qmax - zp.astype(np.float64), shape)
    k = rng.integers(lo.astype(np.int64) - 2, hi.astype(np.int64) + 3).astype(np.float64)
    u = np.where(rng.random(shape) < 0.5, k + 0.5, rng.uniform(lo - 2, hi + 2))
    u = np.where(rng.random(shape) < 0.1, rng.choice([-1e7, 1e7], size=shape), u)
    x = (u * np.broadcast_to(scale.astype(np.float64), shape)).astype(np.float32)
    step = rng.integers(-1, 2, size=shape)
    x = np.where(
        step > 0,
        np.nextafter(x, np.float32(np.inf)),
        np.where(step < 0, np.nextafter(x, np.float32(-np.inf)), x),
    )
    return np.ascontiguousarray(x, dtype=np.float32)


def symmetric_zp(dtype: QDType) -> int:
    return 0 if dtype.signed else (dtype.qmin + dtype.qmax + 1) // 2


# -- tests ----------------------------------------------------------------------------------------
@settings(max_examples=1000)
@given(
    dtype=st.sampled_from(GRIDS),
    log2_scale=st.floats(-60, 60),
    zp_kind=st.sampled_from(["symmetric", "min", "max", "any"]),
    shape=st.lists(st.integers(1, 6), min_size=0, max_size=3).map(tuple),
    seed=st.integers(0, 2**32 - 1),
)
def test_per_tensor_matches_onnx(dtype, log2_scale, zp_kind, shape, seed):
    rng = np.random.default_rng(seed)
    zp = {"symmetric": symmetric_zp(dtype), "min": dtype.qmin, "max": dtype.qmax}.get(
        zp_kind, int(rng.integers(dtype.qmin, dtype.qmax + 1))
    )
    scale, zp = np.array(np.exp2(log2_scale), dtype=np.float32), np.array(zp, dtype=np.int64)
    check_against_onnx(make_inputs(rng, shape, scale, zp, dtype), scale, zp, dtype)


@settings(max_examples=1000)
@given(
    dtype=st.sampled_from(GRIDS),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
)
def test_per_channel_matches_onnx(dtype, shape, data, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    rng = np.random.default_rng(seed)
    c = shape[axis]
    scale = np.exp2(rng.uniform(-30, 30, c)).astype(np.float32)
    zp = rng.integers(dtype.qmin, dtype.qmax + 1, c)
    bshape = [1] * len(shape)
    bshape[axis] = c
    x = make_inputs(rng, shape, scale.reshape(bshape), zp.reshape(bshape), dtype)
    check_against_onnx(x, scale, zp, dtype, axis)


@pytest.mark.parametrize("dtype", NAMED, ids=repr)
def test_exact_ties_and_saturation(dtype):
    """Exact ties at power-of-two scales, all codes, and saturation up to +-inf."""
    for e in (-40, -7, 0, 3, 30):
        scale = np.array(np.ldexp(1.0, e), dtype=np.float32)
        for zp in {dtype.qmin, dtype.qmax, symmetric_zp(dtype)}:
            k = np.arange(dtype.qmin - zp - 4, dtype.qmax - zp + 5, dtype=np.float64)
            u = np.concatenate([k, k + 0.5, -(k + 0.5), [1e12, -1e12]])
            x = np.concatenate(
                [
                    (u * np.float64(scale)).astype(np.float32),
                    np.float32([np.inf, -np.inf, 3e38, -3e38]),
                ]
            )
            check_against_onnx(x, scale, np.array(zp), dtype)
            q = quantize(torch.from_numpy(x), torch.from_numpy(scale), torch.tensor(zp), dtype)
            offsets = q[len(k) : 2 * len(k)].long().numpy() - zp  # rounded k + 0.5, unsaturated
            inside = (k + 0.5 + zp > dtype.qmin) & (k + 0.5 + zp < dtype.qmax)
            assert inside.sum() >= dtype.levels - 1
            assert (offsets[inside] % 2 == 0).all(), "a tie was not rounded to even"
            assert (np.abs(offsets[inside] - (k[inside] + 0.5)) == 0.5).all()


def test_ties_round_to_even_codes():
    """Concrete ONNX examples: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -1.5 -> -2, with zp 0."""
    x = torch.tensor([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, 126.5, 127.5, -128.5, -129.5])
    q = quantize(x, torch.tensor(1.0), torch.tensor(0), qint8)
    assert q.tolist() == [0, 2, 2, 4, 0, -2, -2, 126, 127, -128, -128]
    q = quantize(x + 10, torch.tensor(1.0), torch.tensor(3), quint8)  # 10.5 + 3 -> 13 (10 even)
    assert q.tolist() == [13, 15, 15, 17, 13, 11, 11, 139, 141, 0, 0]


def test_non_power_of_two_scales_divide_like_onnx():
    """At ordinary scales x / s can round differently from x * (1/s): follow the division."""
    rng = np.random.default_rng(3)
    for dtype in (qint8, quint8, qint4, qint16):
        scale = np.exp2(rng.uniform(-12, 4, 257)).astype(np.float32)
        zp = rng.integers(dtype.qmin, dtype.qmax + 1, 257)
        k = rng.integers(dtype.qmin, dtype.qmax + 1, (16, 257)) - zp
        x = ((k + 0.5) * scale.astype(np.float64)).astype(np.float32)
        x = np.concatenate(
            [x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))]
        )
        check_against_onnx(x, scale, zp, dtype, axis=1)
        check_against_onnx(x, scale, zp, dtype, axis=-1)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (qint4, torch.int8),
        (quint4, torch.uint8),
        (qint8, torch.int8),
        (quint8, torch.uint8),
        (qint8.narrow(), torch.int8),
        (quint8.narrow(), torch.uint8),
        (qint16, torch.int16),
        (quint16, torch.int32),
        (qint32, torch.int32),
        (QDType(2, True), torch.int8),
        (QDType(9, False), torch.int32),
        (QDType(12, True), torch.int16),
        (QDType(17, True), torch.int32),
        (QDType(31, False), torch.int32),
        (QDType(32, False), torch.int64),
    ],
    ids=repr,
)
def test_storage_dtype_holds_every_code(dtype, expected):
    assert storage_dtype(dtype) == expected
    info = torch.iinfo(expected)
    assert info.min <= dtype.qmin and dtype.qmax <= info.max
    # saturation lands exactly on qmin / qmax in the storage dtype (no wrap-around)
    x = torch.tensor([-np.inf, -3e38, -1e10, 0.0, 1e10, 3e38, np.inf], dtype=torch.float32)
    q = quantize(x, torch.tensor(1.0), torch.tensor(max(dtype.qmin, 0)), dtype)
    assert q.dtype == expected
    assert q.tolist() == [dtype.qmin] * 3 + [max(dtype.qmin, 0)] + [dtype.qmax] * 3


def test_qint32_matches_onnx_with_zero_point_zero():
    """int32 (bias) quantization: codes beyond 2**24 and saturation near 2**31."""
    rng = np.random.default_rng(5)
    scale = np.array(2.0**-10, dtype=np.float32)
    x = np.concatenate(
        [
            rng.uniform(-1e6, 1e6, 1000),
            rng.uniform(-(2**21), 2**21, 1000),
            np.float32(
                [2**21, 2**21 - 2**-10, -(2**21), 2**21 + 2**-10, 3e38, -3e38, np.inf, -np.inf]
            ),
        ]
    ).astype(np.float32)
    check_against_onnx(x, scale, np.array(0), qint32)
    q = quantize(torch.from_numpy(x), torch.from_numpy(scale), torch.tensor(0), qint32)
    assert int(q.max()) == qint32.qmax and int(q.min()) == qint32.qmin


def test_dequantize_accepts_float_codes_and_out_dtype():
    q = torch.tensor([-128, -1, 0, 5, 127], dtype=torch.int8)
    s, z = torch.tensor(0.1), torch.tensor(-3)
    ref = onnx_dequantize_linear(q.numpy(), s.numpy(), z.numpy())
    assert_bits_equal(dequantize(q, s, z).numpy(), ref, "int8 codes")
    assert_bits_equal(dequantize(q.float(), s, z).numpy(), ref, "float codes")
    out64 = dequantize(q, s, z, out_dtype=torch.float64)
    assert out64.dtype == torch.float64
    np.testing.assert_array_equal(
        out64.numpy(), (q.numpy().astype(np.float64) + 3) * np.float64(np.float32(0.1))
    )
