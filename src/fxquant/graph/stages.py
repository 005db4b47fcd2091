"""The stages of preparing one captured graph: small transforms over one record per node.

:func:`prepare_graph` runs, on a :class:`GraphPass` (the graph, what the whole prepare call
shares, and one :class:`NodeRecord` per op node)::

    name_ops -> route_attention -> classify_ops -> resolve_qconfigs -> fold_conv_bn
             -> plan_placement -> quantize_weights -> quantize_library -> insert_quantizers
             -> share_profile_grids -> explain_float

Each stage reads and updates the records (and the graph); nothing else is passed between them.
Float islands inside the graph are prepared eagerly afterwards (:mod:`fxquant.graph.eager`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .. import nn as qnn
from .._utils import Factory
from ..backends import BackendProfile
from ..errors import ConfigError, bounded
from ..fake_quant import FakeQuantize
from ..qconfig import (
    OpInfo,
    OpKind,
    QconfigSetter,
    SetterContext,
    resolve_qconfig,
)
from .capture import Island
from .insert import attach, insert_after, insert_on_edge
from .library_modules import is_library_module, quantize_library_modules, route_attention_calls
from .meta import carries_float, is_float_tensor, value_info
from .naming import assign_names
from .patterns import (
    FUNCTIONAL_WEIGHT_AXIS,
    WEIGHT_ARG,
    classify_function,
    classify_method,
    classify_module,
    data_users,
    function_name,
)
from .plan import Plan, constant_nodes, plan_placement
from .profile_rules import fix_output, share_grids
from .records import NodeRecord
from .report import OpRecord, PrepareReport

__all__ = [
    "PrepareContext",
    "GraphPass",
    "NodeRecord",
    "STAGES",
    "prepare_graph",
    "weight_quantizer",
    "set_submodule",
]


@dataclass
class PrepareContext:
    """What one :func:`fxquant.prepare` call shares between its graphs and eager units.

    Attributes:
        setters: the qconfig setters, earlier wins.
        profile: the backend profile.
        leaf_modules / skip: module paths not traced into / kept entirely in float.
        fold_bn: fold conv + BatchNorm.
        report: the :class:`PrepareReport` being filled.
    """

    setters: tuple[QconfigSetter, ...]
    profile: BackendProfile
    leaf_modules: frozenset[str]
    skip: frozenset[str]
    fold_bn: bool
    report: PrepareReport

    @property
    def setter_context(self) -> SetterContext:
        return SetterContext(profile=self.profile)


@dataclass
class GraphPass:
    """One graph being prepared.

    Attributes:
        gm: the graph module, edited in place.
        ctx: the shared :class:`PrepareContext`.
        islands: its float islands (module path -> :class:`Island`).
        rename: local op name -> the name users see (graphs of eager units).
        path_prefix: ``gm``'s path inside the prepared model (for the report).
        records: one :class:`NodeRecord` per placeholder / op node, in graph order.
    """

    gm: fx.GraphModule
    ctx: PrepareContext
    islands: dict[str, Island] = field(default_factory=dict)
    rename: dict[str, str] = field(default_factory=dict)
    path_prefix: str = ""
    records: dict[fx.Node, NodeRecord] = field(default_factory=dict)
    plan: Plan = field(default_factory=Plan)

    def record(self, name: str) -> OpRecord:
        return self.ctx.report.ops[name]


# -- stages -----------------------------------------------------------------------------------
def name_ops(p: GraphPass) -> None:
    """Give every placeholder / op node its record with its stable name and op type."""
    for n, name in assign_names(p.gm).items():
        module = p.gm.get_submodule(n.target) if n.op == "call_module" else None
        p.records[n] = NodeRecord(n, name, p.rename.get(name, name), _op_type(p.gm, n), module)


def route_attention(p: GraphPass) -> None:
    """``F.scaled_dot_product_attention`` call sites become library-module calls
    (:func:`fxquant.graph.library_modules.route_attention_calls`), quantized inside."""
    route_attention_calls(p.gm, p.records)


def classify_ops(p: GraphPass) -> None:
    """The :class:`OpKind` of every op, and why an op stays float."""
    for n, r in p.records.items():
        r.kind, r.reason = _classify(p, n)


def _classify(p: GraphPass, n: fx.Node) -> tuple[OpKind, str | None]:
    if n.op == "placeholder":
        if _finite(n):
            return OpKind.INPUT, None
        return OpKind.FLOAT, "input holds Inf / NaN in the example inputs: kept float"
    if n.op == "call_module":
        if n.target in p.islands:
            isl = p.islands[n.target]
            return OpKind.FLOAT, f"float island: tracing failed at {isl.source} ({isl.reason})"
        if n.target in p.ctx.skip:
            return OpKind.FLOAT, "skipped by the user (skip_modules)"
        kind = classify_module(p.gm.get_submodule(n.target))
        if kind is OpKind.FLOAT and n.target in p.ctx.leaf_modules:
            return OpKind.COMPUTE, (
                "leaf module (leaf_modules): runs in float inside, output quantized"
            )
    elif n.op == "call_function":
        kind = classify_function(n)
    else:
        kind = classify_method(n)
    if kind is OpKind.FLOAT:
        return kind, f"no quantization pattern for {_op_type(p.gm, n)!r}"
    if not _finite(n):
        return OpKind.FLOAT, "produces Inf / NaN in the float model (e.g. a mask): kept float"
    return kind, None


def resolve_qconfigs(p: GraphPass) -> None:
    """Ask the setters for every quantizable op; record each op in the report."""
    ctx = SetterContext(profile=p.ctx.profile, grid_path=_grid_path(p))
    for n, r in p.records.items():
        # a library module (an LSTM ...) may return its float tensors in a tuple
        library = r.module is not None and is_library_module(r.module) and carries_float(n)
        if r.kind is not OpKind.FLOAT and (is_float_tensor(n) or library):
            info = OpInfo(r.shown, r.op_type, r.kind, r.module)
            r.qconfig = fix_output(resolve_qconfig(p.ctx.setters, info, ctx), r.op_type,
                                   p.ctx.profile)  # the profile's fixed output grids
        p.ctx.report.ops[r.shown] = OpRecord(
            r.shown, r.op_type, r.kind, r.qconfig, {}, r.reason, carries_float(n)
        )


def fold_conv_bn(p: GraphPass) -> None:
    """Fold ``conv -> BatchNorm`` (a module call, or ``F.batch_norm`` on one BatchNorm's
    running statistics, see :func:`_functional_bn`) into a ConvBn module."""
    if not p.ctx.fold_bn:
        return
    gm = p.gm
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    for conv_node in list(gm.graph.nodes):
        if conv_node.op != "call_module" or calls.get(conv_node.target) != 1:
            continue
        conv = gm.get_submodule(conv_node.target)
        fused_type = qnn.CONV_TO_CONV_BN.get(type(conv))
        conv_rec = p.records.get(conv_node)  # None: a BatchNorm folded earlier in this loop
        q = None if conv_rec is None else conv_rec.qconfig
        users = data_users(conv_node)
        if fused_type is None or q is None or q.weight is None or len(users) != 1:
            continue
        bn_node = users[0]
        if not bn_node.args or bn_node.args[0] is not conv_node:
            continue
        bn_type = _BN_FOR_CONV[type(conv)]
        if bn_node.op == "call_module":
            if calls.get(bn_node.target) != 1:
                continue
            bn = gm.get_submodule(bn_node.target)
            if type(bn) is not bn_type:
                continue
        else:
            bn = _functional_bn(gm, bn_node, conv, bn_type)
            if bn is None:
                continue
        wfq = weight_quantizer(q.weight, conv, conv_rec.shown)
        set_submodule(gm, conv_node.target, fused_type.from_float(conv, bn, wfq))
        conv_rec.module = gm.get_submodule(conv_node.target)
        bn_node.replace_all_uses_with(conv_node)
        attrs = [a for a in bn_node.all_input_nodes if a.op == "get_attr"]
        gm.graph.erase_node(bn_node)
        for a in attrs:
            if not a.users:
                gm.graph.erase_node(a)
        bn_rec = p.records.pop(bn_node)
        rec = p.ctx.report.ops.pop(bn_rec.shown, None)
        crec = p.record(conv_rec.shown)
        if rec is not None:
            crec.op_type = f"{type(conv).__name__}+{rec.op_type}"
        crec.quantizers["weight"] = f"{p.path_prefix}{conv_node.target}.weight_fake_quant"
        crec.folded = bn_rec.shown


def plan(p: GraphPass) -> None:
    """Decide every activation quantizer (:func:`fxquant.graph.plan.plan_placement`)."""
    prof = p.ctx.profile
    p.plan = plan_placement(p.gm, p.records, prof.placement, prof.float_input_ops,
                            prof.requantize_before_add)


def quantize_weights(p: GraphPass) -> None:
    """Swap weighted modules for their weight-quantized form; functional weights get a
    quantizer on their edge."""
    gm = p.gm
    swapped: set[str] = set()
    for n in list(gm.graph.nodes):
        r = p.records.get(n)
        if r is None or r.kind is not OpKind.WEIGHTED or r.qconfig is None:
            continue
        q = r.qconfig
        if q.weight is None:
            continue
        rec = p.record(r.shown)
        if n.op == "call_module":
            mod = gm.get_submodule(n.target)
            path = f"{p.path_prefix}{n.target}.weight_fake_quant"
            if n.target in swapped or isinstance(mod, _WEIGHT_QUANTIZED):
                rec.quantizers.setdefault("weight", path)
                continue
            cls = qnn.FLOAT_TO_QUANT.get(type(mod))
            if cls is None:
                continue
            set_submodule(gm, n.target, cls.from_float(mod, weight_quantizer(q.weight, mod,
                                                                              r.shown)))
            swapped.add(n.target)
            rec.quantizers["weight"] = path
        elif n.op == "call_function" and n.target in WEIGHT_ARG:
            idx = WEIGHT_ARG[n.target]
            w = n.args[idx] if len(n.args) > idx else n.kwargs.get("weight")
            if not isinstance(w, fx.Node) or not is_float_tensor(w):
                continue
            axis = FUNCTIONAL_WEIGHT_AXIS.get(n.target, 0)
            fq = weight_quantizer(q.weight, None, r.shown, axis)
            fq.is_weight = w.op == "get_attr"
            path = attach(gm, r.name, "weight_fake_quant", fq, f"{r.shown}.weight")
            insert_on_edge(gm, w, n, path)
            rec.quantizers["weight"] = p.path_prefix + path


def quantize_library(p: GraphPass) -> None:
    """Library modules (attention, recurrent layers) get their quantizers inside
    (:func:`fxquant.graph.library_modules.quantize_library_modules`)."""
    quantize_library_modules(p.gm, p.records, p.ctx.report, p.ctx.profile, p.path_prefix)


def insert_quantizers(p: GraphPass) -> None:
    """Put the planned activation quantizers into the model and the graph."""
    local_to_shown = {r.name: r.shown for r in p.records.values()}
    for node, vq in p.plan.outputs.items():
        owner = local_to_shown.get(vq.owner, vq.owner)
        path = attach(p.gm, vq.owner, "output_fake_quant", vq.factory(), owner)
        insert_after(p.gm, node, path)
        if owner in p.ctx.report.ops:
            p.record(owner).quantizers["output"] = p.path_prefix + path
    for (consumer, value, i), vq in p.plan.inputs.items():
        r = p.records[consumer]
        path = attach(p.gm, r.name, f"input_fake_quant_{i}", vq.factory(), f"{r.shown}.input_{i}")
        insert_on_edge(p.gm, value, consumer, path)
        p.record(r.shown).quantizers[f"input_{i}"] = p.path_prefix + path


def share_profile_grids(p: GraphPass) -> None:
    """The profile's grid-sharing rules (:func:`.profile_rules.share_grids`: TFLite's pooling
    writes its input's grid, concatenation shares one); aliased quantizers leave the model."""
    moved = share_grids(p.gm, {n: r.kind for n, r in p.records.items()},
                        {n: r.op_type for n, r in p.records.items()}, p.ctx.profile)
    for old, new in moved.items():
        p.gm.delete_submodule(old)
        for rec in p.ctx.report.ops.values():
            for role, path in rec.quantizers.items():
                if path == p.path_prefix + old:
                    rec.quantizers[role] = p.path_prefix + new


