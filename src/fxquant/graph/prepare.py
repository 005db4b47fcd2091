"""``prepare``: capture the model, decide qconfigs, fold BN, insert quantizers.

The pipeline (each step one small function below)::

    deepcopy -> capture (fx, float islands) -> names -> kinds -> qconfigs -> fold conv+BN
             -> plan placement -> swap weighted modules -> insert activation quantizers

If the model's own ``forward`` cannot be traced, :func:`fxquant.graph.eager.prepare_eager`
takes over (eager capture of everything around the failing lines).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .. import nn as qnn
from .._utils import Factory
from ..backends import BackendProfile, get_profile
from ..qconfig import (
    OpInfo,
    OpKind,
    QConfig,
    SetterArg,
    SetterContext,
    as_setter_tuple,
    default_qat_qconfig_setter,
    resolve_qconfig,
    validate_setters,
)
from .capture import FunctionCall, Island, RootTraceError, capture
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
from .plan import constant_nodes, plan_placement
from .report import REPORT_KEY, OpRecord, PrepareReport

__all__ = ["prepare", "as_input_tuple"]

_BN_FOR_CONV = {
    nn.Conv1d: (nn.BatchNorm1d, qnn.ConvBn1d),
    nn.Conv2d: (nn.BatchNorm2d, qnn.ConvBn2d),
    nn.Conv3d: (nn.BatchNorm3d, qnn.ConvBn3d),
}


def as_input_tuple(example_inputs: Any) -> tuple[Any, ...]:
    """A tensor becomes a 1-tuple; lists become tuples."""
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def prepare(
    model: nn.Module,
    example_inputs: Any,
    qconfig_setter: SetterArg = default_qat_qconfig_setter,
    backend: str | BackendProfile = "generic",
    *,
    leaf_modules: Iterable[str] = (),
    skip_modules: Iterable[str] = (),
    fold_bn: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """Return a copy of ``model`` with fake quantizers inserted (``model`` is untouched).

    Args:
        model: any ``nn.Module``; no edits needed (functional ops, ``+``, ``torch.cat``,
            reused modules, eager-style QuantStub / FloatFunctional models all work).
        example_inputs: a tensor or a tuple of positional inputs (used to trace and to learn
            which values are float tensors).
        qconfig_setter: a setter, a :class:`QConfig`, a ``{name: QConfig}`` dict or a tuple of
            them (earlier wins; see :mod:`fxquant.qconfig.setters`).
        backend: profile name (``generic``, ``x86``, ``fbgemm``, ``qnnpack``, ``onnxruntime``,
            ``tensorrt``) or a :class:`BackendProfile`.
        leaf_modules: module paths not to trace into (quantized at their boundary).
        skip_modules: module paths kept entirely in float.
        fold_bn: fold BatchNorm into the preceding conv (fold-aware in QAT).
        inplace: build the prepared model from ``model``'s own modules instead of a deep copy:
            it shares ``model``'s parameters and buffers (an optimizer built on
            ``model.parameters()`` trains the prepared model), and ``model``'s leaf modules may
            gain quantizer children.  Use ``model`` itself for nothing else afterwards.

    The prepared model is in ``FakeQuantState.QAT``; use :func:`fxquant.calibrate` for PTQ.
    """
    profile = get_profile(backend)
    setters = as_setter_tuple(qconfig_setter)
    inputs = as_input_tuple(example_inputs)
    skip = frozenset(skip_modules)
    if not inplace:
        model = copy.deepcopy(model)
    try:
        gm, islands = capture(model, inputs, frozenset(leaf_modules) | skip)
    except RootTraceError as err:
        from .eager import prepare_eager

        return prepare_eager(
            model,
            inputs,
            setters,
            profile,
            err,
            leaf_modules=leaf_modules,
            skip_modules=skip,
            fold_bn=fold_bn,
        )
    report = PrepareReport(profile=profile, islands=dict(islands))
    report.num_inputs = len(inputs)
    _prepare_graph(
        gm,
        setters,
        profile,
        islands,
        skip,
        fold_bn,
        report,
        validate=False,
        leaves=frozenset(leaf_modules),
    )
    _prepare_islands(gm, islands, setters, profile, leaf_modules, skip, fold_bn, report)
    validate_setters(setters, sorted(report.ops) + [p for p, _ in gm.named_modules() if p])
    gm.meta[REPORT_KEY] = report
    return gm


def _prepare_graph(
    gm: fx.GraphModule,
    setters: tuple[Any, ...],
    profile: BackendProfile,
    islands: dict[str, Island],
    skip: frozenset[str],
    fold_bn: bool,
    report: PrepareReport,
    *,
    validate: bool = True,
    rename: dict[str, str] | None = None,
    path_prefix: str = "",
    leaves: frozenset[str] = frozenset(),
) -> dict[fx.Node, str]:
    """Prepare ``gm`` in place.  ``rename`` maps local names to the names users see (eager
    capture), ``path_prefix`` is ``gm``'s path inside the prepared model (for the report)."""
    names = route_attention_calls(gm, assign_names(gm))
    kinds, reasons = _classify(gm, names, islands, skip, leaves)
    const = constant_nodes(gm)  # computed from parameters only: weights, not float ops
    shown = {n: (rename or {}).get(name, name) for n, name in names.items()}
    grid = _grid_path(gm, shown, kinds)
    ctx = SetterContext(profile=profile, grid_path=grid)
    infos = {
        n: OpInfo(
            shown[n],
            _op_type(gm, n),
            kinds[n],
            gm.get_submodule(n.target) if n.op == "call_module" else None,
        )
        for n in names
    }
    if validate:
        validate_setters(setters, _all_names(gm, names))
    qconfigs: dict[fx.Node, QConfig | None] = {}
    for n, info in infos.items():
        if kinds[n] is OpKind.FLOAT or not (is_float_tensor(n) or _library_call(gm, n)):
            qconfigs[n] = None
        else:
            qconfigs[n] = resolve_qconfig(setters, info, ctx)
    for n, info in infos.items():
        report.ops[info.name] = OpRecord(
            info.name,
            info.op_type,
            info.kind,
            qconfigs[n],
            {},
            reasons.get(n),
            carries_float(n),
        )
    if fold_bn:
        _fold_conv_bn(gm, names, shown, kinds, qconfigs, report, path_prefix)
    plan = plan_placement(
        gm, names, kinds, qconfigs, profile.placement, profile.float_input_ops,
        profile.requantize_before_add,
    )
    _quantize_weights(gm, names, shown, kinds, qconfigs, report, path_prefix)
    quantize_library_modules(gm, names, shown, kinds, qconfigs, report, profile, path_prefix)
    local_to_shown = {names[n]: shown[n] for n in names}
    for node, vq in plan.outputs.items():
        owner = local_to_shown.get(vq.owner, vq.owner)
        path = attach(gm, vq.owner, "output_fake_quant", vq.factory(), owner)
        insert_after(gm, node, path)
        if owner in report.ops:
            report.ops[owner].quantizers["output"] = path_prefix + path
    for (consumer, value, i), vq in plan.inputs.items():
        op = shown[consumer]
        path = attach(gm, names[consumer], f"input_fake_quant_{i}", vq.factory(), f"{op}.input_{i}")
        insert_on_edge(gm, value, consumer, path)
        report.ops[op].quantizers[f"input_{i}"] = path_prefix + path
    _explain_float(report, shown, kinds, qconfigs, plan)
    for n in const & shown.keys():
        report.ops[shown[n]].float_reason = None
    gm.graph.lint()
    gm.recompile()
    return shown


