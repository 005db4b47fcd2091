"""Placement planning: which values get which quantizer (pure analysis, no graph edits).

Rules (OUTPUTS placement, the default):

* WEIGHTED / COMPUTE ops need quantized float-tensor inputs and get an output quantizer;
* an ACTIVATION (relu) that is the only user of a WEIGHTED / COMPUTE op is fused: the producer's
  output quantizer moves after the activation (conv -> relu has no quantizer in between);
* SHARE ops (view, permute, max pool ...) never requantize: a quantized input stays quantized;
* a needed input that is not yet quantized is quantized at its *root*: the first producer that
  is not a SHARE op (walking back through reshapes), once, for all consumers;
* QuantStub outputs are quantized; DeQuantStub and FLOAT ops produce float;
* a value that holds Inf / NaN in the float model (an additive mask) is never quantized;
* an op computed only from parameters, buffers and constants (no model input upstream, e.g. a
  weight standardized with ``F.batch_norm`` before a functional conv) is not an activation op:
  it gets no quantizer of its own.  Such a value is quantized only where an op that depends on
  the inputs reads it as data (at its root, like a parameter), or by the weight quantizer of the
  weighted op that reads it as its weight.

A conv / linear output read only by a BatchNorm that was not folded into it (``fold_bn=False``,
or a BatchNorm that cannot be folded) is not quantized: the BatchNorm's output is, and runtimes
fuse the pair.

Without ``requantize_before_add`` (OpenVINO) a conv / linear output that only feeds a residual add
is not quantized: the runtime adds it in its accumulator precision.

Ops in the profile's ``float_input_ops`` (softmax for ONNX Runtime) get no quantizer right
before them, so the runtime runs them in float rather than with an approximate integer kernel.

WEIGHTED_INPUTS placement (TensorRT) quantizes only what weighted ops, residual adds and matmuls
consume (at its root, after relu), and no other outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch.fx as fx

from .._utils import Factory
from ..backends import Placement
from ..qconfig import OpKind, QConfig
from .meta import is_float_tensor, value_info
from .ops import read_inputs
from .patterns import WEIGHT_ARG, data_users, function_name
from .records import NodeRecord

__all__ = ["ValueQuant", "Plan", "plan_placement", "data_inputs", "constant_nodes"]

_TRT_INPUT_OPS = frozenset({"add", "sub", "matmul", "bmm"})
_BATCH_NORMS = frozenset({"batch_norm", "batchnorm1d", "batchnorm2d", "batchnorm3d"})


@dataclass(frozen=True)
class ValueQuant:
    """Quantize the output value of ``node`` with ``factory``, owned by op ``owner``."""

    factory: Factory
    owner: str


@dataclass
class Plan:
    """Result of planning.

    Attributes:
        outputs: node -> quantizer for its output value.
        inputs: (consumer node, input node, index) -> explicit per-edge input quantizer.
        fused: producer node -> activation node it was fused into.
        float_outputs: quantized op -> why its output deliberately stays float (it feeds only
            ops the profile runs on float inputs).
    """

    outputs: dict[fx.Node, ValueQuant] = field(default_factory=dict)
    inputs: dict[tuple[fx.Node, fx.Node, int], ValueQuant] = field(default_factory=dict)
    fused: dict[fx.Node, fx.Node] = field(default_factory=dict)
    float_outputs: dict[fx.Node, str] = field(default_factory=dict)


def data_inputs(node: fx.Node) -> list[fx.Node]:
    """Float-tensor inputs of ``node`` that carry activations (not the weight / bias args)."""
    skip: set[fx.Node] = set()
    if node.op == "call_function" and node.target in WEIGHT_ARG:
        for a in list(node.args[WEIGHT_ARG[node.target] :]) + list(node.kwargs.values()):
            if isinstance(a, fx.Node):
                skip.add(a)
    return [n for n in read_inputs(node) if n not in skip and is_float_tensor(n)]


def constant_nodes(gm: fx.GraphModule) -> frozenset[fx.Node]:
    """Nodes whose value depends on no model input (parameters, buffers, constants only)."""
    const: set[fx.Node] = set()
    for n in gm.graph.nodes:
        if n.op == "get_attr" or (
            n.op in ("call_function", "call_method", "call_module")
            and all(i in const for i in n.all_input_nodes)
        ):
            const.add(n)
    return frozenset(const)


def _kind(records: Mapping[fx.Node, NodeRecord], n: fx.Node) -> OpKind | None:
    r = records.get(n)
    return None if r is None else r.kind


def _carries_float(n: fx.Node, records: Mapping[fx.Node, NodeRecord]) -> bool:
    """A float tensor, or a SHARE op's tuple of them (chunk / split), not shapes or indices."""
    if is_float_tensor(n):
        return True
    return _kind(records, n) is OpKind.SHARE and any(
        is_float_tensor(i) for i in n.all_input_nodes
    )


def _root(v: fx.Node, records: Mapping[fx.Node, NodeRecord]) -> fx.Node:
    """First producer of ``v`` that is not a SHARE op (through getitem of chunk / split too)."""
    last_float = v
    while _kind(records, v) is OpKind.SHARE:
        ins = [n for n in read_inputs(v) if _carries_float(n, records)]
        if len(ins) != 1:
            break
        v = ins[0]
        if is_float_tensor(v):
            last_float = v
    return v if is_float_tensor(v) else last_float


