"""Quantizer emission helpers of the ONNX writer: saturation clips and float-arithmetic Q/DQ."""

from __future__ import annotations

import torch

from ..fake_quant import FakeQuantize
from ..numerics import ScaleMath
from .naming import dq_output, q_output, scale_name, zero_point_name
from .onnx_graph import GraphBuilder, QParams, TensorRef, onnx_type_of_qdtype, storage_range

__all__ = ["float_qdq", "saturate", "norm_axis"]


def norm_axis(axis: int | None, rank: int | None) -> int | None:
    """``axis`` made non-negative for a tensor of ``rank`` (unchanged when either is unknown)."""
    if axis is None or rank is None:
        return axis
    return axis % rank if rank else axis


def float_qdq(b: GraphBuilder, ref: TensorRef, fq: FakeQuantize) -> TensorRef:
    """The quantizer as float arithmetic, ``(clip(round(x / s) + zp) - zp) * s`` (Div or Mul
    by the reciprocal as its ``ScaleMath`` says, Round = half to even), for grids wider than
    the profile's ``max_qdq_bits``.  The result is a float tensor (no Q/DQ downstream)."""
    tname = ref.name
    scale = fq.scale.detach().to(torch.float32)
    zp = fq.zero_point.detach().round().to(torch.float32)
    axis = fq.ch_axis if scale.dim() == 1 and fq.ch_axis is not None else None
    shape: list[int] = []
    if axis is not None:
        shape = [1] * (ref.rank or 1)
        shape[norm_axis(axis, ref.rank)] = -1
    s_n = b.const(scale_name(tname), scale.reshape(shape))
    z_n = b.const(zero_point_name(tname), zp.reshape(shape))
    if fq.scale_math is ScaleMath.RECIPROCAL:
        inv = b.const(f"{tname}_inverse_scale", (1.0 / scale).reshape(shape))
        d = b.one("Mul", [ref.name, inv], f"{tname}_scaled")
    else:
        d = b.one("Div", [ref.name, s_n], f"{tname}_scaled")
    r = b.one("Round", [d], f"{tname}_rounded")
    a = b.one("Add", [r, z_n], f"{tname}_shifted")
    lo = b.const(f"{tname}_qmin", torch.tensor(float(fq.dtype.qmin)))
    hi = b.const(f"{tname}_qmax", torch.tensor(float(fq.dtype.qmax)))
    q = b.one("Clip", [a, lo, hi], q_output(tname))
    c = b.one("Sub", [q, z_n], f"{tname}_centered")
    out = b.node("Mul", [c, s_n], [b.claim(dq_output(tname))])[0]
    return TensorRef(out, ref.shape, ref.elem_type, None)

def saturate(b: GraphBuilder, ref: TensorRef, qp: QParams) -> str:
    """Clip to the quantizer's own range when it is narrower than the ONNX type's."""
    elem = onnx_type_of_qdtype(qp.dtype)
    if (qp.dtype.qmin, qp.dtype.qmax) == storage_range(elem):
        return ref.name
    lo = ((qp.dtype.qmin - qp.zero_point).float() * qp.scale).float()
    hi = ((qp.dtype.qmax - qp.zero_point).float() * qp.scale).float()
    if qp.axis is None or lo.dim() == 0:
        lo_n = b.const(f"{ref.name}_qmin", lo.reshape(()))
        hi_n = b.const(f"{ref.name}_qmax", hi.reshape(()))
        return b.one("Clip", [ref.name, lo_n, hi_n], f"{ref.name}_saturated")
    shape = [1] * (ref.rank or 1)
    shape[norm_axis(qp.axis, ref.rank)] = -1
    lo_n = b.const(f"{ref.name}_qmin", lo.reshape(shape))
    hi_n = b.const(f"{ref.name}_qmax", hi.reshape(shape))
    m = b.one("Max", [ref.name, lo_n], f"{ref.name}_clipped_low")
    return b.one("Min", [m, hi_n], f"{ref.name}_saturated")