def _prepare_islands(
    gm,
    islands,
    setters,
    profile,
    leaf_modules,
    skip,
    fold_bn,
    report,
    prefix: str = "",
    path_prefix: str = "",
) -> None:
    """Quantize inside float islands too: their forward runs eagerly, children are captured."""
    from .eager import prepare_eager

    for name, isl in islands.items():
        mod = gm.get_submodule(name)
        opaque_call = isinstance(mod, FunctionCall)
        if isl.example_args is None or not (opaque_call or any(True for _ in mod.children())):
            continue
        err = RootTraceError(isl.reason, isl.source)
        isl_args, isl_kwargs = isl.example_args
        new = prepare_eager(
            mod,
            tuple(isl_args),
            setters,
            profile,
            err,
            leaf_modules=leaf_modules,
            skip_modules=skip,
            fold_bn=fold_bn,
            prefix=f"{prefix}{name}.",
            report=report,
            path_prefix=f"{path_prefix}{name}.",
            kwargs=isl_kwargs,
        )
        _set_submodule(gm, name, new)
        rec = report.ops.get(f"{prefix}{name}")
        if rec is not None:
            rec.float_reason = None  # its ops are quantized or listed on their own
            report.notes[rec.name] = (
                f"tracing failed at {isl.source} ({isl.reason}); its forward runs eagerly: "
                "children and its own ops are quantized (or listed as float ops)"
            )


