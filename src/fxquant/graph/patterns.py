"""Op classification: the :class:`OpKind` of a graph node, from the op-trait table.

The table (:mod:`fxquant.graph.ops`) says what each module type, function and tensor method is;
this module answers for a node (a few kinds depend on the call's arguments) and keeps the views
of the table that prepare reads.  Anything not listed is kept in float and reported (with the op
type) by :func:`fxquant.summary`.
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx import Node

from ..qconfig.opinfo import OpKind
from .ops import (
    FUNCTION_TRAITS,
    METHOD_TRAITS,
    MODULE_TRAITS,
    QUANT_STUB_NAMES,
    canonical_name,
    function_traits,
    is_stub,
    method_traits,
    module_traits,
    reads_metadata_only,
)

__all__ = [
    "MODULE_KINDS",
    "FUNCTION_KINDS",
    "METHOD_KINDS",
    "WEIGHT_ARG",
    "PARAM_ARGS",
    "FUNCTIONAL_WEIGHT_AXIS",
    "classify_module",
    "classify_function",
    "classify_method",
    "function_name",
    "is_stub",
    "QUANT_STUB_NAMES",
    "data_users",
    "TRACE_THROUGH",
    "pad_kind",
    "interpolate_kind",
]

C, S = OpKind.COMPUTE, OpKind.SHARE

MODULE_KINDS: dict[type, OpKind] = {t: tr.kind for t, tr in MODULE_TRAITS.items()}
"""Module type -> :class:`OpKind` (a view of :data:`fxquant.graph.ops.MODULE_TRAITS`)."""
FUNCTION_KINDS: dict[Any, OpKind] = {
    f: tr.kind for f, tr in FUNCTION_TRAITS.items() if not tr.kind_from_args
}
"""Function -> :class:`OpKind`, for the functions whose kind does not depend on arguments."""
METHOD_KINDS: dict[str, OpKind] = {m: tr.kind for m, tr in METHOD_TRAITS.items()}
"""Tensor method name -> :class:`OpKind`."""
WEIGHT_ARG: dict[Any, int] = {
    f: tr.weight_arg for f, tr in FUNCTION_TRAITS.items() if tr.weight_arg is not None
}
"""Positional index of the weight argument of weighted functional ops."""
PARAM_ARGS: dict[Any, tuple[int, ...]] = {
    f: tr.param_args for f, tr in FUNCTION_TRAITS.items() if tr.param_args
}
"""Positional arguments that are parameters (weight, bias), not activations."""
FUNCTIONAL_WEIGHT_AXIS: dict[Any, int] = {
    f: tr.weight_axis for f, tr in FUNCTION_TRAITS.items() if tr.weight_axis
}
"""Output-channel axis of a functional weight when it is not 0 (``addmm(b, x, w)``)."""


def function_name(target: Any) -> str:
    """Short op name of a function / method target: ``torch.add`` and ``operator.add`` -> add."""
    return canonical_name(target)


TRACE_THROUGH: frozenset[type] = frozenset({
    nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder, nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
})  # fmt: skip
"""torch.nn modules that capture traces into instead of keeping as leaves (composites of
library modules: their children become the graph's ops; see
:mod:`fxquant.graph.library_modules`)."""


def pad_kind(mode: Any, value: Any) -> OpKind:
    """``F.pad``: zero padding and reflect / replicate only move values; another constant is a
    new value."""
    return S if mode != "constant" or not value else C


def interpolate_kind(mode: Any) -> OpKind:
    """``F.interpolate``: nearest only moves values."""
    return S if mode == "nearest" else C


def _pad_kind(node: Node) -> OpKind:
    mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0.0)
    return pad_kind(mode, value)


def _interp_kind(node: Node) -> OpKind:
    return interpolate_kind(node.kwargs.get("mode", "nearest"))


def classify_module(m: nn.Module) -> OpKind:
    """The :class:`OpKind` of a call of module ``m``."""
    if isinstance(m, nn.Upsample) and getattr(m, "mode", "nearest") == "nearest":
        return S
    return module_traits(m).kind


def classify_function(node: Node) -> OpKind:
    """The :class:`OpKind` of a ``call_function`` node (some depend on its arguments)."""
    if node.target is F.interpolate:
        return _interp_kind(node)
    if node.target is F.pad:
        return _pad_kind(node)
    return function_traits(node.target).kind


def classify_method(node: Node) -> OpKind:
    """The :class:`OpKind` of a ``call_method`` node."""
    return method_traits(node.target).kind


def data_users(node: fx.Node) -> list[fx.Node]:
    """The users of ``node`` that read its numbers: users that read only its shape, dtype or
    device (``x.ndim``, ``x.shape``, ``x.size()`` -- e.g. timm's BatchNormAct2d asserting
    ``x.ndim == 4``) see the same on a fused or folded replacement, so patterns ignore them."""
    return [u for u in node.users if not reads_metadata_only(u, node)]
