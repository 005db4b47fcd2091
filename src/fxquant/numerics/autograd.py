"""Differentiable fake quantization.

* :func:`fake_quantize_ste` — straight-through estimator: the gradient w.r.t. ``x`` passes
  unchanged where the unclamped code lies in ``[qmin, qmax]`` and is zero where it clips
  (the same mask as ``torch.fake_quantize_per_tensor_affine``).
* :func:`fake_quantize_lsq` — LSQ / LSQ+ learnable step size and zero point. The closed-form
  backward equals autograd through ``(clamp(round_ste(x/s) + round_ste(zp)) - round_ste(zp)) * s``
  with ``s`` and ``zp`` gradients scaled by ``grad_factor``:

  - d/dx  = 1 inside the range, 0 outside;
  - d/ds  = round(x/s) - x/s inside, ``qmin - zp`` below, ``qmax - zp`` above;
  - d/dzp = 0 inside, ``-s`` outside.

``scale`` / ``zero_point`` are 0-d or 1-d along ``axis`` (per channel); their gradients have the
parameters' shapes.  ``zero_point`` of LSQ is a float tensor rounded (and clamped) in forward.
"""

from __future__ import annotations

import torch

from . import native
from .affine import (
    FAST_PATH_MAX_BITS,
    ScaleMath,
    _scaled,
    broadcast_param,
    fake_quantize_inplace_with_mask,
    unclamped_codes,
)
from .dtypes import QDType
from .fused import fused_fake_quantize  # opt-in; returns None when off or unavailable
from .paths import fake_quantize

__all__ = ["fake_quantize_ste", "fake_quantize_lsq", "fake_quantize_with_mask"]


def fake_quantize_with_mask(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: QDType,
    axis: int | None = None,
    math: ScaleMath = ScaleMath.DIVIDE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fake-quantized ``x`` and the STE mask (two new buffers).

    Returns ``(out, mask)``, both of ``x``'s shape and float dtype: ``out`` equals
    :func:`fxquant.numerics.fake_quantize` bit for bit, ``mask`` is ``1.0`` where the unclamped
    code lies in ``[qmin, qmax]`` and ``0.0`` elsewhere (also for NaN and +-inf).  A float mask
    costs 4 bytes per element instead of 1, but ``grad * mask`` then runs as one vectorised
    float multiply (a bool mask makes torch convert it element by element, several times
    slower on CPU) and the bits are those of ``grad * bool_mask``.  Pure-torch passes, or
    one fused kernel when :mod:`fxquant.numerics.fused` is turned on.  Requires float32 / float64
    ``x`` and at most :data:`~fxquant.numerics.affine.FAST_PATH_MAX_BITS` bits; runs without
    autograd recording.
    """
    fused = fused_fake_quantize(x, scale, zero_point, dtype, axis, math, with_mask=True)
    if fused is not None:
        return fused  # type: ignore[return-value]
    return fake_quantize_inplace_with_mask(x, scale, zero_point, dtype, axis, math)


def _ste_fast_path(x: torch.Tensor, dtype: QDType) -> bool:
    return x.dtype in (torch.float32, torch.float64) and dtype.bits <= FAST_PATH_MAX_BITS


class _FakeQuantizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, dtype, axis, math):  # type: ignore[override]
        if _ste_fast_path(x, dtype):
            # one pass with a 1-byte mask where the native kernel applies (backward: one pass)
            done = native.fake_quant(x, scale, zero_point, dtype, axis,
                                     math is ScaleMath.RECIPROCAL, with_mask=True)
            out, mask = done if done is not None else fake_quantize_with_mask(
                x, scale, zero_point, dtype, axis, math)
            ctx.save_for_backward(mask)
            return out
        q = unclamped_codes(x, scale, zero_point, axis, math)
        if dtype.bits > 24:  # exact comparisons / clamping beyond float32's integer range
            q = q.double()
        qc = q.clamp(dtype.qmin, dtype.qmax)
        ctx.save_for_backward(torch.eq(q, qc))  # the STE mask: codes that were not clipped
        s = broadcast_param(scale.to(x.dtype), x, axis)
        z = broadcast_param(zero_point.to(x.dtype), x, axis)
        return qc.to(x.dtype).sub_(z).mul_(s)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        if mask.dtype == torch.bool:  # grad * mask, bit for bit as with a float 0 / 1 mask
            return native.masked_grad(grad, mask), None, None, None, None, None
        return grad * mask, None, None, None, None, None


def fake_quantize_ste(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: QDType,
    axis: int | None = None,
    math: ScaleMath = ScaleMath.DIVIDE,
) -> torch.Tensor:
    """Fake quantization whose backward is the clipped straight-through estimator.

    Where the native kernels apply, an autograd operator whose backward runs in C++
    (:func:`fxquant.numerics.native.fake_quant_ste`); else a Python autograd function.  Same
    bits either way.
    """
    if not x.requires_grad:
        return fake_quantize(x, scale, zero_point, dtype, axis, math)
    if _ste_fast_path(x, dtype) and not scale.requires_grad and not zero_point.requires_grad:
        out = native.fake_quant_ste(x, scale, zero_point, dtype, axis,
                                    math is ScaleMath.RECIPROCAL)
        if out is not None:
            return out
    return _FakeQuantizeSTE.apply(x, scale, zero_point, dtype, axis, math)


def _reduce_to(g: torch.Tensor, like: torch.Tensor, axis: int | None) -> torch.Tensor:
    if like.dim() == 0 or axis is None:
        return g.sum().reshape(like.shape)
    axis = axis % g.dim()
    dims = [d for d in range(g.dim()) if d != axis]
    if dims:  # sum(dim=[]) would reduce *all* dims (1-d input, one element per channel)
        g = g.sum(dim=dims)
    return g.reshape(like.shape)


class _FakeQuantizeLSQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, dtype, axis, math, grad_factor):  # type: ignore[override]
        zp = torch.round(zero_point).clamp(dtype.qmin, dtype.qmax)
        s = broadcast_param(scale.to(x.dtype), x, axis)
        z = broadcast_param(zp.to(x.dtype), x, axis)
        v = _scaled(x, s, math)
        r = torch.round(v)
        q = r + z
        out = (q.clamp(dtype.qmin, dtype.qmax) - z) * s
        ctx.save_for_backward(v, r, q, s, z, scale, zero_point)
        ctx.meta = (dtype, axis, grad_factor)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        v, r, q, s, z, scale, zero_point = ctx.saved_tensors
        dtype, axis, grad_factor = ctx.meta
        below = q < dtype.qmin
        above = q > dtype.qmax
        inside = ~(below | above)
        gx = grad * inside
        ds = torch.where(below, dtype.qmin - z, torch.where(above, dtype.qmax - z, r - v))
        gs = _reduce_to(grad * ds, scale, axis) * grad_factor
        dz = torch.where(inside, torch.zeros_like(s), -s).expand_as(grad)
        gz = _reduce_to(grad * dz, zero_point, axis) * grad_factor
        return gx, gs.to(scale.dtype), gz.to(zero_point.dtype), None, None, None, None


def fake_quantize_lsq(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: QDType,
    axis: int | None = None,
    math: ScaleMath = ScaleMath.DIVIDE,
    grad_factor: float = 1.0,
) -> torch.Tensor:
    """LSQ fake quantization with gradients for ``x``, ``scale`` and ``zero_point``.

    ``grad_factor`` multiplies the scale / zero-point gradients (LSQ uses
    ``1 / sqrt(numel * qmax)``).
    """
    return _FakeQuantizeLSQ.apply(x, scale, zero_point, dtype, axis, math, float(grad_factor))
