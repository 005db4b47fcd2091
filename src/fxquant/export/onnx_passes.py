"""The post-passes that turn a lowered program into the file ``export_onnx`` writes.

Each pass does one job on the ``onnx_ir`` model, in this order (:func:`finish`):

1. :func:`keep_user_outputs` -- drop the extra outputs torch.export adds for inputs the model
   changes in place (``x.mul_(2)``): the file returns what the model returns;
2. :func:`name_inputs` -- graph inputs get the model's argument names;
3. :func:`quantizer_calls` / :func:`use_constant_values` -- find every quantizer node; a quantizer
   whose input is a constant (a weight, a folded conv + BN weight) reads the value the
   simulation quantizes, computed in torch (:func:`fxquant.export.program.constant_inputs`);
4. :func:`fold_constants` -- fold every other constant subgraph (a folded BN's bias ...);
   :func:`use_bias_values` -- the bias of a conv / linear with a quantized weight is the value
   torch computes (:func:`fxquant.export.program.constant_biases`), not the folded one;
5. :func:`free_contract_names` -- values torch.onnx named like a contract tensor are renamed;
6. activation quantizers -> Q/DQ (:mod:`fxquant.export.onnx_quantizers`);
7. :func:`requantize_moves` -- ops that only move values of a per-tensor quantized tensor get
   a Q/DQ pair with the same parameters after them (the layout ONNX Runtime turns into integer
   data movement, and TensorRT's Q/DQ right in front of a weighted op);
8. constant quantizers -> integer initializers + DequantizeLinear, int32 biases;
9. :func:`fold_weight_layout` -- a Transpose torch.onnx put on a weight (``linear`` on a 3-D
   input: ``MatMul(x, Transpose(W))``) is folded into the integer initializer (per-channel axis
   moved with it), so the DequantizeLinear feeds the MatMul as ORT's fusion needs;
10. :func:`name_outputs`, :func:`name_batch_dim`, :func:`name_nodes`, :func:`tidy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common
import torch
from torch import nn

from ..errors import ExportError, bounded
from ..fake_quant import FakeQuantize
from .onnx_ir_utils import (
    GraphEdit,
    Names,
    attr,
    consumers,
    is_constant,
    producer_op,
    to_numpy,
)
from .onnx_lower import QDQ_DOMAIN, QDQ_OP_TYPE
from .onnx_quantizers import FLOAT_TYPES, Materializer, QuantizerCall

__all__ = ["FinishOptions", "finish", "MOVEMENT_OPS"]

_KIND_KEY = "pkg.torch.export.graph_signature.OutputSpec.kind"
MOVEMENT_OPS = frozenset({
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Gather",
    "GatherND", "GatherElements", "Expand", "Tile", "MaxPool", "DepthToSpace", "SpaceToDepth",
    "Resize",
})
"""ONNX ops that only move values: their output lies on their (first) input's grid."""


@dataclass(frozen=True)
class FinishOptions:
    """What :func:`finish` needs besides the model.

    Attributes:
        qmodel: the prepared model (its quantizers are read with ``qparams()``).
        index: quantizer path -> (op name, role) (``PrepareReport.quantizers()``).
        constants: quantizer path -> the float values its constant calls quantize, in program
            order (:func:`fxquant.export.program.constant_inputs`).
        input_names / output_names: the captured program's flattened names.
        quantize: False writes every quantizer as an identity (float model, same names).
        float_ops: quantizer paths to write in float (``keep_float``).
        int32_bias / max_qdq_bits / quantize_concat_inputs: from the backend profile (or the
            caller).
        opset: the default-domain opset of the file.
        biases: weight quantizer path -> the biases of the ops reading it, computed in torch
            (:func:`fxquant.export.program.constant_biases`).
    """

    qmodel: nn.Module
    index: dict[str, tuple[str, str]]
    constants: dict[str, list[torch.Tensor]]
    input_names: Sequence[str]
    output_names: Sequence[str]
    quantize: bool
    float_ops: frozenset[str]
    int32_bias: bool
    max_qdq_bits: int
    opset: int
    quantize_concat_inputs: bool = False
    biases: dict[str, list[torch.Tensor]] = field(default_factory=dict)


@dataclass
class Finished:
    model: ir.Model
    tensor_names: dict[str, str]
    warnings: list[str]
    float_ops: dict[str, int]