def _base(n: fx.Node, gm: fx.GraphModule) -> str:
    if n.op == "call_module":
        return type(gm.get_submodule(n.target)).__name__.lower()
    return function_name(n.target) if n.op in ("call_function", "call_method") else ""


def plan_placement(
    gm: fx.GraphModule,
    records: Mapping[fx.Node, NodeRecord],
    placement: Placement,
    float_input_ops: frozenset[str] = frozenset(),
    requantize_before_add: bool = True,
) -> Plan:
    """Decide every activation quantizer of the graph (weights are handled by the caller).

    ``records`` holds each op node's name, kind and qconfig (:mod:`fxquant.graph.stages`).
    """
    plan = Plan()
    const = constant_nodes(gm)

    def kind_of(n: fx.Node) -> OpKind | None:
        return _kind(records, n)

    def active(n: fx.Node) -> QConfig | None:
        r = records.get(n)
        q = None if r is None else r.qconfig
        return None if q is None or q.is_float or n in const else q

    # fusion: producer -> relu
    if placement is Placement.OUTPUTS:
        for n in gm.graph.nodes:
            if kind_of(n) is not OpKind.ACTIVATION or not n.args:
                continue
            p = n.args[0]
            if (
                isinstance(p, fx.Node)
                and kind_of(p) in (OpKind.WEIGHTED, OpKind.COMPUTE)
                and len(data_users(p)) == 1
                and active(p) is not None
                and active(p).output is not None
            ):
                plan.fused[p] = n

    def mark(v: fx.Node, factory: Factory | None, owner: str) -> None:
        info = value_info(v)
        if info is not None and not info.finite:
            return  # Inf / NaN in the float model (masks): never quantized
        if factory is not None and v not in plan.outputs and is_float_tensor(v):
            plan.outputs[v] = ValueQuant(factory, owner)

    def require(v: fx.Node, consumer_q: QConfig) -> None:
        r = _root(v, records)
        if r in plan.outputs:
            return
        rq = active(r)
        factory = rq.output if rq is not None and rq.output is not None else None
        if factory is None:
            factory = consumer_q.input or consumer_q.output
        mark(r, factory, records[r].name if r in records else r.name)

    fused_acts = {a: p for p, a in plan.fused.items()}

    def float_input(n: fx.Node) -> bool:
        return bool(float_input_ops) and _base(n, gm) in float_input_ops

    def feeds_only_float_inputs(n: fx.Node, depth: int = 0) -> bool:
        """Every reader of ``n`` keeps its input float -- through views / reshapes between
        (an attention's mask add, reshaped, before its softmax): a quantizer there would be
        requantized after the view and the runtime would fuse an integer softmax."""
        users = data_users(n)
        return bool(users) and all(
            float_input(u) or (depth < 8 and kind_of(u) is OpKind.SHARE
                               and feeds_only_float_inputs(u, depth + 1))
            for u in users)

    def sum_post_op(v: fx.Node, consumer: fx.Node) -> bool:
        """``v`` is a weighted op's output that only feeds the residual add ``consumer``."""
        return (not requantize_before_add and kind_of(v) is OpKind.WEIGHTED
                and len(data_users(v)) == 1 and _base(consumer, gm) == "add"
                and len(data_inputs(consumer)) == 2)

    def before_bn(v: fx.Node, consumer: fx.Node) -> bool:
        """``v`` is a weighted op's output read only by the BatchNorm ``consumer``."""
        return (kind_of(v) is OpKind.WEIGHTED and len(data_users(v)) == 1
                and _base(consumer, gm) in _BATCH_NORMS and bool(consumer.args)
                and consumer.args[0] is v and active(consumer) is not None)

    def skip_input(v: fx.Node, consumer: fx.Node) -> bool:
        return sum_post_op(v, consumer) or before_bn(v, consumer)

    for n in gm.graph.nodes:
        q = active(n)
        kind = kind_of(n)
        if q is None or kind is None:
            continue
        name = records[n].name
        if q.input is not None:
            for i, v in enumerate(data_inputs(n)):
                plan.inputs[(n, v, i)] = ValueQuant(q.input, f"{name}.input_{i}")
        if kind is OpKind.QUANT_STUB:
            mark(n, q.output, name)
            continue
        if kind is OpKind.ACTIVATION and n in fused_acts:
            pq = active(fused_acts[n])
            mark(n, pq.output if pq is not None else q.output, name)
            continue
        if kind not in (OpKind.WEIGHTED, OpKind.COMPUTE, OpKind.ACTIVATION):
            continue
        if placement is Placement.OUTPUTS:
            if q.input is None and not float_input(n):
                for v in data_inputs(n):
                    if not skip_input(v, n):
                        require(v, q)
            users = data_users(n)
            folded_into_add = len(users) == 1 and skip_input(n, users[0])
            if n not in plan.fused and not feeds_only_float_inputs(n) and not folded_into_add:
                mark(n, q.output, name)
            elif n not in plan.fused and not folded_into_add:
                ops = sorted({_base(u, gm) for u in data_users(n)})
                plan.float_outputs[n] = (
                    f"output stays float: it only feeds {', '.join(ops)}, whose input the "
                    "profile keeps float (float_input_ops)"
                )
        else:  # WEIGHTED_INPUTS
            base = function_name(n.target) if n.op != "call_module" else ""
            if kind is OpKind.WEIGHTED or base in _TRT_INPUT_OPS:
                if q.input is None:
                    for v in data_inputs(n):
                        require(v, q)
    return plan
