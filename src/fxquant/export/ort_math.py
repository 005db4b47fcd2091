"""ONNX Runtime's integer-kernel arithmetic (CPU / MLAS), as pure functions.

A fused ORT kernel does not compute ``Q(op(DQ(a), DQ(b)))`` in exact arithmetic: it accumulates
in int32 and requantizes with float32 multipliers.  The two agree except within a float32
rounding error of a rounding tie, but in a deep network a single flipped code can flip others
downstream.  These functions reproduce ORT's float32 steps bit for bit (measured against
onnxruntime 1.31 on x86-64: 0 differing codes in 6 M QLinearAdd and 1.2 M QLinearConv / QGemm
outputs with random scales, zero points and codes; ``tests/export/test_ort_math.py``).

All functions take and return float64 tensors holding exact values (integer codes, float32
scales) and return the value *before* rounding; the caller rounds half to even, adds the zero
point where stated, and saturates -- exactly what a ``QuantizeLinear`` quantizer with
``ScaleMath.DIVIDE`` does to ``value * out_scale`` in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["requantize", "requantize_multiplier", "qlinear_add", "global_average_pool"]


def _f32(t: Tensor) -> Tensor:
    return t.to(torch.float32)


def requantize_multiplier(in_scale: Tensor, weight_scale: Tensor, out_scale: Tensor) -> Tensor:
    """``(in_scale * weight_scale) / out_scale`` in float32 arithmetic (QLinearConv / QGemm).

    Shapes: ``in_scale`` and ``out_scale`` 0-d, ``weight_scale`` 0-d or ``[C]``; returns float32.
    """
    return (_f32(in_scale) * _f32(weight_scale)) / _f32(out_scale)


def requantize(acc: Tensor, multiplier: Tensor) -> Tensor:
    """``float32(acc) * multiplier`` rounded to float32: the output code before rounding and zero
    point (``acc``: the exact int32 accumulator incl. the int32 bias, any float dtype; the
    multiplier broadcasts, e.g. ``[C, 1, 1]`` for NCHW)."""
    return (_f32(acc) * _f32(multiplier)).to(acc.dtype)


def qlinear_add(
    a: Tensor, a_scale: Tensor, a_zero_point: Tensor,
    b: Tensor, b_scale: Tensor, b_zero_point: Tensor,
    out_scale: Tensor, out_zero_point: Tensor,
) -> Tensor:
    """QLinearAdd on codes ``a`` / ``b`` (their raw integer codes, zero points included).

    ORT computes ``ra = sa / sc``, ``rb = sb / sc`` and ``k = zc - fma(ra, za, rb * zb)`` in
    float32, then ``fma(ra, a, fma(rb, b, k))`` in float32.  Returns that value (output zero point
    *included*) in ``a``'s dtype.
    """
    ra, rb = _f32(a_scale) / _f32(out_scale), _f32(b_scale) / _f32(out_scale)
    # float32 fmas, emulated in float64: the product of two float32 values is exact there
    zb_term = rb * _f32(b_zero_point)
    k = _f32(out_zero_point) - _f32(ra.double() * a_zero_point.double() + zb_term.double())
    inner = _f32(rb.double() * b.double() + k.double())
    return _f32(ra.double() * a.double() + inner.double()).to(a.dtype)


def global_average_pool(
    code_sum: Tensor, count: int, in_zero_point: Tensor, in_scale: Tensor, out_scale: Tensor
) -> Tensor:
    """QLinearGlobalAveragePool: ``float32(sum - count * zx) * (sx / (sy * count))`` in float32.

    ``code_sum``: the sum of the raw input codes over the pooled ``count`` elements.  Returns the
    output code before rounding and zero point.
    """
    acc = code_sum - count * in_zero_point.to(code_sum.dtype)
    scale = _f32(in_scale) / (_f32(out_scale) * float(count))
    return (_f32(acc) * scale).to(code_sum.dtype)