def explain_float(p: GraphPass) -> None:
    """Say why each op whose result stays float does so (what counts: ``fxquant.summary``);
    ops computed from parameters and constants alone are weights, not float ops."""
    report = p.ctx.report
    quantized = set(p.plan.outputs)
    const = constant_nodes(p.gm)
    for n, r in p.records.items():
        rec = report.ops.get(r.shown)
        if rec is not None and n in const:
            rec.float_reason = None
            continue
        if rec is None or rec.float_reason is not None or not rec.is_tensor_op:
            continue
        q = r.qconfig
        if r.kind in (OpKind.SHARE, OpKind.INPUT, OpKind.DEQUANT_STUB):
            if r.kind is OpKind.DEQUANT_STUB:
                rec.float_reason = "DeQuantStub: float by design"
            continue
        if q is None or q.is_float:
            rec.float_reason = "no qconfig: no setter covers this op"
            if q is not None:
                rec.float_reason = "kept float by its qconfig"
        elif n in p.plan.float_outputs:
            rec.float_reason = p.plan.float_outputs[n]
        elif (
            n not in quantized
            and n not in p.plan.fused
            and report.profile.placement.value == "outputs"
        ):
            if q.output is None:
                rec.float_reason = "qconfig has no output quantizer"


STAGES: tuple[Callable[[GraphPass], None], ...] = (
    name_ops,
    route_attention,
    classify_ops,
    resolve_qconfigs,
    fold_conv_bn,
    plan,
    quantize_weights,
    quantize_library,
    insert_quantizers,
    share_profile_grids,
    explain_float,
)
"""The stages :func:`prepare_graph` runs, in order."""


