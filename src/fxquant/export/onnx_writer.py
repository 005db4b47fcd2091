"""The fx walk behind :func:`fxquant.export.export_onnx`; also the context op emitters get.

One :class:`OnnxWriter` walks a prepared ``GraphModule`` once.  For each node it resolves the
arguments (ONNX tensors as :class:`TensorRef`, parameters as :class:`Const`, Python values as
they were with the example inputs) and calls the node's emitter
(:mod:`fxquant.export.onnx_emitters`).  Quantizer calls, weights and biases are handled here, so
the emitters only express float math.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.fx as fx
from onnx import TensorProto, helper
from torch import nn

from ..fake_quant import FakeQuantize
from ..graph.meta import op_name
from ..graph.report import PrepareReport
from ..numerics import dequantize
from ..numerics import quantize as quantize_codes
from ..qconfig import OpKind
from . import bias as bias_math
from .naming import (
    bias_name,
    dq_output,
    q_output,
    quantized_tensor_name,
    scale_name,
    weight_name,
    zero_point_name,
)
from .onnx_emitters import SIZE_EMITTERS, find_emitter
from .onnx_export import (
    ExportError,
    _active,
    _dtype_of,
    _is_tensorish,
    _matches,
    _node_kind,
    _shape_of,
    quantizer_index,
)
from .onnx_fallback import NodeCall, float_subgraph
from .onnx_graph import (
    GraphBuilder,
    QParams,
    TensorRef,
    make_tensor,
    onnx_type_of_qdtype,
    onnx_type_of_torch,
)
from .onnx_ops import Dim, UnsupportedOp, concrete_sizes, symbolic_size
from .onnx_qdq import float_qdq, norm_axis, saturate

__all__ = ["OnnxWriter", "Const", "WeightSpec"]


# -- values the walk carries besides ONNX tensors ----------------------------------------------
@dataclass(frozen=True, eq=False)
class Const:
    """A tensor known at export time (parameter, buffer, folded value); becomes an initializer
    named ``name`` when an op needs it.  A quantized constant also has its integer ``codes`` and
    ``q``: it becomes ``name_quantized`` + DequantizeLinear -> ``name_dequantized``."""

    value: torch.Tensor
    name: str
    q: QParams | None = None
    codes: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class WeightSpec:
    """A weight still to be written: float ``value`` and the quantizer (or None) that quantizes
    it.  ``op`` owns the quantizer (names ``op.weight``), ``qpath`` is its module path."""

    value: torch.Tensor
    fq: FakeQuantize | None
    op: str
    qpath: str | None


_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


def _flat_refs(obj: Any) -> list[TensorRef]:
    out: list[TensorRef] = []

    def walk(v: Any) -> None:
        if isinstance(v, TensorRef):
            out.append(v)
        elif isinstance(v, (tuple, list)):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)

    walk(obj)
    return out


def _flat_consts(obj: Any) -> list[Any]:
    if isinstance(obj, Const):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [c for v in obj for c in _flat_consts(v)]
    if isinstance(obj, dict):
        return [c for v in obj.values() for c in _flat_consts(v)]
    return []


def _has_graph_value(obj: Any) -> bool:
    if isinstance(obj, (TensorRef, WeightSpec, Dim)):
        return True
    if isinstance(obj, (tuple, list)):
        return any(_has_graph_value(v) for v in obj)
    if isinstance(obj, dict):
        return any(_has_graph_value(v) for v in obj.values())
    return False


class OnnxWriter:
    """Builds the ONNX model of one prepared GraphModule (see the module docstring).

    Emitters use: :attr:`b` (the :class:`GraphBuilder`), :attr:`op` (current op name),
    :attr:`opset`, :attr:`dynamic_batch`, :attr:`out_shape`, :meth:`ref`, :meth:`final`,
    :meth:`scalar`, :meth:`param`, :meth:`weight_bias`, :meth:`out_name`.
    """

    def __init__(
        self,
        gm: fx.GraphModule,
        report: PrepareReport,
        values: dict[fx.Node, Any],
        *,
        opset: int,
        dynamic_batch: bool,
        quantize: bool,
        keep_float: tuple[str, ...],
        int32_bias: bool,
        max_qdq_bits: int = 16,
    ) -> None:
        self.gm = gm
        self.report = report
        self.values = values
        self.b = GraphBuilder(opset)
        self.opset = opset
        self.dynamic_batch = dynamic_batch
        self.quantize = quantize
        self.keep_float = keep_float
        self.int32_bias = int32_bias
        self.max_qdq_bits = max_qdq_bits
        self.qindex = quantizer_index(report)
        self.env: dict[fx.Node, Any] = {}
        self.tensor_names: dict[str, str] = {}
        self.warnings: list[str] = []
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self.extra_opsets: dict[str, int] = {}
        self.batch: int | None = None
        self.node: fx.Node | None = None
        self.op = ""
        self._consts: dict[int, TensorRef] = {}
        self._params: dict[tuple[str, str], TensorRef] = {}
        self._weights: dict[Any, tuple[TensorRef, torch.Tensor | None]] = {}
        self.size_names: dict[Any, tuple[str, Any]] = {}  # Shape / size tensors (onnx_ops.Dim)

    # == the walk ==============================================================================
    def build(self) -> onnx.ModelProto:
        for node in self.gm.graph.nodes:
            self.node = node
            self.op = op_name(node) or node.name
            if node.op == "placeholder":
                self._placeholder(node)
            elif node.op == "get_attr":
                self.env[node] = Const(_fetch(self.gm, node.target), str(node.target))
            elif node.op == "output":
                self._outputs(node)
            else:
                self._call(node)
        graph = helper.make_graph(
            self.b.nodes,
            "fxquant",
            self.b.inputs,
            self.b.outputs,
            initializer=list(self.b.initializers.values()),
        )
        opsets = [helper.make_opsetid("", self.opset)]
        opsets += [helper.make_opsetid(d, v) for d, v in self.extra_opsets.items()]
        from .. import __version__

        model = helper.make_model(
            graph, opset_imports=opsets, producer_name="fxquant", producer_version=__version__
        )
        model.ir_version = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
        return model

    @property
    def out_shape(self) -> tuple[int, ...] | None:
        return _shape_of(self.values.get(self.node))

    @property
    def out_meta(self) -> Any:
        return self.values.get(self.node)

    def _dims(self, shape: tuple[int, ...] | None) -> list[int | str] | None:
        if shape is None:
            return None
        dims: list[int | str] = list(shape)
        if self.dynamic_batch and dims and self.batch is not None and shape[0] == self.batch:
            dims[0] = "batch"
        return dims

    def _placeholder(self, node: fx.Node) -> None:
        v = self.values.get(node)
        shape, dtype = _shape_of(v), _dtype_of(v)
        if shape is None or dtype is None:
            self.env[node] = v  # a Python value: baked into the graph
            return
        if self.batch is None and shape:
            self.batch = shape[0]
        elem = onnx_type_of_torch(dtype)
        self.b.add_input(self.op, elem, self._dims(shape))
        self.input_names.append(self.op)
        self.env[node] = TensorRef(self.op, shape, elem)

    def _outputs(self, node: fx.Node) -> None:
        result = node.args[0]
        items = list(result) if isinstance(result, (tuple, list)) else [result]
        for i, item in enumerate(items):
            v = self.env.get(item) if isinstance(item, fx.Node) else item
            if isinstance(v, (tuple, list)) and len(items) == 1:
                for j, w in enumerate(v):
                    self._output(w, j)
                continue
            self._output(v, i)

    def _output(self, v: Any, i: int) -> None:
        if not isinstance(v, (TensorRef, Const, WeightSpec)):
            raise ExportError(f"model output {i} is not a tensor ({type(v).__name__}); ONNX "
                              "graphs return tensors only")
        ref = self.ref(v)
        name = ref.name
        if name in self.output_names or name in self.input_names or name in self.b.initializers:
            name = self.b.node("Identity", [ref.name], f"output_{i}")[0]
        dims = self._dims(ref.shape)
        if dims and self.dynamic_batch and isinstance(v, TensorRef) and dims[0] != "batch":
            dims[0] = f"{name}_dim0"  # computed from the inputs: may follow the batch size
        self.b.add_output(name, ref.elem_type, dims)
        self.output_names.append(name)

    def _call(self, node: fx.Node) -> None:
        mod = self.gm.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(mod, FakeQuantize):
            self._quantizer(node, mod)
            return
        rec = self.values.get(node)
        args = fx.node.map_arg(node.args, self.env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, self.env.__getitem__)
        if not _is_tensorish(rec):  # Python value (sizes, flags): as seen when recording, but
            self.env[node] = symbolic_size(self, node, args, kwargs, rec)  # sizes of tensors
            return
        emitter = find_emitter(node, mod)
        if emitter not in SIZE_EMITTERS:
            args, kwargs = concrete_sizes(args), concrete_sizes(kwargs)
        if isinstance(rec, torch.Tensor) and not _has_graph_value((args, kwargs)):
            self.env[node] = self._fold(node, mod, args, kwargs)  # depends on no input
            return
        kept = _matches(self.op, self.keep_float)
        if mod is not None and node.target in self.report.islands:
            if not kept:
                isl = self.report.islands[node.target]
                raise ExportError(
                    f"op {self.op!r} is a float island (tracing failed at {isl.source}: "
                    f"{isl.reason}); fxquant's ONNX emitter cannot see inside it. Make it "
                    f"traceable, or export it as a float subgraph with keep_float=({self.op!r},)"
                )
            out = float_subgraph(self, node, mod)
        else:
            if emitter is None:
                if not kept:
                    raise ExportError(
                        f"op {self.op!r} ({self.op_type_of(node)}) has no ONNX emitter in fxquant; "
                        f"export it as a float subgraph with keep_float=({self.op!r},) "
                        "(via torch.onnx), or replace it with a supported op"
                    )
                out = float_subgraph(self, node, mod)
            else:
                try:
                    out = emitter(self, mod, *args, **kwargs) if mod is not None else emitter(
                        self, *args, **kwargs
                    )
                except UnsupportedOp as err:
                    hint = "" if kept else f"; or keep it float with keep_float=({self.op!r},)"
                    raise ExportError(
                        f"op {self.op!r} ({self.op_type_of(node)}) cannot be exported: {err}{hint}"
                    ) from None
        if self.quantize and _node_kind(self.gm, node) is OpKind.SHARE:
            out = self._requantize(node, args, kwargs, out)
        self.env[node] = out

    def op_type_of(self, node: fx.Node) -> str:
        rec = self.report.ops.get(self.op)
        if rec is not None:
            return rec.op_type
        return str(node.target)

    # == quantizers ============================================================================
    def _quantizer(self, node: fx.Node, fq: FakeQuantize) -> None:
        path = str(node.target)
        op, role = self.qindex.get(path) or _role_from_name(fq.name or path)
        src = self.env[node.args[0]]
        use = self.quantize and _active(fq) and not _matches(op, self.keep_float)
        if role == "weight" and isinstance(src, Const):
            self.env[node] = WeightSpec(src.value, fq if use else None, op, path)
            return
        tname = quantized_tensor_name(op, role)
        if isinstance(src, Const) and src.value.is_floating_point():
            self.tensor_names[path] = tname
            if use:  # quantized offline: initializer tname_quantized + DequantizeLinear
                const = self._quantize_const(src, tname, fq)
                self.ref(const)  # written even if every reader folds it further
                self.env[node] = const
            else:
                self.env[node] = Const(src.value, tname)
            return
        ref = self.ref(src)
        if ref.name != tname:
            if self.b.taken(tname):
                raise ExportError(f"internal: tensor {tname!r} of quantizer {path!r} exists")
            self.b.node("Identity", [ref.name], [self.b.claim(tname)])
        self.tensor_names[path] = tname
        ref = TensorRef(tname, ref.shape, ref.elem_type)
        if not use or ref.elem_type not in _FLOAT_TYPES:
            self.env[node] = ref
            return
        self.env[node] = self.qdq(ref, fq)

    def _qparams(self, tname: str, fq: FakeQuantize, scale: torch.Tensor | None = None) -> QParams:
        elem = onnx_type_of_qdtype(fq.dtype)
        scale = (fq.scale if scale is None else scale).detach().to(torch.float32).clone()
        zp = fq.zero_point.detach().round().to(torch.int64).clone()
        axis = fq.ch_axis if scale.dim() == 1 and fq.ch_axis is not None else None
        if axis is None:  # per tensor: ONNX wants 0-d scale / zero point
            scale, zp = scale.reshape(()), zp.reshape(())
        s = self.b.initializer(scale_name(tname), scale)
        z = self.b.initializer(zero_point_name(tname), zp, elem)
        return QParams(s, z, scale, zp, fq.dtype, axis)

    def _quantize_const(self, c: Const, tname: str, fq: FakeQuantize) -> Const:
        qp = self._qparams(tname, fq)
        codes = quantize_codes(c.value.detach().float(), qp.scale, qp.zero_point, fq.dtype,
                               qp.axis, fq.scale_math)
        value = dequantize(codes, qp.scale, qp.zero_point, qp.axis)
        return Const(value, tname, qp, codes)

    def _fold(self, node: fx.Node, mod: nn.Module | None, args: Any, kwargs: Any) -> Const:
        """Evaluate an op on constants in torch (quantized constants stay quantized through
        ops that only move values)."""
        def vals(use_codes: bool):
            def one(v: Any) -> Any:
                if isinstance(v, Const):
                    return v.codes if use_codes else v.value
                return v
            return (fx.node.map_aggregate(args, one), fx.node.map_aggregate(kwargs, one))

        call = NodeCall(node, mod, (), {})
        a, k = vals(False)
        with torch.no_grad():
            value = call.run(a, k)
        consts = [v for v in _flat_consts((args, kwargs))]
        q = consts[0].q if len(consts) == 1 else None
        codes = None
        if q is not None and q.per_tensor and _node_kind(self.gm, node) is OpKind.SHARE:
            a, k = vals(True)
            try:
                with torch.no_grad():
                    codes = call.run(a, k)
            except (RuntimeError, TypeError, NotImplementedError):
                codes = None
        if not isinstance(codes, torch.Tensor) or codes.shape != value.shape:
            return Const(value, self.op)
        return Const(value, self.op, q, codes)

    def qdq(self, ref: TensorRef, fq: FakeQuantize) -> TensorRef:
        """``ref -> QuantizeLinear -> _quantized -> DequantizeLinear -> _dequantized``."""
        if fq.dtype.bits > self.max_qdq_bits:
            return float_qdq(self.b, ref, fq)
        tname = ref.name
        qp = self._qparams(tname, fq)
        x = saturate(self.b, ref, qp)
        axis = norm_axis(qp.axis, ref.rank)
        q = self.b.node("QuantizeLinear", [x, qp.scale_name, qp.zero_point_name],
                        [self.b.claim(q_output(tname))], axis=axis)[0]
        dq = self.b.node("DequantizeLinear", [q, qp.scale_name, qp.zero_point_name],
                         [self.b.claim(dq_output(tname))], axis=axis)[0]
        return TensorRef(dq, ref.shape, ref.elem_type, qp)

    def _requantize(self, node: fx.Node, args: Any, kwargs: Any, out: Any) -> Any:
        """After an op that only moves values of one per-tensor quantized input, put a Q/DQ pair
        with the same parameters, so runtimes see ``DQ -> op -> Q`` (integer data movement)."""
        ins = {r.name: r for r in _flat_refs((args, kwargs))}
        if len(ins) != 1:
            return out
        src = next(iter(ins.values()))
        if src.q is None or not src.q.per_tensor:
            return out
        def one(r: Any, readers: list[fx.Node]) -> Any:
            if not isinstance(r, TensorRef) or r.q is not None or r.name == src.name:
                return r
            if r.elem_type not in _FLOAT_TYPES or (readers and all(map(self._is_fq, readers))):
                return r  # requantized with its own parameters right after
            qp = src.q
            q = self.b.node("QuantizeLinear", [r.name, qp.scale_name, qp.zero_point_name],
                            q_output(r.name))[0]
            dq = self.b.node("DequantizeLinear", [q, qp.scale_name, qp.zero_point_name],
                             dq_output(r.name))[0]
            return TensorRef(dq, r.shape, r.elem_type, qp)

        if isinstance(out, tuple):  # readers of element i: the users of getitem(node, i)
            readers: dict[int, list[fx.Node]] = {}
            for u in node.users:
                if u.op == "call_function" and u.target is operator.getitem:
                    readers.setdefault(u.args[1], []).extend(u.users)
                else:
                    return tuple(one(r, []) for r in out)
            return tuple(one(r, readers.get(i, [])) for i, r in enumerate(out))
        return one(out, list(node.users))

    def _is_fq(self, n: fx.Node) -> bool:
        return n.op == "call_module" and isinstance(self.gm.get_submodule(n.target), FakeQuantize)

    # == values for emitters ===================================================================
    def ref(self, v: Any) -> TensorRef:
        """The ONNX tensor of an argument (constants become initializers on first use)."""
        if isinstance(v, TensorRef):
            return v
        if isinstance(v, Const):
            key = id(v)
            if key not in self._consts:
                self._consts[key] = self._materialize(v)
            return self._consts[key]
        if isinstance(v, WeightSpec):
            return self.weight_bias(v, None, None)[0]
        if isinstance(v, torch.Tensor):
            return self.ref(Const(v, f"{self.op}.const"))
        raise UnsupportedOp(f"expected a tensor argument, got {type(v).__name__} {v!r}")

    def _materialize(self, c: Const) -> TensorRef:
        t = c.value.detach()
        if c.q is None or c.codes is None:
            name = self.b.fresh(c.name)
            self.b.initializers[name] = _tensor(name, t)
            return TensorRef(name, tuple(t.shape), onnx_type_of_torch(t.dtype))
        qp = c.q
        elem = onnx_type_of_qdtype(qp.dtype)
        qn = self.b.fresh(q_output(c.name))
        self.b.initializers[qn] = make_tensor(qn, c.codes.to(torch.int64), elem)
        axis = norm_axis(qp.axis, t.dim())
        dq = self.b.node("DequantizeLinear", [qn, qp.scale_name, qp.zero_point_name],
                         dq_output(c.name), axis=axis)[0]
        return TensorRef(dq, tuple(t.shape), TensorProto.FLOAT, qp)

    def scalar(self, value: Any, like: TensorRef, base: str = "") -> TensorRef:
        """A 0-d constant of ``like``'s element type."""
        from .onnx_graph import _NP_OF_ONNX

        arr = np.asarray(value, dtype=_NP_OF_ONNX.get(like.elem_type, np.float32))
        name = self.b.const(base or f"{self.op}.const", arr)
        return TensorRef(name, (), like.elem_type)

    def param(self, path: str, attr: str, value: torch.Tensor | None) -> TensorRef | None:
        """A module's float parameter / buffer as an initializer named ``path.attr`` (once)."""
        if value is None:
            return None
        key = (path, attr)
        if key not in self._params:
            t = value.detach()
            name = self.b.fresh(f"{path}.{attr}")
            self.b.initializers[name] = _tensor(name, t)
            self._params[key] = TensorRef(name, tuple(t.shape), onnx_type_of_torch(t.dtype))
        return self._params[key]

    def out_name(self, suffix: str = "") -> str:
        return self.b.fresh(self.op + suffix)

    def final(self, op_type: str, inputs: list[str], **attrs: Any) -> TensorRef:
        """The op's result node: one output named after the op, with the recorded shape."""
        meta = self.out_meta
        elem = onnx_type_of_torch(_dtype_of(meta)) if _dtype_of(meta) else TensorProto.FLOAT
        out = self.b.node(op_type, inputs, [self.out_name()], **attrs)[0]
        return TensorRef(out, _shape_of(meta), elem)

    def module_path(self) -> str:
        return str(self.node.target) if self.node is not None else self.op

    def module_weight(self, mod: nn.Module, value: torch.Tensor) -> WeightSpec:
        """The :class:`WeightSpec` of a weighted module's (possibly folded) weight."""
        path = f"{self.module_path()}.weight_fake_quant"
        fq = getattr(mod, "weight_fake_quant", None)
        owner = self.qindex.get(path, (self.op, "weight"))[0]
        if not isinstance(fq, FakeQuantize):
            return WeightSpec(value.detach(), None, self.op, None)
        use = self.quantize and _active(fq) and not _matches(self.op, self.keep_float)
        return WeightSpec(value.detach(), fq if use else None, owner, path)

    # == weights and biases ====================================================================
    def weight_bias(
        self,
        w: WeightSpec | Const | TensorRef,
        bias: Any,
        x: TensorRef | None,
        *,
        kind: str = "plain",
        groups: int = 1,
    ) -> tuple[TensorRef, TensorRef | None]:
        """Write a weight (quantized + DQ when it has a quantizer) and its bias.

        ``kind``: ``conv`` / ``gemm`` (output channels on weight axis 0), ``conv_transpose``
        (axis 1), ``matmul`` (the weight is stored transposed, ``[in, out]``), ``plain``.
        The bias is int32 (scale ``input_scale * weight_scale``) when the weight is quantized,
        ``x`` is quantized per tensor and int32 biases are on; else float.
        """
        if isinstance(w, TensorRef):  # computed weight: nothing to quantize here
            return w, (self.ref(bias) if bias is not None else None)
        if isinstance(w, Const):
            w = WeightSpec(w.value, None, self.op, None)
        value = w.value.detach()
        bias_t = bias.value if isinstance(bias, Const) else bias
        if isinstance(bias_t, WeightSpec):
            bias_t = bias_t.value
        transpose = kind == "matmul"
        fq = w.fq
        wname = weight_name(w.op)
        if fq is None:
            key = ("float", w.qpath or w.op, transpose)
            if key not in self._weights:
                t = value.t() if transpose and value.dim() == 2 else value
                name = self.b.fresh(wname)
                self.b.initializers[name] = _tensor(name, t.contiguous())
                self._weights[key] = (TensorRef(name, tuple(t.shape)), None)
                if w.qpath is not None:
                    self.tensor_names[w.qpath] = name
            return self._weights[key][0], self._float_bias(bias_t)
        scale = fq.scale.detach().to(torch.float32)
        zero_point = fq.zero_point.detach().round()
        axis = fq.ch_axis if scale.dim() == 1 and fq.ch_axis is not None else None
        if axis is None:
            scale, zero_point = scale.reshape(()), zero_point.reshape(())
        out_axis = 1 if kind == "conv_transpose" else 0
        int32 = (
            self.int32_bias and bias_t is not None and isinstance(bias_t, torch.Tensor)
            and x is not None and x.q is not None and x.q.per_tensor
            and kind in ("conv", "conv_transpose", "gemm") and axis in (None, out_axis)
        )
        period = value.shape[1] if kind == "conv_transpose" and axis == 1 else None
        if int32:
            c_out = bias_t.numel()
            s_c = bias_math.channel_scale(scale, c_out, period)
            bad = bias_math.overflowing_channels(bias_t, x.q.scale, s_c)
            if bool(bad.any()):
                new_c = bias_math.fix_weight_scale(bias_t, x.q.scale, s_c)
                if axis is None:
                    new = new_c.max().reshape(())
                elif period is not None:
                    new = new_c.reshape(-1, period).amax(0)
                else:
                    new = new_c
                idx = bad.nonzero().flatten().tolist()
                self._warn(
                    f"{self.op}: int32 bias overflow (|bias / (input_scale * weight_scale)| > "
                    f"2^31-1) in output channel(s) {idx[:8]}{' ...' if len(idx) > 8 else ''}; "
                    f"raised their weight scale (max {float(s_c[bad].max()):.3g} -> "
                    f"{float(new_c[bad].max()):.3g}) and re-quantized the weight"
                )
                scale = new
        key = ("q", w.qpath or w.op, transpose)
        if key not in self._weights:
            codes = quantize_codes(value, scale, zero_point, fq.dtype, axis, fq.scale_math)
            w_axis = axis
            if transpose and codes.dim() == 2:
                codes = codes.t().contiguous()
                w_axis = None if axis is None else 1 - (axis % 2)
            elem = onnx_type_of_qdtype(fq.dtype)
            qn = self.b.initializer(q_output(wname), codes.to(torch.int64), elem)
            sn = self.b.initializer(scale_name(wname), scale)
            zn = self.b.initializer(zero_point_name(wname), zero_point, elem)
            out = self.b.node("DequantizeLinear", [qn, sn, zn], [self.b.claim(wname)],
                              axis=w_axis)[0]
            qp = QParams(sn, zn, scale, zero_point, fq.dtype, w_axis)
            self._weights[key] = (TensorRef(out, tuple(codes.shape), TensorProto.FLOAT, qp), scale)
            if w.qpath is not None:
                self.tensor_names[w.qpath] = out
        wref, used_scale = self._weights[key]
        if not int32:
            return wref, self._float_bias(bias_t)
        s_c = bias_math.channel_scale(used_scale, bias_t.numel(), period)
        codes, bscale = bias_math.quantize_bias(bias_t, x.q.scale, s_c)
        bname = bias_name(self.op)
        qn = self.b.initializer(q_output(bname), codes, TensorProto.INT32)
        sn = self.b.initializer(scale_name(bname), bscale)
        zn = self.b.initializer(zero_point_name(bname), torch.zeros_like(codes), TensorProto.INT32)
        out = self.b.node("DequantizeLinear", [qn, sn, zn], [self.b.claim(bname)], axis=0)[0]
        return wref, TensorRef(out, tuple(codes.shape))

    def _float_bias(self, bias: Any) -> TensorRef | None:
        if bias is None:
            return None
        if isinstance(bias, TensorRef):
            return bias
        t = bias.detach() if isinstance(bias, torch.Tensor) else torch.as_tensor(bias)
        name = self.b.fresh(bias_name(self.op))
        self.b.initializers[name] = _tensor(name, t.to(torch.float32))
        return TensorRef(name, tuple(t.shape))

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)

def _role_from_name(name: str) -> tuple[str, str]:
    """(op, role) from a quantizer's own name (``op``, ``op.input_<i>``, ``op.weight``), for
    quantizers the prepare report does not list (e.g. on a constant)."""
    head, _, tail = name.rpartition(".")
    if head and (tail == "weight" or tail.startswith("input_")):
        return head, tail
    return name, "output"


def _fetch(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _tensor(name: str, t: torch.Tensor) -> onnx.TensorProto:
    from .onnx_graph import make_tensor

    return make_tensor(name, t)