def finish(model: ir.Model, opts: FinishOptions) -> Finished:
    """Run the passes of the module docstring on ``model`` (changed in place)."""
    graph = model.graph
    keep_user_outputs(graph, len(opts.output_names))
    name_inputs(graph, opts.input_names)
    calls = quantizer_calls(graph, opts)
    use_constant_values(graph, calls, opts.constants)
    common.RemoveUnusedNodesPass()(model)
    common.IdentityEliminationPass()(model)
    fold_constants(model)
    use_bias_values(graph, calls, opts.biases)
    global_pools(graph)
    calls = [c for c in calls if c.node.graph is graph]
    edit = GraphEdit(graph)
    free_contract_names(graph, calls, edit.names)
    mat = Materializer(edit, opts.int32_bias, opts.max_qdq_bits)
    for call in calls:
        if not call.constant:
            mat.activation(call)
    requantize_moves(edit, concat=not opts.quantize_concat_inputs)
    if opts.quantize_concat_inputs:
        quantize_concat_inputs(edit)
    for call in calls:
        if call.constant:
            mat.constant(call)
    fold_weight_layout(graph)
    if not opts.quantize_concat_inputs:
        # movement of a quantized constant the layout fold left in place (not for OpenVINO: its
        # CPU plugin's MultiplyPartialTransformation throws on a requantized reshaped constant,
        # ConvNeXt's layer scale; its reference is the float simulation, fusion aside)
        requantize_moves(edit)
    name_matmuls(graph, edit.names)
    name_outputs(edit, opts.output_names, set(mat.tensor_names.values()))
    name_batch_dim(graph)
    tidy(model, opts.opset)
    name_nodes(graph)
    return Finished(model, mat.tensor_names, mat.warnings, float_ops(graph))


# -- inputs / outputs -----------------------------------------------------------------------------
def keep_user_outputs(graph: ir.Graph, count: int) -> None:
    """Keep the model's own outputs (torch.export appends an output per mutated input)."""
    kinds = [o.metadata_props.get(_KIND_KEY) for o in graph.outputs]
    if all(k is not None for k in kinds):
        keep = [o for o, k in zip(graph.outputs, kinds, strict=True) if k == "USER_OUTPUT"]
    else:  # no metadata: mutated inputs come first
        keep = list(graph.outputs)[len(graph.outputs) - count:]
    if len(keep) != count:
        raise ExportError(
            f"internal: the lowered graph has {len(keep)} model outputs, the model {count}"
        )
    graph.outputs.clear()
    graph.outputs.extend(keep)


def name_inputs(graph: ir.Graph, names: Sequence[str]) -> None:
    """Graph inputs take the captured program's input names (in order)."""
    if len(graph.inputs) != len(names):
        raise ExportError(
            f"internal: the lowered graph has {len(graph.inputs)} inputs, the model "
            f"{len(names)} tensor inputs ({bounded(', '.join(names), 200)})"
        )
    taken = Names(graph)
    for value, name in zip(graph.inputs, names, strict=True):
        if value.name != name:
            other = next((v for v in _all_values(graph) if v.name == name), None)
            if other is not None:
                taken.rename(other, f"{name}_value")
            value.name = name
            taken.used.add(name)


def _all_values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph:
        yield from node.outputs