def prepare_graph(p: GraphPass) -> None:
    """Run :data:`STAGES` on ``p``."""
    for stage in STAGES:
        stage(p)
    p.gm.graph.lint()
    p.gm.recompile()


# -- helpers ----------------------------------------------------------------------------------
_BN_FOR_CONV = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}
_WEIGHT_QUANTIZED = (*qnn.FLOAT_TO_QUANT.values(), *qnn.CONV_TO_CONV_BN.values())


def weight_quantizer(factory: Factory, module: nn.Module | None, op: str,
                     axis: int = 0) -> FakeQuantize:
    """Build a weight quantizer; a per-channel factory gets the weight's output-channel axis
    (a ``ch_axis`` outside the weight's dimensions is a :class:`ConfigError` naming the op)."""
    asked = factory.arg("ch_axis")
    if asked is not None:
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and not -weight.dim() <= asked < weight.dim():
            raise ConfigError(
                f"op {bounded(op)!r}: the weight quantizer's ch_axis={asked} is outside its "
                f"{weight.dim()}-d weight {list(weight.shape)}; per-channel weights use the "
                f"output-channel axis: give ch_axis=0 (or None for per tensor)"
            )
        if module is not None:
            axis = qnn.WEIGHT_AXIS.get(type(module), axis)
        factory = factory.with_args(ch_axis=axis)
    fq = factory()
    fq.name = f"{op}.weight"
    return fq


