"""Library modules quantized inside: attention and recurrent layers.

``nn.MultiheadAttention``, ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (and cells) and every
``F.scaled_dot_product_attention`` call site stay one op in the captured graph (torch runs them
with fused kernels that no traceable rewrite reproduces bit for bit), and become fxquant's
quantizable-inside versions (:mod:`fxquant.nn.attention`, :mod:`fxquant.nn.rnn`):

* :func:`route_attention_calls` (graph transform, after naming): each
  ``F.scaled_dot_product_attention`` node becomes a call of a
  :class:`~fxquant.nn.ScaledDotProductAttention` module stored at the op's name, so the op keeps
  its name and its arguments;
* :func:`quantize_library_modules` (graph transform, after the qconfigs are known): each library
  module op with a qconfig is swapped for its quantizable version (sharing the Parameter
  objects: ``state_dict`` keeps the float names, e.g. ``self_attn.in_proj_weight``) and gets
  its internal quantizers from the op's qconfig -- weights from ``qconfig.weight`` (per-channel
  on the output rows), every internal value from ``qconfig.output``;
* :func:`quantize_library_module` does one module (also for eagerly captured ``forward``\\ s,
  where the module quantizes its own inputs and output: ``io=True``).

Which internal values get a quantizer follows the backend profile: ``scores`` (``q @ k^T``) is
left float where the profile keeps softmax's input float (ONNX Runtime: the matmul then runs as
MatMulIntegerToFloat) or quantizes only weighted-op inputs (TensorRT); under TensorRT's
placement a ``ScaledDotProductAttention`` quantizes its q / k / v inputs itself.  The inputs and
outputs of the op are quantized by the graph like any other op's.

Composite torch modules built from these (``nn.TransformerEncoderLayer`` ...) are traced into
(:data:`~fxquant.graph.patterns.TRACE_THROUGH`) rather than kept as leaves.  Their inference
fast path (``torch._transformer_encoder_layer_fwd``) is then replaced by their reference path, which
torch itself computes with different rounding: such a layer in a prepared model in float mode
matches the original bit for bit with the fast path off
(``torch.backends.mha.set_fastpath_enabled(False)``), and to float rounding otherwise.
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .. import nn as qnn
from .._utils import Factory
from ..backends import BackendProfile, Placement
from ..qconfig import OpKind, QConfig
from .insert import place_module
from .meta import is_float_tensor
from .records import NodeRecord
from .report import OpRecord, PrepareReport

__all__ = [
    "LIBRARY_TYPES",
    "is_library_module",
    "route_attention_calls",
    "quantize_library_module",
    "quantize_library_modules",
    "library_float_reason",
    "library_float_ops",
    "record_float_ops",
    "call_is_masked",
]

LIBRARY_TYPES: tuple[type, ...] = (
    *qnn.LIBRARY_TO_QUANT, *qnn.LIBRARY_TO_QUANT.values(), qnn.ScaledDotProductAttention
)
"""Module types quantized inside by this module (float and quantizable versions)."""

_ATTENTION_ROLES = ("q_weight", "k_weight", "v_weight", "out_weight", "q", "k", "v", "scores",
                    "probs", "attn")  # fmt: skip


def is_library_module(module: nn.Module) -> bool:
    """True for the module types this module quantizes inside."""
    return type(module) in LIBRARY_TYPES


def route_attention_calls(gm: fx.GraphModule, records: dict[fx.Node, NodeRecord]) -> None:
    """Replace every ``F.scaled_dot_product_attention`` node by a call of a
    :class:`~fxquant.nn.ScaledDotProductAttention` stored at the op's name (same arguments,
    same op name and op type); ``records`` are re-keyed to the new nodes."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not F.scaled_dot_product_attention:
            continue
        r = records.pop(node)
        path = place_module(gm, r.name, qnn.ScaledDotProductAttention())
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(path, node.args, dict(node.kwargs))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        r.node, r.module = new, gm.get_submodule(path)
        records[new] = r
    gm.recompile()