def _op_type(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "call_module":
        return type(gm.get_submodule(n.target)).__name__
    if n.op == "placeholder":
        return "input"
    return function_name(n.target)


def _library_call(gm: fx.GraphModule, n: fx.Node) -> bool:
    """A call of a library module that returns float tensors in a tuple (an LSTM ...)."""
    return (n.op == "call_module" and carries_float(n)
            and is_library_module(gm.get_submodule(n.target)))


def _all_names(gm: fx.GraphModule, names: dict[fx.Node, str]) -> list[str]:
    mods = [p for p, _ in gm.named_modules() if p]
    return sorted(set(names.values()) | set(mods))


def _classify(
    gm: fx.GraphModule,
    names: dict[fx.Node, str],
    islands: dict[str, Island],
    skip: frozenset[str],
    leaves: frozenset[str] = frozenset(),
) -> tuple[dict[fx.Node, OpKind], dict[fx.Node, str]]:
    kinds: dict[fx.Node, OpKind] = {}
    reasons: dict[fx.Node, str] = {}
    for n in names:
        if n.op == "placeholder":
            kinds[n] = OpKind.INPUT if _finite(n) else OpKind.FLOAT
            if not _finite(n):
                reasons[n] = "input holds Inf / NaN in the example inputs: kept float"
            continue
        if n.op == "call_module":
            if n.target in islands:
                isl = islands[n.target]
                kinds[n] = OpKind.FLOAT
                reasons[n] = f"float island: tracing failed at {isl.source} ({isl.reason})"
                continue
            if n.target in skip:
                kinds[n] = OpKind.FLOAT
                reasons[n] = "skipped by the user (skip_modules)"
                continue
            kind = classify_module(gm.get_submodule(n.target))
            if kind is OpKind.FLOAT and n.target in leaves:
                kinds[n] = OpKind.COMPUTE
                reasons[n] = "leaf module (leaf_modules): runs in float inside, output quantized"
                continue
        elif n.op == "call_function":
            kind = classify_function(n)
        else:
            kind = classify_method(n)
        if kind is OpKind.FLOAT:
            reasons[n] = f"no quantization pattern for {_op_type(gm, n)!r}"
        elif not _finite(n):
            kind = OpKind.FLOAT
            reasons[n] = "produces Inf / NaN in the float model (e.g. a mask): kept float"
        kinds[n] = kind
    return kinds, reasons


def _finite(n: fx.Node) -> bool:
    info = value_info(n)
    return info is None or info.finite


def _grid_path(
    gm: fx.GraphModule, names: dict[fx.Node, str], kinds: dict[fx.Node, OpKind]
) -> frozenset[str]:
    """Ops that compute the ``grid`` argument of ``F.grid_sample`` (up to the weighted op)."""
    out: set[str] = set()
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target is not F.grid_sample:
            continue
        grid = n.args[1] if len(n.args) > 1 else n.kwargs.get("grid")
        stack = [grid] if isinstance(grid, fx.Node) else []
        while stack:
            v = stack.pop()
            if v in names and names[v] not in out:
                out.add(names[v])
                if kinds.get(v) is not OpKind.WEIGHTED:
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


def _fold_conv_bn(gm, names, shown, kinds, qconfigs, report, path_prefix) -> None:
    """Fold ``conv -> BatchNorm`` (a module call, or ``F.batch_norm`` on one BatchNorm's
    running statistics, see :func:`_functional_bn`) into a ConvBn module."""
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    for conv_node in list(gm.graph.nodes):
        if conv_node.op != "call_module" or calls.get(conv_node.target) != 1:
            continue
        conv = gm.get_submodule(conv_node.target)
        pair = _BN_FOR_CONV.get(type(conv))
        q = qconfigs.get(conv_node)
        users = data_users(conv_node)
        if pair is None or q is None or q.weight is None or len(users) != 1:
            continue
        bn_node = users[0]
        if not bn_node.args or bn_node.args[0] is not conv_node:
            continue
        if bn_node.op == "call_module":
            if calls.get(bn_node.target) != 1:
                continue
            bn = gm.get_submodule(bn_node.target)
            if type(bn) is not pair[0]:
                continue
        else:
            bn = _functional_bn(gm, bn_node, conv, pair[0])
            if bn is None:
                continue
        wfq = _weight_quantizer(q.weight, conv, shown[conv_node])
        fused = pair[1].from_float(conv, bn, wfq)
        _set_submodule(gm, conv_node.target, fused)
        bn_node.replace_all_uses_with(conv_node)
        attrs = [a for a in bn_node.all_input_nodes if a.op == "get_attr"]
        gm.graph.erase_node(bn_node)
        for a in attrs:
            if not a.users:
                gm.graph.erase_node(a)
        rec = report.ops.pop(shown[bn_node], None)
        crec = report.ops[shown[conv_node]]
        if rec is not None:
            crec.op_type = f"{type(conv).__name__}+{rec.op_type}"
        kinds.pop(bn_node, None)
        qconfigs.pop(bn_node, None)
        crec.quantizers["weight"] = f"{path_prefix}{conv_node.target}.weight_fake_quant"
        crec.folded = shown[bn_node]


def _set_submodule(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


def _weight_quantizer(factory: Factory, module: nn.Module | None, op: str, axis: int = 0):
    """Build a weight quantizer; a per-channel factory gets the weight's output-channel axis."""
    if factory.arg("ch_axis") is not None:
        if module is not None:
            axis = qnn.WEIGHT_AXIS.get(type(module), axis)
        factory = factory.with_args(ch_axis=axis)
    fq = factory()
    fq.name = f"{op}.weight"
    return fq


def _quantize_weights(gm, names, shown, kinds, qconfigs, report, path_prefix) -> None:
    swapped: set[str] = set()
    for n in list(gm.graph.nodes):
        q = qconfigs.get(n)
        if kinds.get(n) is not OpKind.WEIGHTED or q is None or q.weight is None:
            continue
        op = shown[n]
        if n.op == "call_module":
            mod = gm.get_submodule(n.target)
            if (
                n.target in swapped
                or isinstance(mod, tuple(qnn.FLOAT_TO_QUANT.values()))
                or isinstance(mod, (qnn.ConvBn1d, qnn.ConvBn2d, qnn.ConvBn3d))
            ):
                report.ops[op].quantizers.setdefault(
                    "weight", f"{path_prefix}{n.target}.weight_fake_quant"
                )
                continue
            cls = qnn.FLOAT_TO_QUANT.get(type(mod))
            if cls is None:
                continue
            _set_submodule(gm, n.target, cls.from_float(mod, _weight_quantizer(q.weight, mod, op)))
            swapped.add(n.target)
            report.ops[op].quantizers["weight"] = f"{path_prefix}{n.target}.weight_fake_quant"
        elif n.op == "call_function" and n.target in WEIGHT_ARG:
            w = (
                n.args[WEIGHT_ARG[n.target]]
                if len(n.args) > WEIGHT_ARG[n.target]
                else n.kwargs.get("weight")
            )
            if not isinstance(w, fx.Node) or not is_float_tensor(w):
                continue
            fq = _weight_quantizer(q.weight, None, op, FUNCTIONAL_WEIGHT_AXIS.get(n.target, 0))
            fq.is_weight = w.op == "get_attr"
            path = attach(gm, names[n], "weight_fake_quant", fq, f"{op}.weight")
            insert_on_edge(gm, w, n, path)
            report.ops[op].quantizers["weight"] = path_prefix + path


def _explain_float(report, shown, kinds, qconfigs, plan) -> None:
    quantized = set(plan.outputs)
    for n, name in shown.items():
        rec = report.ops.get(name)
        if rec is None or rec.float_reason is not None or not rec.is_tensor_op:
            continue
        q = qconfigs.get(n)
        if kinds.get(n) in (OpKind.SHARE, OpKind.INPUT, OpKind.DEQUANT_STUB):
            if kinds.get(n) is OpKind.DEQUANT_STUB:
                rec.float_reason = "DeQuantStub: float by design"
            continue
        if q is None or q.is_float:
            rec.float_reason = "no qconfig: no setter covers this op"
            if q is not None:
                rec.float_reason = "kept float by its qconfig"
        elif n in plan.float_outputs:
            rec.float_reason = plan.float_outputs[n]
        elif (
            n not in quantized
            and n not in plan.fused
            and report.profile.placement.value == "outputs"
        ):
            if q.output is None:
                rec.float_reason = "qconfig has no output quantizer"
