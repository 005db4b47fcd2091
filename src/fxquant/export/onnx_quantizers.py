"""The quantizers of a lowered model, written the way the runtime needs them.

Every ``fxquant.QuantizeDequantize`` node (one call of one quantizer, see
:mod:`fxquant.export.onnx_lower`) is replaced here, with the grid read from the quantizer's
``FakeQuantize.qparams()`` -- the one owner of the applied scale / zero point:

* an **activation** quantizer becomes ``QuantizeLinear -> DequantizeLinear`` on the tensor the
  naming contract gives it (:mod:`fxquant.export.naming`), preceded by a clip when its grid is
  narrower than the ONNX storage type; quantizers wider than the profile's ``max_qdq_bits``
  become the same arithmetic in float ops (Div, Round, Add, Clip, Sub, Mul);
* a quantizer on a **constant** (a weight, a quantized parameter) becomes an integer
  initializer + ``DequantizeLinear``; the codes are computed in torch from the value the
  simulation quantizes;
* the **bias** of a Conv / ConvTranspose / Gemm whose weight and input are quantized becomes an
  int32 initializer at ``input_scale * weight_scale`` when the profile asks for it
  (:mod:`fxquant.export.bias`, which also raises a weight scale whose bias would overflow);
* with ``quantize=False`` or for ops listed in ``keep_float``, the quantizer is dropped and the
  tensor keeps its contract name (float initializer ``<op>.weight`` for a weight).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import torch

from ..fake_quant import FakeQuantize
from ..numerics import QDType, QParams, ScaleMath
from . import bias as bias_math
from .naming import (
    bias_name,
    dq_output,
    q_output,
    quantized_tensor_name,
    scale_name,
    zero_point_name,
)
from .onnx_ir_utils import GraphEdit, attr, consumers, is_constant, producer_op, to_numpy
from .onnx_types import storage_range, storage_type_name

__all__ = ["QuantizerCall", "Materializer", "storage_type", "FLOAT_TYPES"]

FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16,
                         ir.DataType.DOUBLE})

# weighted ops whose bias an integer kernel adds to its int32 accumulator
_BIASED = frozenset({"Conv", "ConvTranspose", "Gemm"})


def storage_type(dtype: QDType) -> ir.DataType | None:
    """The smallest ONNX integer type that holds ``dtype``'s codes (None: none can)."""
    name = storage_type_name(dtype)
    return None if name is None else ir.DataType[name]


@dataclass
class QuantizerCall:
    """One ``fxquant.QuantizeDequantize`` node of the lowered graph.

    Attributes:
        node: the node.
        path: the quantizer's module path.
        fq: the quantizer.
        op / role: what it quantizes (the prepare report's op name and role).
        use: write it quantized (False: ``quantize=False`` or ``keep_float``).
        constant: its input is a constant (an initializer holding the simulation's value).
    """

    node: ir.Node
    path: str
    fq: FakeQuantize
    op: str
    role: str
    use: bool
    constant: bool

    @property
    def tensor(self) -> str:
        """The contract name of the quantized tensor (:mod:`fxquant.export.naming`)."""
        return quantized_tensor_name(self.op, self.role)

    @property
    def is_weight(self) -> bool:
        """A weight (``weight``, a library module's ``q_weight`` ...): its DequantizeLinear's
        output is the tensor itself (``<op>.weight``), not ``<tensor>_dequantized``."""
        return self.role.endswith("weight")