def _weight_quantizer(factory: Factory, name: str) -> nn.Module:
    """A weight quantizer for a ``[out, in]`` matrix (per-channel factories on axis 0)."""
    if factory.arg("ch_axis") is not None:
        factory = factory.with_args(ch_axis=0)
    fq = factory()
    fq.name = name
    return fq


def _activation_quantizer(factory: Factory, name: str) -> nn.Module:
    fq = factory()
    fq.name = name
    return fq


def _quantize_scores(profile: BackendProfile) -> bool:
    return profile.placement is Placement.OUTPUTS and "softmax" not in profile.float_input_ops


def quantize_library_module(
    module: nn.Module,
    qconfig: QConfig,
    profile: BackendProfile,
    op: str,
    path: str,
    *,
    io: bool = False,
) -> tuple[nn.Module, dict[str, str]]:
    """The quantizable version of ``module`` with its quantizers, and ``{role: module path}``.

    Args:
        module: a float library module (or an already quantizable one: filled in place).
        qconfig: the op's qconfig (``weight`` for weights, ``output`` for internal values).
        profile: decides which internal values are quantized (see the module docstring).
        op: the op's name (quantizers are named ``<op>.<role>``).
        path: the module's path in the prepared model.
        io: the module also quantizes its tensor inputs (``input`` or ``output`` factory) and
            its first output (eager capture, where no graph does).
    """
    cls = qnn.LIBRARY_TO_QUANT.get(type(module))
    if cls is not None:
        module = cls.from_float(module)
    roles: dict[str, str] = {}

    def put(owner: nn.Module, slot: str, fq: nn.Module, role: str, where: str) -> None:
        owner.register_module(slot, fq)
        roles[role] = f"{where}.{slot}" if where else slot

    act, weight = qconfig.output, qconfig.weight
    if isinstance(module, qnn.ScaledDotProductAttention):
        if act is not None:
            if profile.placement is Placement.WEIGHTED_INPUTS:
                for i, role in enumerate(("q", "k", "v")):
                    put(module, f"input_fake_quant_{i}",
                        _activation_quantizer(act, f"{op}.{role}"), role, path)
            if _quantize_scores(profile):
                put(module, "scores_fake_quant", _activation_quantizer(act, f"{op}.scores"),
                    "scores", path)
            put(module, "probs_fake_quant", _activation_quantizer(act, f"{op}.probs"), "probs",
                path)
    elif isinstance(module, qnn.QuantMultiheadAttention):
        for role in _ATTENTION_ROLES:
            factory = weight if role.endswith("_weight") else act
            if factory is None or (role == "scores" and not _quantize_scores(profile)):
                continue
            build = _weight_quantizer if role.endswith("_weight") else _activation_quantizer
            put(module, f"{role}_fake_quant", build(factory, f"{op}.{role}"), role, path)
    else:
        for qpath, qs in module.named_children():
            if not isinstance(qs, qnn.RNNQuantizers):
                continue
            layer = qpath.removeprefix("quant_").removeprefix("quant")
            for slot in qnn.rnn.RNN_SLOTS[qs.kind]:
                if slot == "weight_hr" and not getattr(module, "proj_size", 0):
                    continue
                if slot == "proj_input" and not getattr(module, "proj_size", 0):
                    continue
                if slot == "input" and (qpath in ("quant_l0", "quant_l0_reverse", "quant")
                                        or not getattr(module, "bidirectional", False)):
                    continue  # quantized by the graph (or io), or the previous layer's grid
                factory = weight if slot.startswith("weight_") else act
                if factory is None:
                    continue
                role = f"{layer}.{slot}" if layer else slot
                build = _weight_quantizer if slot.startswith("weight_") else _activation_quantizer
                put(qs, slot, build(factory, f"{op}.{role}"), role,
                    f"{path}.{qpath}" if path else qpath)
    if io:
        inq, outq = qconfig.input or act, act
        count = 3 if isinstance(module, qnn.QuantMultiheadAttention) else 1
        if inq is not None:
            for i in range(count):
                put(module, f"input_fake_quant_{i}", _activation_quantizer(inq, f"{op}.input_{i}"),
                    f"input_{i}", path)
        if outq is not None:
            put(module, "output_fake_quant", _activation_quantizer(outq, op), "output", path)
    return module, roles


