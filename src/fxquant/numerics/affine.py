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
    "fake_quantize_reference",
    "fast_path_applies",
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


def fake_quantize_reference(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: QDType,
    axis: int | None = None,
    math: ScaleMath = ScaleMath.DIVIDE,
) -> torch.Tensor:
    """The specification, literally: ``(clamp(round(x / s) + zp, qmin, qmax) - zp) * s``.

    Used for grids wider than 16 bits and non-float32/64 inputs, and as the reference that the
    fast paths are tested against.
    """
    q = quantize_codes(x, scale, zero_point, dtype, axis, math)
    s = broadcast_param(scale.to(x.dtype), x, axis)
    z = broadcast_param(zero_point.to(x.dtype), x, axis)
    return q.sub_(z).mul_(s)


FAST_PATH_MAX_BITS = 16
"""Grids up to this many bits take the in-place path: every code, ``qmin - zp`` and
``qmax - zp`` is an integer below ``2**17`` in magnitude, exact in float32."""


def fast_path_applies(x: torch.Tensor, dtype: QDType, *params: torch.Tensor) -> bool:
    """True if :func:`fake_quantize_inplace_path` is exact for ``x`` and ``dtype``.

    Tensors that autograd records (``x`` or ``params`` requiring grad with grad mode on) take
    the reference path, whose autograd graph the in-place path does not build.
    """
    if x.dtype not in (torch.float32, torch.float64) or dtype.bits > FAST_PATH_MAX_BITS:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return False
    return True


Bound = float | torch.Tensor


def shifted_bounds(
    x: torch.Tensor, zero_point: torch.Tensor, dtype: QDType, axis: int | None
) -> tuple[Bound, Bound]:
    """``(qmin - zp, qmax - zp)``: Python floats for a per-tensor zero point of a CPU tensor,
    else tensors in ``x``'s dtype shaped to broadcast against ``x``.

    torch's ``clamp`` with tensor bounds runs an unvectorised ternary kernel (~15x a copy on
    CPU); with scalar bounds, or as ``maximum`` / ``minimum`` with broadcast tensors, it runs at
    memory speed (see :func:`clamp_codes_`).
    """
    if zero_point.dim() == 0 and x.device.type == "cpu":
        z = float(zero_point)
        return float(dtype.qmin - z), float(dtype.qmax - z)
    z = broadcast_param(zero_point.to(x.dtype), x, axis)
    return dtype.qmin - z, dtype.qmax - z


def clamp_codes_(buf: torch.Tensor, lo: Bound, hi: Bound) -> torch.Tensor:
    """``buf.clamp_(lo, hi)`` by the fastest exact route (NaN stays NaN either way).

    The sign of a zero result may depend on the route; every caller then adds ``+0.0``.
    """
    if isinstance(lo, float):
        return buf.clamp_(lo, hi)
    torch.maximum(buf, lo, out=buf)
    return torch.minimum(buf, hi, out=buf)


def fake_quantize_inplace_path(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: QDType,
    axis: int | None = None,
    math: ScaleMath = ScaleMath.DIVIDE,
) -> torch.Tensor:
    """Fake quantization by in-place passes over one new buffer (same shape / dtype as ``x``).

    ``buf = x / s`` (or ``x * float(1 / s)``), ``round_``, ``clamp_(qmin - zp, qmax - zp)``,
    then ``buf * s + 0.0`` (``mul_``, ``add_``).  This equals the reference bit for bit when
    :func:`fast_path_applies`: with integers below ``2**24`` in magnitude,
    ``clamp(r + zp, qmin, qmax) - zp == clamp(r, qmin - zp, qmax - zp)`` exactly (an
    out-of-range ``r`` clips on the same side either way), and adding ``+0.0`` turns the
    ``-0.0`` that ``round`` gives for ``x`` in ``(-s/2, 0]`` into the reference's ``+0.0``.
    """
    buf = scaled_codes(x, scale, axis, math)
    lo, hi = shifted_bounds(x, zero_point, dtype, axis)
    clamp_codes_(buf, lo, hi)
    return dequantize_shifted_(buf, scale, axis)


def fake_quantize_inplace_with_mask(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: QDType,
    axis: int | None = None,
    math: ScaleMath = ScaleMath.DIVIDE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fake_quantize_inplace_path` plus the STE mask (two new buffers).

    Returns ``(out, mask)`` of ``x``'s shape and dtype; ``mask`` is ``1.0`` where the unclamped
    code ``round(x / s) + zp`` lies in ``[qmin, qmax]`` (equivalently ``round(x / s)`` in
    ``[qmin - zp, qmax - zp]``) and ``0.0`` elsewhere, NaN and +-inf included.  No autograd
    graph is recorded.
    """
    with torch.no_grad():
        r = scaled_codes(x, scale, axis, math)  # round(x / s)
        lo, hi = shifted_bounds(x, zero_point, dtype, axis)
        if isinstance(lo, float):
            out = torch.clamp(r, lo, hi)
        else:
            out = torch.maximum(r, lo)
            torch.minimum(out, hi, out=out)
        mask = torch.eq(r, out, out=r)  # r in [lo, hi]; overwrites r
        return dequantize_shifted_(out, scale, axis), mask


def scaled_codes(
    x: torch.Tensor, scale: torch.Tensor, axis: int | None, math: ScaleMath
) -> torch.Tensor:
    """``round(x / s)`` (before the zero point and saturation) as a new tensor like ``x``."""
    s = broadcast_param(scale.to(x.dtype), x, axis)
    return _scaled(x, s, math).round_()  # a new tensor either way


def dequantize_shifted_(buf: torch.Tensor, scale: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``buf = buf * s + 0.0`` in place (``buf`` holds the clamped codes minus ``zp``).

    The ``+ 0.0`` maps ``-0.0`` to ``+0.0``; any other value is unchanged by it.  Two in-place
    passes (``mul_``, ``add_``) run faster on CPU than one ``addcmul`` with a broadcast zero.
    """
    s = broadcast_param(scale.to(buf.dtype), buf, axis)
    return buf.mul_(s).add_(0.0)