@dataclass
class Materializer:
    """Replaces the quantizer nodes of one graph (see the module docstring).

    Attributes filled on the way: ``tensor_names`` (quantizer path -> ONNX tensor it
    quantizes), ``warnings`` (what made the file differ from the simulation).
    """

    edit: GraphEdit
    int32_bias: bool
    max_qdq_bits: int
    tensor_names: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    _weights: dict[str, list[tuple[torch.Tensor, ir.Value]]] = field(default_factory=dict)
    _claimed: set[int] = field(default_factory=set)

    # -- activations -------------------------------------------------------------------------------
    def activation(self, call: QuantizerCall) -> None:
        """Name the input tensor after the contract, then Q/DQ (or float arithmetic) it."""
        node = call.node
        x = self._claim(node.inputs[0], call.tensor, node)
        self.tensor_names.setdefault(call.path, x.name)
        out = x
        if call.use and x.dtype in FLOAT_TYPES:
            qp = call.fq.qparams()
            if qp.dtype.bits > self.max_qdq_bits:
                out = self._float_arithmetic(x, qp, node)
            else:
                out = self._qdq(x, qp, node)
        self._claimed.add(id(out))  # a later quantizer of this tensor names it via an Identity
        self._replace(node, out)

    def _claim(self, x: ir.Value, tensor: str, before: ir.Node) -> ir.Value:
        """``x`` renamed to ``tensor`` (an Identity named so when ``x`` cannot be renamed)."""
        names = self.edit.names
        if x.name == tensor:
            return x
        claimed = id(x) in self._claimed
        if x.is_graph_input() or x.is_graph_output() or claimed or tensor in names.used:
            (x,) = self.edit.node("Identity", [x], [tensor], before=before, like=x)
        else:
            names.rename(x, tensor)
        self._claimed.add(id(x))
        return x

    def _qparams(self, base: str, qp: QParams, rank: int | None) -> tuple[ir.Value, ir.Value,
                                                                         int | None]:
        elem = storage_type(qp.dtype)
        scale, zp = qp.scale.float(), qp.zero_point
        axis = qp.axis
        if axis is not None and rank:
            axis %= rank
        if axis is None:
            scale, zp = scale.reshape(()), zp.reshape(())
        s = self.edit.init(scale_name(base), to_numpy(scale, np.float32))
        z = self.edit.init(zero_point_name(base), to_numpy(zp, np.int64), dtype=elem)
        return s, z, axis

    def _qdq(self, x: ir.Value, qp: QParams, before: ir.Node) -> ir.Value:
        rank = len(x.shape) if x.shape is not None else None
        s, z, axis = self._qparams(x.name, qp, rank)
        src = self._saturate(x, qp, axis, rank, before)
        (q,) = self.edit.node("QuantizeLinear", [src, s, z], [q_output(x.name)], before=before,
                              attrs={"axis": axis})
        (dq,) = self.edit.node("DequantizeLinear", [q, s, z], [dq_output(x.name)],
                               before=before, attrs={"axis": axis}, like=x)
        return dq

    def _saturate(self, x: ir.Value, qp: QParams, axis: int | None, rank: int | None,
                  before: ir.Node) -> ir.Value:
        """Clip to the quantizer's own range when it is narrower than the storage type's."""
        if (qp.dtype.qmin, qp.dtype.qmax) == storage_range(storage_type_name(qp.dtype)):
            return x
        zp = qp.zero_point.float()
        lo = ((qp.dtype.qmin - zp) * qp.scale).float()
        hi = ((qp.dtype.qmax - zp) * qp.scale).float()
        if axis is None:
            lo_v = self.edit.init(f"{x.name}_qmin", to_numpy(lo.reshape(())))
            hi_v = self.edit.init(f"{x.name}_qmax", to_numpy(hi.reshape(())))
            (out,) = self.edit.node("Clip", [x, lo_v, hi_v], [f"{x.name}_saturated"],
                                    before=before, like=x)
            return out
        shape = [1] * (rank or 1)
        shape[axis] = -1
        lo_v = self.edit.init(f"{x.name}_qmin", to_numpy(lo.reshape(shape)))
        hi_v = self.edit.init(f"{x.name}_qmax", to_numpy(hi.reshape(shape)))
        (m,) = self.edit.node("Max", [x, lo_v], [f"{x.name}_clipped_low"], before=before, like=x)
        (out,) = self.edit.node("Min", [m, hi_v], [f"{x.name}_saturated"], before=before, like=x)
        return out

    def _float_arithmetic(self, x: ir.Value, qp: QParams, before: ir.Node) -> ir.Value:
        """``(clip(round(x / s) + zp) - zp) * s`` in float ops (Div, or Mul by the reciprocal
        as the quantizer's ScaleMath says; Round is half to even): grids wider than the
        runtime's Q/DQ path."""
        t = x.name
        rank = len(x.shape) if x.shape is not None else 1
        scale = qp.scale.float()
        zp = qp.zero_point.float()
        shape: list[int] = []
        if qp.axis is not None:
            shape = [1] * (rank or 1)
            shape[qp.axis % (rank or 1)] = -1
        s = self.edit.init(scale_name(t), to_numpy(scale.reshape(shape)))
        z = self.edit.init(zero_point_name(t), to_numpy(zp.reshape(shape)))
        e, b = self.edit, before
        if qp.scale_math is ScaleMath.RECIPROCAL:
            inv = e.init(f"{t}_inverse_scale", to_numpy((1.0 / scale).reshape(shape)))
            (d,) = e.node("Mul", [x, inv], [f"{t}_scaled"], before=b, like=x)
        else:
            (d,) = e.node("Div", [x, s], [f"{t}_scaled"], before=b, like=x)
        (r,) = e.node("Round", [d], [f"{t}_rounded"], before=b, like=x)
        (a,) = e.node("Add", [r, z], [f"{t}_shifted"], before=b, like=x)
        lo = e.init(f"{t}_qmin", np.asarray(float(qp.dtype.qmin), np.float32))
        hi = e.init(f"{t}_qmax", np.asarray(float(qp.dtype.qmax), np.float32))
        (q,) = e.node("Clip", [a, lo, hi], [q_output(t)], before=b, like=x)
        (c,) = e.node("Sub", [q, z], [f"{t}_centered"], before=b, like=x)
        (out,) = e.node("Mul", [c, s], [dq_output(t)], before=b, like=x)
        return out

    # -- constants (weights) -----------------------------------------------------------------------
    def constant(self, call: QuantizerCall) -> None:
        """A quantizer on a constant: integer initializer + DequantizeLinear (or a float
        initializer), with the int32 bias of the ops that read it as their weight."""
        node = call.node
        value = torch.from_numpy(node.inputs[0].const_value.numpy().copy())
        weight = call.is_weight
        base = call.tensor
        seen = self._weights.setdefault(call.path, [])
        for v, out in seen:  # the same weight read twice (a module called twice)
            if v.shape == value.shape and torch.equal(v, value):
                self._replace(node, out)
                return
        qp = call.fq.qparams() if call.use else None
        if qp is None or qp.dtype.bits > self.max_qdq_bits:
            data = value if qp is None else qp.fake_quantize(value.float())
            out = self.edit.init(base if weight else dq_output(base), to_numpy(data))
            self.tensor_names.setdefault(call.path, out.name if weight else base)
        else:
            users = self._biased_users(node.outputs[0], qp)
            scale = self._fix_bias_overflow(call, users, value, qp)
            qp = QParams(scale, qp.zero_point, qp.dtype, qp.granularity, qp.scale_math)
            out = self._int_constant(base, value, qp, node, weight)
            self.tensor_names.setdefault(call.path, out.name if weight else base)
            for user, s_in, period in users:
                self._int32_bias(user, call.op, s_in, qp, period, node)
        seen.append((value, out))
        self._replace(node, out)

    def _int_constant(self, base: str, value: torch.Tensor, qp: QParams, before: ir.Node,
                      weight: bool) -> ir.Value:
        codes = qp.quantize(value.float())
        elem = storage_type(qp.dtype)
        q = self.edit.init(q_output(base), to_numpy(codes.to(torch.int64)), dtype=elem)
        s, z, axis = self._qparams(base, qp, value.dim())
        (dq,) = self.edit.node("DequantizeLinear", [q, s, z], [base if weight else dq_output(base)],
                               before=before, attrs={"axis": axis})
        dq.dtype = ir.DataType.FLOAT
        dq.shape = ir.Shape(list(value.shape))
        return dq

    def _biased_users(self, w: ir.Value, qp: QParams) -> list[tuple[ir.Node, torch.Tensor,
                                                                   int | None]]:
        """Ops that read ``w`` as their weight and get an int32 bias: ``(op, input scale,
        channel period)`` (input quantized per tensor, bias a float constant, weight per
        tensor or per output channel)."""
        if not self.int32_bias:
            return []
        out = []
        for user in consumers(w):
            if user.op_type not in _BIASED or len(user.inputs) < 3 or user.inputs[1] is not w:
                continue
            x, b = user.inputs[0], user.inputs[2]
            if not is_constant(b) or producer_op(x) != "DequantizeLinear":
                continue
            s_in = x.producer().inputs[1]
            if not is_constant(s_in) or s_in.const_value.numpy().size != 1:
                continue
            if user.op_type == "Gemm":
                out_axis = 0 if attr(user, "transB", 0) else 1
            else:
                out_axis = 1 if user.op_type == "ConvTranspose" else 0
            if qp.axis is not None and qp.axis != out_axis:
                continue
            period = None
            if user.op_type == "ConvTranspose" and qp.axis == 1:
                period = int(w.shape[1]) if w.shape is not None else None
            scale = torch.from_numpy(s_in.const_value.numpy().copy()).reshape(())
            out.append((user, scale, period))
        return out

    def _fix_bias_overflow(self, call: QuantizerCall, users, value: torch.Tensor,
                           qp: QParams) -> torch.Tensor:
        """The weight scale, raised per channel where a user's int32 bias would overflow."""
        scale = qp.scale.float()
        for user, s_in, period in users:
            b = torch.from_numpy(user.inputs[2].const_value.numpy().copy()).float()
            s_c = bias_math.channel_scale(scale, b.numel(), period)
            bad = bias_math.overflowing_channels(b, s_in, s_c)
            if not bool(bad.any()):
                continue
            new_c = bias_math.fix_weight_scale(b, s_in, s_c)
            if qp.axis is None:
                new = new_c.max().reshape(())
            elif period is not None:
                new = new_c.reshape(-1, period).amax(0)
            else:
                new = new_c
            idx = bad.nonzero().flatten().tolist()
            self.warnings.append(
                f"{call.op}: int32 bias overflow (|bias / (input_scale * weight_scale)| > 2^31-1) "
                f"in output channel(s) {idx[:8]}{' ...' if len(idx) > 8 else ''}; raised their "
                f"weight scale (max {float(s_c[bad].max()):.3g} -> {float(new_c[bad].max()):.3g})"
                " and re-quantized the weight"
            )
            scale = torch.maximum(scale, new)
        return scale

    def _int32_bias(self, user: ir.Node, op: str, s_in: torch.Tensor, qp: QParams,
                    period: int | None, before: ir.Node) -> None:
        old = user.inputs[2]
        b = torch.from_numpy(old.const_value.numpy().copy()).float()
        s_c = bias_math.channel_scale(qp.scale, b.numel(), period)
        codes, scale = bias_math.quantize_bias(b, s_in, s_c)
        name = bias_name(op)
        e = self.edit
        if len(old.uses()) == 1 and not old.is_graph_output():  # free its name
            user.replace_input_with(2, None)
            e.graph.initializers.pop(old.name, None)
            e.names.used.discard(old.name)
        q = e.init(q_output(name), to_numpy(codes), dtype=ir.DataType.INT32)
        s = e.init(scale_name(name), to_numpy(scale, np.float32))
        z = e.init(zero_point_name(name), np.zeros(codes.shape, np.int32))
        (dq,) = e.node("DequantizeLinear", [q, s, z], [name], before=before, attrs={"axis": 0})
        dq.dtype = ir.DataType.FLOAT
        dq.shape = ir.Shape(list(b.shape))
        user.replace_input_with(2, dq)

    # -- shared ------------------------------------------------------------------------------------
    def _replace(self, node: ir.Node, value: ir.Value) -> None:
        node.outputs[0].replace_all_uses_with(value, replace_graph_outputs=True)
        self.edit.graph.remove(node, safe=True)