def call_is_masked(module: nn.Module, args: tuple, kwargs: dict) -> bool:
    """Whether an attention call passes a mask (``attn_mask`` / ``key_padding_mask`` /
    ``is_causal``); ``args`` / ``kwargs`` are the call's (graph nodes or values)."""
    names = (("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
              "average_attn_weights", "is_causal")
             if isinstance(module, nn.MultiheadAttention) else
             ("query", "key", "value", "attn_mask", "dropout_p", "is_causal"))  # fmt: skip
    bound = dict(zip(names, args, strict=False)) | dict(kwargs)
    return any(bound.get(k) is not None and bound.get(k) is not False
               for k in ("attn_mask", "key_padding_mask", "is_causal"))


def library_float_ops(module: nn.Module, masked: bool) -> list[tuple[str, str, str]]:
    """The values a quantized library module computes in float (``(role, op_type, reason)``):
    attention scores when the profile keeps softmax's input float, a mask added to the
    quantized scores.  Recurrent layers keep every internal value on a grid."""
    if not isinstance(module, (qnn.ScaledDotProductAttention, qnn.QuantMultiheadAttention)):
        return []
    if module.probs_fake_quant is None:
        return []
    if module.scores_fake_quant is None:
        ops = "matmul, mul" + (", add" if masked else "")
        return [("scores", ops, "attention scores q @ k^T are scaled"
                 + (", masked" if masked else "") + " and soft-maxed in float: the profile "
                 "keeps softmax's input float (float_input_ops); softmax's output is quantized")]
    if masked:
        return [("mask", "add", "the attention mask is added to the quantized scores in float "
                 "(masks are not quantized); softmax's output is quantized")]
    return []


def record_float_ops(report: PrepareReport, op: str, module: nn.Module, masked: bool) -> None:
    """Add :func:`library_float_ops` of op ``op`` to ``report`` as float ops ``<op>.<role>``."""
    for role, op_type, reason in library_float_ops(module, masked):
        name = f"{op}.{role}"
        report.ops[name] = OpRecord(name, op_type, OpKind.COMPUTE, None, {}, reason)


def library_float_reason(module: nn.Module, node: fx.Node | None = None) -> str | None:
    """Why a library module op cannot be quantized inside (it then stays float), or None."""
    if node is not None and node.args and not is_float_tensor(node.args[0]):
        return (f"{type(module).__name__} called with a non-tensor input (e.g. a "
                "PackedSequence): its quantized forward takes tensors, so it runs in float")
    return None


def quantize_library_modules(
    gm: fx.GraphModule,
    records: dict[fx.Node, NodeRecord],
    report: PrepareReport,
    profile: BackendProfile,
    path_prefix: str = "",
) -> None:
    """Swap every library module op of ``gm`` that has a qconfig for its quantizable version
    (graph transform; ``report`` gets each op's quantizer paths or why it stayed float)."""
    done: dict[str, dict[str, str]] = {}
    for n, r in records.items():
        if n.op != "call_module" or r.kind not in (OpKind.WEIGHTED, OpKind.COMPUTE):
            continue
        mod = gm.get_submodule(n.target)
        if not is_library_module(mod):
            continue
        rec = report.ops.get(r.shown)
        q = r.qconfig
        if q is None or q.is_float or rec is None:
            continue
        if n.target in done:  # a reused module: one set of quantizers for every call site
            rec.quantizers.update(done[n.target])
            record_float_ops(report, r.shown, mod, call_is_masked(mod, n.args, n.kwargs))
            continue
        reason = library_float_reason(mod, n)
        if reason is not None:
            rec.float_reason = reason
            continue
        new, roles = quantize_library_module(mod, q, profile, r.shown, path_prefix + n.target)
        if new is not mod:
            parent, _, leaf = n.target.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, leaf, new)
            r.module = new
        done[n.target] = roles
        rec.quantizers.update(roles)
        record_float_ops(report, r.shown, new, call_is_masked(new, n.args, n.kwargs))
