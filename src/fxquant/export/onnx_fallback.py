"""Ops fxquant has no emitter for, exported in float through ``torch.onnx`` (``keep_float``).

The op (a module call, a function or a tensor method, with its non-tensor arguments frozen) is
wrapped in a module that takes only its tensor arguments, exported with the TorchScript exporter
at the model's opset with the quantizers inside it switched off, and its graph is spliced into
the model under names prefixed with the op name.  Control flow (If / Loop) cannot be spliced.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import onnx
import torch
import torch.fx as fx
from onnx import TensorProto, helper
from torch import nn

from ..fake_quant import FakeQuantState
from .onnx_export import ExportError, _dtype_of, _eval_mode, _shape_of, frozen_quantizers
from .onnx_graph import TensorRef, onnx_type_of_torch

__all__ = ["float_subgraph", "NodeCall"]


def float_subgraph(cx, node: fx.Node, mod: nn.Module | None) -> Any:
    """Export one op in float with ``torch.onnx.export`` and splice its graph in."""
    tensors: list[torch.Tensor] = []
    refs: list[TensorRef] = []

    def collect(a: Any) -> Any:
        if isinstance(a, fx.Node):
            v = cx.values.get(a)
            if isinstance(v, torch.Tensor):
                tensors.append(v)
                refs.append(cx.ref(cx.env[a]))
                return _Slot(len(tensors) - 1)
            return v
        return a

    args = fx.node.map_aggregate(node.args, collect)
    kwargs = fx.node.map_aggregate(node.kwargs, collect)
    call = NodeCall(node, mod, args, kwargs)
    rec = cx.out_meta
    outs = list(rec) if isinstance(rec, tuple) else [rec]
    out_names = [f"out{j}" for j in range(len(outs))]
    in_names = [f"in{i}" for i in range(len(tensors))]
    dyn: dict[str, dict[int, str]] = {}
    if cx.dynamic_batch and cx.batch is not None:
        for n, t in zip(in_names + out_names, tensors + outs, strict=False):
            shape = _shape_of(t)
            if shape and shape[0] == cx.batch:
                dyn[n] = {0: "batch"}
    buf = io.BytesIO()
    float_state = {s: FakeQuantState.FLOAT for s in FakeQuantState}
    try:
        with warnings.catch_warnings(), torch.no_grad(), _eval_mode(call), \
                frozen_quantizers(call, float_state):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                call, tuple(tensors), buf, dynamo=False, opset_version=cx.opset,
                input_names=in_names, output_names=out_names, dynamic_axes=dyn or None,
            )
    except Exception as err:
        raise ExportError(
            f"op {cx.op!r} ({cx.op_type_of(node)}) cannot be expressed in ONNX even in "
            f"float (torch.onnx.export failed: {type(err).__name__}: {err})"
        ) from err
    sub = onnx.load_from_string(buf.getvalue())
    names = _splice(cx, sub, [r.name for r in refs], len(outs))
    cx.warnings.append(f"{cx.op}: exported in float through torch.onnx (keep_float); its "
                       "quantizers are not in the ONNX model")
    results = []
    for name, meta in zip(names, outs, strict=True):
        dt = _dtype_of(meta)
        results.append(TensorRef(name, _shape_of(meta),
                                 onnx_type_of_torch(dt) if dt else TensorProto.FLOAT))
    return tuple(results) if isinstance(rec, tuple) else results[0]

def _splice(cx, sub: onnx.ModelProto, inputs: list[str], n_out: int) -> list[str]:
    for imp in sub.opset_import:
        if imp.domain in ("", "ai.onnx"):
            continue
        cx.extra_opsets[imp.domain] = imp.version
    g = sub.graph
    init_names = {t.name for t in g.initializer}
    real_inputs = [i.name for i in g.input if i.name not in init_names]
    rename = dict(zip(real_inputs, inputs, strict=True))
    prefix = f"{cx.op}/"
    for t in g.initializer:
        new = cx.b.fresh(prefix + t.name)
        rename[t.name] = new
        t2 = onnx.TensorProto()
        t2.CopyFrom(t)
        t2.name = new
        cx.b.initializers[new] = t2
    out_names = [cx.out_name() if n_out == 1 else cx.out_name(f".{j}")
                 for j in range(n_out)]
    sub_outs = [o.name for o in g.output]
    for o, new in zip(sub_outs, out_names, strict=True):
        if o in rename:  # an output that is an input / initializer: copy it
            cx.b.node("Identity", [rename[o]], [new])
        else:
            rename[o] = new
    for n in g.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in n.attribute):
            raise ExportError(f"op {cx.op!r}: the float subgraph uses control flow "
                              f"({n.op_type}), which fxquant cannot splice")
        ins = [rename.get(i, i) if i else "" for i in n.input]
        outs = []
        for o in n.output:
            if o and o not in rename:
                rename[o] = cx.b.fresh(prefix + o)
            outs.append(rename.get(o, ""))
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        cx.b.node(n.op_type, ins, outs, name=prefix + (n.name or n.op_type),
                    domain=n.domain, **attrs)
    return out_names


class _Slot:
    def __init__(self, i: int) -> None:
        self.i = i


class NodeCall(nn.Module):
    """One fx node as a module taking only its tensor arguments (for torch.onnx.export)."""

    def __init__(self, node: fx.Node, mod: nn.Module | None, args: Any, kwargs: Any) -> None:
        super().__init__()
        self.kind, self.target = node.op, node.target
        self.inner = mod
        self.args_t, self.kwargs_t = args, kwargs

    def run(self, args: Any, kwargs: Any) -> Any:
        if self.kind == "call_module":
            return self.inner(*args, **kwargs)
        if self.kind == "call_method":
            return getattr(args[0], self.target)(*args[1:], **kwargs)
        return self.target(*args, **kwargs)

    def forward(self, *tensors: torch.Tensor) -> Any:
        def fill(a: Any) -> Any:
            if isinstance(a, _Slot):
                return tensors[a.i]
            if isinstance(a, (tuple, list)):
                return type(a)(fill(x) for x in a)
            if isinstance(a, dict):
                return {k: fill(x) for k, x in a.items()}
            return a

        return self.run(fill(self.args_t), fill(self.kwargs_t))