def name_outputs(edit: GraphEdit, names: Sequence[str], contract: set[str]) -> None:
    """Graph outputs take the model's stable output names (an Identity where the value keeps a
    contract name or is an input / constant / another output too)."""
    graph = edit.graph
    protected = set(contract) | {n.outputs[0].name for n in graph
                                 if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    seen: set[int] = set()
    for i, want in enumerate(names):
        v = graph.outputs[i]
        if v.name == want and id(v) not in seen:
            seen.add(id(v))
            continue
        other = next((x for x in _all_values(graph) if x.name == want and x is not v), None)
        if other is not None and not other.is_graph_input() and other.name not in protected:
            edit.names.rename(other, f"{want}_value")
            edit.names.used.discard(want)
        keep_name = (v.is_graph_input() or is_constant(v) or v.name in protected
                     or id(v) in seen or v.producer() is None)
        if keep_name:
            ident = ir.Node("", "Identity", [v], num_outputs=1)
            ident.outputs[0].name = edit.names.fresh(want)
            ident.outputs[0].type, ident.outputs[0].shape = v.type, v.shape
            graph.append(ident)
            graph.outputs[i] = ident.outputs[0]
        else:
            edit.names.rename(v, want)
        seen.add(id(graph.outputs[i]))


def name_batch_dim(graph: ir.Graph) -> None:
    """The symbolic batch dimension (dim 0 of the first input) is called ``batch``."""
    sym = None
    for v in graph.inputs:
        if v.shape is not None and len(v.shape) and isinstance(v.shape[0], ir.SymbolicDim):
            sym = v.shape[0].value
            break
    if sym is None or sym == "batch":
        return
    for v in _all_values(graph):
        if v.shape is None or not any(isinstance(d, ir.SymbolicDim) and d.value == sym
                                      for d in v.shape):
            continue
        dims = ["batch" if isinstance(d, ir.SymbolicDim) and d.value == sym else d
                for d in v.shape]
        v.shape = ir.Shape(dims)


def name_nodes(graph: ir.Graph) -> None:
    """Each node is ``<first output>/<op type>`` (unique)."""
    used: set[str] = set()
    for node in graph:
        base = f"{node.outputs[0].name}/{node.op_type}" if node.outputs else node.op_type
        name, k = base, 0
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        node.name = name


# -- quantizer nodes ------------------------------------------------------------------------------
def _dynamic_values(graph: ir.Graph) -> set[int]:
    """ids of the values that depend on a graph input."""
    dynamic = {id(v) for v in graph.inputs}
    for node in graph:
        if any(i is not None and id(i) in dynamic for i in node.inputs):
            dynamic.update(id(o) for o in node.outputs)
    return dynamic


def _role_from_name(name: str) -> tuple[str, str]:
    """(op, role) from a quantizer's own name (``op``, ``op.input_<i>``, ``op.weight``), for
    quantizers the prepare report does not list (e.g. on a constant)."""
    head, _, tail = name.rpartition(".")
    if head and (tail == "weight" or tail.startswith("input_")):
        return head, tail
    return name, "output"


def quantizer_calls(graph: ir.Graph, opts: FinishOptions) -> list[QuantizerCall]:
    """Every ``fxquant.QuantizeDequantize`` node, in graph order."""
    dynamic = _dynamic_values(graph)
    calls = []
    for node in graph:
        if node.domain != QDQ_DOMAIN or node.op_type != QDQ_OP_TYPE:
            continue
        path = str(attr(node, "name"))
        fq = opts.qmodel.get_submodule(path)
        if not isinstance(fq, FakeQuantize):
            raise ExportError(f"internal: {path!r} is not a quantizer")
        fallback = (getattr(fq, "name", None) or path).removesuffix(".output_fake_quant")
        op, role = opts.index.get(path) or _role_from_name(fallback)
        use = opts.quantize and path not in opts.float_ops
        calls.append(QuantizerCall(node, path, fq, op, role, use,
                                   id(node.inputs[0]) not in dynamic))
    return calls


def use_constant_values(graph: ir.Graph, calls: list[QuantizerCall],
                    constants: dict[str, list[torch.Tensor]]) -> None:
    """A constant quantizer call reads an initializer holding the value the simulation
    quantizes (computed in torch: folded BN weights, reshaped parameters ...)."""
    pending = {p: list(v) for p, v in constants.items()}
    names = Names(graph)
    for call in calls:
        if not call.constant:
            continue
        values = pending.get(call.path)
        if not values:
            raise ExportError(
                f"internal: quantizer {call.path!r} reads a constant in the ONNX graph but not "
                "in the captured program"
            )
        value = values.pop(0)
        arr = to_numpy(value)
        name = names.fresh(f"{call.path}.input")
        tensor = ir.tensor(arr, name=name)
        v = ir.Value(name=name, shape=ir.Shape(arr.shape), type=ir.TensorType(tensor.dtype),
                     const_value=tensor)
        graph.register_initializer(v)
        call.node.replace_input_with(0, v)


_BIASED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm"})


def use_bias_values(graph: ir.Graph, calls: list[QuantizerCall],
                    biases: dict[str, list[torch.Tensor]]) -> None:
    """The constant bias of each Conv / ConvTranspose / Gemm whose weight is a quantized
    constant reads the value torch computed (the simulation's): the folded one can differ in
    the last bit (another ``sqrt``), which moves an int32 bias code when it lies near a tie.
    A value is only replaced by one of the same shape within float32 noise of it."""
    pending = {p: list(v) for p, v in biases.items()}
    names = Names(graph)
    for call in calls:
        values = pending.get(call.path)
        if not call.constant or not values:
            continue
        w = call.node.outputs[0]
        for user in consumers(w):
            if user.op_type not in _BIASED_OPS or len(user.inputs) < 3 or user.inputs[1] is not w:
                continue
            old = user.inputs[2]
            if not values or old is None or not is_constant(old):
                continue
            value = to_numpy(values.pop(0))
            folded = old.const_value.numpy()
            if value.shape != folded.shape or value.dtype != folded.dtype:
                continue
            tol = 1e-5 * float(abs(folded).max(initial=0.0))
            if not bool(abs(value.astype("float64") - folded).max(initial=0.0) <= tol):
                continue  # not the same bias: keep the folded one
            if len(old.uses()) == 1 and not old.is_graph_output():
                old.const_value = ir.tensor(value, name=old.name)
                continue
            name = names.fresh(f"{old.name}_value")
            v = ir.Value(name=name, shape=ir.Shape(value.shape), type=old.type,
                         const_value=ir.tensor(value, name=name))
            graph.register_initializer(v)
            user.replace_input_with(2, v)


def fold_constants(model: ir.Model) -> None:
    """Fold every constant subgraph left (ConstantOfShape included; no size limit)."""
    from onnxscript.optimizer import fold_constants as fold

    def should_fold(node: ir.Node) -> bool | None:
        if node.domain == QDQ_DOMAIN:
            return False
        return True if all(i is None or is_constant(i) for i in node.inputs) else None

    fold(model, input_size_limit=2**40, output_size_limit=2**40, should_fold=should_fold)
    common.RemoveUnusedNodesPass()(model)


def free_contract_names(graph: ir.Graph, calls: list[QuantizerCall], names: Names) -> None:
    """Rename values whose torch.onnx name is a contract tensor name of another value."""
    wanted = {c.tensor for c in calls}
    inputs = {id(v) for v in graph.inputs}
    for v in list(_all_values(graph)):
        if v.name in wanted and id(v) not in inputs:
            names.rename(v, f"{v.name}_onnx")


# -- placement -----------------------------------------------------------------------------------
def requantize_moves(edit: GraphEdit, concat: bool = True) -> None:
    """After an op that only moves values of one per-tensor quantized input (a zero / border
    ``Pad`` included; with ``concat``, a ``Concat`` of pieces of one grid, e.g. ``torch.roll``), a
    Q/DQ pair with the same parameters (unless every reader quantizes the result with its own).
    ``concat=False`` for OpenVINO, whose CPU plugin crashes on a requantized Concat output
    (``BackendProfile.quantize_concat_inputs``)."""
    graph = edit.graph
    for node in list(graph):
        if node.domain not in ("", "ai.onnx") or not (
                node.op_type in MOVEMENT_OPS or (concat and node.op_type == "Concat")
                or _pads_with_grid_values(node)):
            continue
        if node.op_type == "Resize" and attr(node, "mode", "nearest") != "nearest":
            continue
        src = node.inputs[0]
        dq = src.producer() if src is not None else None
        if dq is None or dq.op_type != "DequantizeLinear" or not _per_tensor(dq):
            continue
        others = [i for i in node.inputs[1:] if i is not None]
        if node.op_type == "Concat":  # every piece on the first one's grid (torch.roll)
            if not all(_dequantized_on(i, dq) for i in others):
                continue
        elif any(i.dtype in FLOAT_TYPES and not is_constant(i) for i in others):
            continue
        outs = node.outputs[:1] if node.op_type == "MaxPool" else node.outputs
        for out in outs:
            users = consumers(out)
            if out.dtype not in FLOAT_TYPES or (users and all(
                    u.op_type == "QuantizeLinear" for u in users)):
                continue
            s, z = dq.inputs[1], dq.inputs[2]
            q = ir.Node("", "QuantizeLinear", [out, s, z], num_outputs=1)
            d = ir.Node("", "DequantizeLinear", [q.outputs[0], s, z], num_outputs=1)
            q.outputs[0].name = edit.names.fresh(f"{out.name}_quantized")
            d.outputs[0].name = edit.names.fresh(f"{out.name}_dequantized")
            d.outputs[0].type, d.outputs[0].shape = out.type, out.shape
            graph.insert_after(node, [q, d])
            for use in list(out.uses()):
                if use.node is not q:
                    use.node.replace_input_with(use.idx, d.outputs[0])
            if out.is_graph_output():
                for i, o in enumerate(graph.outputs):
                    if o is out:
                        graph.outputs[i] = d.outputs[0]


def _dequantized_on(value: ir.Value, dq: ir.Node) -> bool:
    """``value`` is the output of a per-tensor DequantizeLinear with ``dq``'s grid."""
    src = value.producer()
    if src is None or src.op_type != "DequantizeLinear" or not _per_tensor(src):
        return False
    if src.inputs[1:] == dq.inputs[1:]:  # the same scale / zero-point values (or no zero point)
        return True
    return _same_grid(src, dq)


def _pads_with_grid_values(node: ir.Node) -> bool:
    """A ``Pad`` that only adds values of its input's grid: zeros (every grid holds 0: the zero
    point), or copies of border values (``reflect`` / ``edge``) -- windowed attention pads its
    quantized input before the window partition (Swin)."""
    if node.op_type != "Pad":
        return False
    mode = attr(node, "mode", "constant")
    if mode in ("reflect", "edge"):
        return True
    value = node.inputs[2] if len(node.inputs) > 2 else None
    return mode == "constant" and (value is None or (
        is_constant(value) and not np.any(value.const_value.numpy())))


def quantize_concat_inputs(edit: GraphEdit) -> None:
    """``Concat(a, b) -> Q -> DQ`` becomes ``Concat(DQ(Q(a)), DQ(Q(b))) -> Identity`` (the same
    values: a per-tensor Q is elementwise, a Concat only moves values); an input that a
    DequantizeLinear of the same grid produced is already on it and is read as it is.

    The Identity keeps the contract's ``<tensor>_dequantized``; the Concat keeps ``<tensor>``.
    OpenVINO's CPU plugin crashes on a Concat whose quantized output is quantized again (see
    ``BackendProfile.quantize_concat_inputs``).
    """
    graph = edit.graph
    for node in list(graph):
        if node.op_type != "Concat" or node.domain not in ("", "ai.onnx"):
            continue
        out = node.outputs[0]
        users = consumers(out)
        if len(users) != 1 or out.is_graph_output():
            continue
        q = users[0]
        if q.op_type != "QuantizeLinear" or q.domain not in ("", "ai.onnx") \
                or len(q.inputs) < 3 or not _per_tensor(q):
            continue
        dqs = consumers(q.outputs[0])
        if q.outputs[0].is_graph_output() or not dqs or not all(
                d.op_type == "DequantizeLinear" and _same_grid(d, q) for d in dqs):
            continue
        s, z = q.inputs[1], q.inputs[2]
        for i, x in enumerate(node.inputs):
            src = x.producer() if x is not None else None
            if x is None or (src is not None and src.op_type == "DequantizeLinear"
                             and _per_tensor(src) and _same_grid(src, q)):
                continue
            base = f"{out.name}.input_{i}"
            (xq,) = edit.node("QuantizeLinear", [x, s, z], [f"{base}_quantized"], before=node)
            (xd,) = edit.node("DequantizeLinear", [xq, s, z], [f"{base}_dequantized"],
                              before=node, like=x)
            node.replace_input_with(i, xd)
        for d in dqs:
            old = d.outputs[0]
            (same,) = edit.node("Identity", [out], [f"{old.name}_"], before=d, like=old)
            old.replace_all_uses_with(same, replace_graph_outputs=True)
            graph.remove(d, safe=True)
            edit.names.used.discard(old.name or "")
            edit.names.rename(same, old.name or same.name or "")
        graph.remove(q, safe=True)


def _same_grid(dq: ir.Node, q: ir.Node) -> bool:
    """``dq`` reads ``q``'s grid: the same constant scale and zero point (values and type)."""
    if len(dq.inputs) < 3 or len(q.inputs) < 3:
        return False
    pairs = [(dq.inputs[1], q.inputs[1]), (dq.inputs[2], q.inputs[2])]
    return all(is_constant(a) and is_constant(b) and a.dtype == b.dtype
               and np.array_equal(a.const_value.numpy(), b.const_value.numpy())
               for a, b in pairs)


def global_pools(graph: ir.Graph) -> None:
    """``ReduceMean`` over every spatial axis of an N-C-... tensor, keeping dims, is written as
    ``GlobalAveragePool`` (what ONNX Runtime fuses into QLinearGlobalAveragePool)."""
    for node in list(graph):
        if node.op_type != "ReduceMean" or not attr(node, "keepdims", 1):
            continue
        x = node.inputs[0]
        rank = len(x.shape) if x is not None and x.shape is not None else 0
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            if not is_constant(node.inputs[1]):
                continue
            axes = [int(a) for a in node.inputs[1].const_value.numpy().reshape(-1)]
        else:
            axes = list(attr(node, "axes", []) or [])
        if rank < 3 or sorted(a % rank for a in axes) != list(range(2, rank)):
            continue
        gap = ir.Node("", "GlobalAveragePool", [x], num_outputs=1)
        graph.insert_before(node, gap)
        out = node.outputs[0]
        gap.outputs[0].type, gap.outputs[0].shape = out.type, out.shape
        name = out.name
        out.replace_all_uses_with(gap.outputs[0], replace_graph_outputs=True)
        graph.remove(node, safe=True)
        gap.outputs[0].name = name


def _per_tensor(dq: ir.Node) -> bool:
    s = dq.inputs[1]
    return is_constant(s) and s.const_value.numpy().size == 1


def fold_weight_layout(graph: ir.Graph) -> None:
    """``DQ(W) -> Transpose`` with a constant W: the Transpose moves into W's codes."""
    for node in list(graph):
        if node.op_type != "Transpose":
            continue
        w = node.inputs[0]
        dq = w.producer() if w is not None else None
        if dq is None or dq.op_type != "DequantizeLinear" or not is_constant(dq.inputs[0]):
            continue
        if len(consumers(w)) != 1 or w.is_graph_output():
            continue
        codes_v = dq.inputs[0]
        codes = codes_v.const_value.numpy()
        perm = attr(node, "perm") or list(reversed(range(codes.ndim)))
        moved = to_numpy(codes.transpose(perm))
        codes_v.const_value = ir.tensor(moved, dtype=codes_v.const_value.dtype,
                                        name=codes_v.name)
        codes_v.shape = ir.Shape(moved.shape)
        if not _per_tensor(dq):
            axis = attr(dq, "axis", 1) % codes.ndim
            dq.attributes["axis"] = ir.AttrInt64("axis", list(perm).index(axis))
        w.shape = ir.Shape(moved.shape)
        node.outputs[0].replace_all_uses_with(w, replace_graph_outputs=True)
        graph.remove(node, safe=True)


def name_matmuls(graph: ir.Graph, names: Names) -> None:
    """``MatMul(x, DQ(W)) -> Add(bias)`` (a linear layer on a 3-D input): the MatMul's output
    is ``<Add output>_matmul`` (verify reads ORT's MatMulIntegerToFloat by that name)."""
    for node in graph:
        if node.op_type != "MatMul" or producer_op(node.inputs[1]) != "DequantizeLinear":
            continue
        users = consumers(node.outputs[0])
        if len(users) != 1 or users[0].op_type != "Add":
            continue
        add = users[0]
        bias = add.inputs[1] if add.inputs[0] is node.outputs[0] else add.inputs[0]
        if is_constant(bias):
            names.rename(node.outputs[0], f"{add.outputs[0].name}_matmul")


_NOT_COMPUTE = frozenset({"QuantizeLinear", "DequantizeLinear", "Identity", "Constant", "Shape",
                          "Cast", "Concat", "Relu", "Clip"}) | MOVEMENT_OPS


def float_ops(graph: ir.Graph) -> dict[str, int]:
    """Compute ops whose result the file does not quantize (op type -> count): what a runtime
    can only run in float.  Value-moving ops and activations fused into a quantized result
    (Relu / Clip before a QuantizeLinear) are not counted."""
    counts: dict[str, int] = {}
    for node in graph:
        if node.op_type in _NOT_COMPUTE or not node.outputs:
            continue
        out = node.outputs[0]
        if out.dtype not in FLOAT_TYPES:
            continue
        users = consumers(out)
        while len(users) == 1 and users[0].op_type in ("Relu", "Clip"):
            users = consumers(users[0].outputs[0])
        if not users or not all(u.op_type == "QuantizeLinear" for u in users):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


# -- tidy ------------------------------------------------------------------------------------------
def tidy(model: ir.Model, opset: int) -> None:
    """Drop what torch.onnx left for its own use (metadata, unused nodes / opsets), sort."""
    common.RemoveUnusedNodesPass()(model)
    common.ClearMetadataAndDocStringPass()(model)
    model.graph.opset_imports.pop(QDQ_DOMAIN, None)
    model.opset_imports.pop(QDQ_DOMAIN, None)
    model.graph.opset_imports[""] = opset
    model.opset_imports[""] = opset
    common.RemoveUnusedOpsetsPass()(model)
    common.TopologicalSortPass()(model)
