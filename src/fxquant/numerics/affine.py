"""Affine quantization: quantize / dequantize / fake_quantize as pure functions.

Semantics follow ONNX ``QuantizeLinear``::

    q = saturate(round_half_to_even(x / scale) + zero_point)      # to [qmin, qmax]
    x_hat = (q - zero_point) * scale                               # DequantizeLinear

``torch.round`` rounds half to even.  One detail differs between runtimes: ONNX Runtime
divides by the scale, torch's kernels (``torch.fake_quantize_*``, fbgemm/qnnpack quantize)
multiply by the float32 reciprocal ``1 / scale``.  The two agree except within one ulp of a
rounding tie, so :class:`ScaleMath` makes the choice explicit and backend profiles select the one
their runtime uses.

Shapes: ``scale`` / ``zero_point`` are 0-d (per tensor) or 1-d of length ``x.shape[axis]``
(per channel, ``axis`` given).  All math is done in float32 (or ``x``'s float dtype).
"""

from __future__ import annotations

import enum

import torch

from .dtypes import QDType

__all__ = [
    "ScaleMath",
    "broadcast_param",
    "quantize",
    "dequantize",
    "fake_quantize",
    "quantize_codes",
    "unclamped_codes",
    "clip_mask",
    "storage_dtype",
]


class ScaleMath(enum.Enum):
    """How ``x / scale`` is evaluated before rounding.

    DIVIDE: true division, as the ONNX spec and ONNX Runtime compute it.
    RECIPROCAL: multiplication by the float32 reciprocal, as torch's quantized kernels and
        ``torch.fake_quantize_per_{tensor,channel}_affine`` compute it.
    """

    DIVIDE = "divide"
    RECIPROCAL = "reciprocal"


def broadcast_param(p: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reshape a per-channel parameter (1-d) so it broadcasts against ``x`` along ``axis``."""
    if axis is None or p.dim() == 0:
        return p
    axis = axis % x.dim()
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


def _scaled(x: torch.Tensor, scale: torch.Tensor, math: ScaleMath) -> torch.Tensor:
    if math is ScaleMath.DIVIDE:
        return x / scale
    return x * (1.0 / scale)


def quantize_codes(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: QDType,
    axis: int | None = None,
    math: ScaleMath = ScaleMath.DIVIDE,
) -> torch.Tensor:
    """Integer codes as a float tensor (same dtype as ``x``): ``clamp(round(x/s) + zp)``."""
    return unclamped_codes(x, scale, zero_point, axis, math).clamp_(dtype.qmin, dtype.qmax)


def unclamped_codes(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int | None = None,
    math: ScaleMath = ScaleMath.DIVIDE,
) -> torch.Tensor:
    """``round(x / s) + zp`` before saturation (a new float tensor of ``x``'s dtype)."""
    s = broadcast_param(scale.to(x.dtype), x, axis)
    z = broadcast_param(zero_point.to(x.dtype), x, axis)
    return torch.round(_scaled(x, s, math)).add_(z)


def clip_mask(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: QDType,
    axis: int | None = None,
    math: ScaleMath = ScaleMath.DIVIDE,
) -> torch.Tensor:
    """Boolean mask of the elements whose unclamped code lies in ``[qmin, qmax]``.

    This is the straight-through estimator's gradient mask (same as torch's fake-quant mask).
    """
    q = unclamped_codes(x, scale, zero_point, axis, math)
    if dtype.bits > 24:  # compare exactly: float32(2**31 - 1) == 2**31 would count as inside
        q = q.double()
    return (q >= dtype.qmin) & (q <= dtype.qmax)


def storage_dtype(dtype: QDType) -> torch.dtype:
    """The smallest torch integer dtype that holds every code of ``dtype``."""
    if dtype.signed:
        if dtype.bits <= 8:
            return torch.int8
        if dtype.bits <= 16:
            return torch.int16
        return torch.int32
    if dtype.bits <= 8:
        return torch.uint8
    if dtype.bits <= 31:
        return torch.int32
    return torch.int64


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: QDType,
    axis: int | None = None,
    math: ScaleMath = ScaleMath.DIVIDE,
) -> torch.Tensor:
    """Quantize ``x`` to integer codes stored in :func:`storage_dtype` (ONNX QuantizeLinear)."""
    q = quantize_codes(x, scale, zero_point, dtype, axis, math)
    if dtype.bits > 24:  # float32(qmax) may round up past qmax (2**31 - 1 -> 2**31) and wrap
        q = q.double().clamp_(dtype.qmin, dtype.qmax)
    return q.to(storage_dtype(dtype))


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(q - zero_point) * scale`` in ``out_dtype`` (ONNX DequantizeLinear)."""
    qf = q.to(out_dtype)
    s = broadcast_param(scale.to(out_dtype), qf, axis)
    z = broadcast_param(zero_point.to(out_dtype), qf, axis)
    return (qf - z) * s


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: QDType,
    axis: int | None = None,
    math: ScaleMath = ScaleMath.DIVIDE,
) -> torch.Tensor:
    """``dequantize(quantize(x))`` without leaving float: same shape and dtype as ``x``.

    No autograd rule is attached (``round`` has zero gradient); use
    :func:`fxquant.numerics.fake_quantize_ste` for training.
    """
    q = quantize_codes(x, scale, zero_point, dtype, axis, math)
    s = broadcast_param(scale.to(x.dtype), x, axis)
    z = broadcast_param(zero_point.to(x.dtype), x, axis)
    return q.sub_(z).mul_(s)