def set_submodule(gm: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


def _op_type(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "call_module":
        return type(gm.get_submodule(n.target)).__name__
    if n.op == "placeholder":
        return "input"
    return function_name(n.target)


def _finite(n: fx.Node) -> bool:
    info = value_info(n)
    return info is None or info.finite


def _grid_path(p: GraphPass) -> frozenset[str]:
    """Ops that compute the ``grid`` argument of ``F.grid_sample`` (up to the weighted op)."""
    out: set[str] = set()
    for n in p.gm.graph.nodes:
        if n.op != "call_function" or n.target is not F.grid_sample:
            continue
        grid = n.args[1] if len(n.args) > 1 else n.kwargs.get("grid")
        stack = [grid] if isinstance(grid, fx.Node) else []
        while stack:
            v = stack.pop()
            r = p.records.get(v)
            if r is not None and r.shown not in out:
                out.add(r.shown)
                if r.kind is not OpKind.WEIGHTED:
                    stack.extend(v.all_input_nodes)
    return frozenset(out)


_F_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
              "eps")


def _functional_bn(gm: fx.GraphModule, node: fx.Node, conv: nn.Module, bn_type: type):
    """A BatchNorm module equivalent to ``node`` when it is ``F.batch_norm(conv_out, ...)`` on
    running statistics and affine parameters read (``get_attr``) only by it, as in BatchNorm
    subclasses whose forward calls ``F.batch_norm`` (timm's ``BatchNormAct2d``); else None.
    The module shares the graph's parameters and buffers."""
    if node.op != "call_function" or node.target is not F.batch_norm:
        return None
    a = dict(zip(_F_BN_ARGS, node.args, strict=False)) | dict(node.kwargs)
    tensors = {k: a.get(k) for k in ("running_mean", "running_var", "weight", "bias")}
    if tensors["running_mean"] is None or tensors["running_var"] is None:
        return None
    for v in tensors.values():
        if v is not None and (
            not isinstance(v, fx.Node) or v.op != "get_attr" or len(v.users) != 1
        ):
            return None
    if (tensors["weight"] is None) != (tensors["bias"] is None):
        return None
    values = {k: _fetch_attr(gm, v.target) for k, v in tensors.items() if v is not None}
    c = conv.out_channels
    if any(t.shape != (c,) for t in values.values()):
        return None
    momentum = a.get("momentum", 0.1)
    bn = bn_type(c, eps=float(a.get("eps", 1e-5)), momentum=momentum,
                 affine="weight" in values)
    for k, t in values.items():
        if k in ("weight", "bias"):
            if not isinstance(t, nn.Parameter):
                return None
            setattr(bn, k, t)
        else:
            bn.register_buffer(k, t)
    bn.train(bool(a.get("training", False)))
    return bn


def _fetch_attr(gm: fx.GraphModule, target: str):
    owner, _, attr = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, attr)
