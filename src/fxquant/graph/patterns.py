"""Op classification as data: which ops compute, which only move values, which carry weights.

Lookups by module type, by function and by tensor-method name.  Anything not listed is kept in
float and reported (with the op type) by :func:`fxquant.summary`.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx import Node

from .. import nn as qnn
from ..nn.stubs import DeQuantStub, QuantStub
from ..qconfig.opinfo import OpKind

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
    "NAMED_FUNCTION_KINDS",
    "pad_kind",
    "interpolate_kind",
]

W, C, A, S = OpKind.WEIGHTED, OpKind.COMPUTE, OpKind.ACTIVATION, OpKind.SHARE

MODULE_KINDS: dict[type, OpKind] = {
    **{
        t: W
        for t in (
            nn.Conv1d,
            nn.Conv2d,
            nn.Conv3d,
            nn.ConvTranspose1d,
            nn.ConvTranspose2d,
            nn.ConvTranspose3d,
            nn.Linear,
            nn.Embedding,
        )
    },
    **{t: W for t in qnn.FLOAT_TO_QUANT.values()},
    **{t: W for t in (qnn.ConvBn1d, qnn.ConvBn2d, qnn.ConvBn3d)},
    # library modules quantized inside (fxquant.graph.library_modules)
    **{t: W for t in qnn.LIBRARY_TO_QUANT},
    **{t: W for t in qnn.LIBRARY_TO_QUANT.values()},
    qnn.ScaledDotProductAttention: C,
    **{t: A for t in (nn.ReLU, nn.ReLU6)},
    **{
        t: C
        for t in (
            nn.BatchNorm1d,
            nn.BatchNorm2d,
            nn.BatchNorm3d,
            nn.LayerNorm,
            nn.GroupNorm,
            nn.InstanceNorm1d,
            nn.InstanceNorm2d,
            nn.InstanceNorm3d,
            nn.Sigmoid,
            nn.Tanh,
            nn.GELU,
            nn.SiLU,
            nn.Hardswish,
            nn.Hardsigmoid,
            nn.LeakyReLU,
            nn.PReLU,
            nn.ELU,
            nn.Softmax,
            nn.LogSoftmax,
            nn.Mish,
            nn.Softplus,
            nn.Hardtanh,
            nn.AvgPool1d,
            nn.AvgPool2d,
            nn.AvgPool3d,
            nn.AdaptiveAvgPool1d,
            nn.AdaptiveAvgPool2d,
            nn.AdaptiveAvgPool3d,
            nn.Upsample,
            nn.UpsamplingBilinear2d,
        )
    },
    **{
        t: S
        for t in (
            nn.MaxPool1d,
            nn.MaxPool2d,
            nn.MaxPool3d,
            nn.AdaptiveMaxPool1d,
            nn.AdaptiveMaxPool2d,
            nn.AdaptiveMaxPool3d,
            nn.Dropout,
            nn.Dropout1d,
            nn.Dropout2d,
            nn.Dropout3d,
            nn.AlphaDropout,
            nn.Identity,
            nn.Flatten,
            nn.Unflatten,
            nn.PixelShuffle,
            nn.PixelUnshuffle,
            nn.ChannelShuffle,
            nn.UpsamplingNearest2d,
            nn.ZeroPad1d,
            nn.ZeroPad2d,
            nn.ZeroPad3d,
        )
    },
}

FUNCTION_KINDS: dict[Any, OpKind] = {
    **{f: W for f in (F.linear, F.conv1d, F.conv2d, F.conv3d, torch.addmm)},
    **{f: A for f in (F.relu, torch.relu, F.relu6, F.relu_)},
    **{
        f: C
        for f in (
            torch.add,
            operator.add,
            operator.iadd,
            torch.sub,
            operator.sub,
            operator.isub,
            torch.mul,
            operator.mul,
            operator.imul,
            torch.div,
            operator.truediv,
            torch.matmul,
            operator.matmul,
            torch.bmm,
            torch.cat,
            torch.concat,
            torch.stack,
            F.softmax,
            torch.softmax,
            F.log_softmax,
            F.layer_norm,
            F.group_norm,
            F.batch_norm,
            F.instance_norm,
            torch.sigmoid,
            F.sigmoid,
            torch.tanh,
            F.tanh,
            F.gelu,
            F.silu,
            F.mish,
            F.hardswish,
            F.hardsigmoid,
            F.leaky_relu,
            F.elu,
            F.hardtanh,
            F.softplus,
            F.avg_pool1d,
            F.avg_pool2d,
            F.avg_pool3d,
            F.adaptive_avg_pool1d,
            F.adaptive_avg_pool2d,
            F.adaptive_avg_pool3d,
            torch.mean,
            torch.sum,
            F.grid_sample,
            torch.exp,
            torch.sqrt,
            torch.rsqrt,
            torch.pow,
            torch.erf,
            F.normalize,
            torch.einsum,
            torch.neg,
            operator.neg,
            torch.abs,
            torch.clamp,
            torch.clip,
            F.scaled_dot_product_attention,
        )
    },
    **{
        f: S
        for f in (
            F.max_pool1d,
            F.max_pool2d,
            F.max_pool3d,
            F.adaptive_max_pool1d,
            F.adaptive_max_pool2d,
            F.adaptive_max_pool3d,
            torch.flatten,
            torch.reshape,
            torch.permute,
            torch.transpose,
            torch.squeeze,
            torch.unsqueeze,
            torch.chunk,
            torch.split,
            operator.getitem,
            F.dropout,
            F.dropout2d,
            torch.narrow,
            F.pixel_shuffle,
            F.pixel_unshuffle,
            torch.roll,
            torch.t,
            torch.flip,
            torch.unbind,
            torch.movedim,
            torch.swapaxes,
            torch.tile,
            torch.max,  # reductions that select a value (elementwise max / min of two
            torch.min,  # differently quantized tensors are requantized by their consumer)
            torch.amax,
            torch.amin,
        )
    },
}

METHOD_KINDS: dict[str, OpKind] = {
    **{m: A for m in ("relu", "relu_")},
    **{
        m: C
        for m in (
            "add",
            "add_",
            "sub",
            "sub_",
            "mul",
            "mul_",
            "div",
            "div_",
            "matmul",
            "bmm",
            "softmax",
            "log_softmax",
            "mean",
            "sum",
            "sigmoid",
            "tanh",
            "exp",
            "pow",
            "sqrt",
            "rsqrt",
            "neg",
            "abs",
            "clamp",
            "clip",
        )
    },
    **{
        m: S
        for m in (
            "view",
            "reshape",
            "flatten",
            "permute",
            "transpose",
            "contiguous",
            "squeeze",
            "unsqueeze",
            "chunk",
            "split",
            "expand",
            "expand_as",
            "repeat",
            "narrow",
            "flip",
            "t",
            "view_as",
            "reshape_as",
            "unflatten",
            "unbind",
            "clone",
            "detach",
            "max",
            "min",
            "amax",
            "amin",
            "to",  # casts (float to float: the same values)
            "float",
            "type_as",
            "roll",
            "movedim",
            "swapaxes",
            "tile",
            "__getitem__",
        )
    },
}

# positional index of the weight argument of weighted functional ops
WEIGHT_ARG: dict[Any, int] = {F.linear: 1, F.conv1d: 1, F.conv2d: 1, F.conv3d: 1, torch.addmm: 2}
# positional arguments that are parameters, not activations (weight, bias)
PARAM_ARGS: dict[Any, tuple[int, ...]] = {
    F.linear: (1, 2),
    F.conv1d: (1, 2),
    F.conv2d: (1, 2),
    F.conv3d: (1, 2),
    torch.addmm: (0, 2),
}
# output-channel axis of the weight of weighted functional ops (addmm(b, x, w): w is [in, out])
FUNCTIONAL_WEIGHT_AXIS: dict[Any, int] = {torch.addmm: 1}

_ALIASES = {
    "iadd": "add",
    "isub": "sub",
    "imul": "mul",
    "truediv": "div",
    "concat": "cat",
    "relu_": "relu",
    "add_": "add",
    "sub_": "sub",
    "mul_": "mul",
    "div_": "div",
    "__getitem__": "getitem",
    "clip": "clamp",
}

QUANT_STUB_NAMES = ("QuantStub",)
DEQUANT_STUB_NAMES = ("DeQuantStub",)


TRACE_THROUGH: frozenset[type] = frozenset({
    nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder, nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
})  # fmt: skip
"""torch.nn modules that capture traces into instead of keeping as leaves (composites of
library modules: their children become the graph's ops; see
:mod:`fxquant.graph.library_modules`)."""


def is_stub(m: nn.Module) -> OpKind | None:
    """QUANT_STUB / DEQUANT_STUB for fxquant's stubs (:mod:`fxquant.nn.stubs`, subclasses
    included) and torch.ao's eager stubs (matched by name, no torch.ao import)."""
    if isinstance(m, QuantStub):
        return OpKind.QUANT_STUB
    if isinstance(m, DeQuantStub):
        return OpKind.DEQUANT_STUB
    name = type(m).__name__
    if not type(m).__module__.startswith("torch.ao"):
        return None
    if name in QUANT_STUB_NAMES:
        return OpKind.QUANT_STUB
    if name in DEQUANT_STUB_NAMES:
        return OpKind.DEQUANT_STUB
    return None


def function_name(target: Any) -> str:
    """Short op name of a function / method target: ``torch.add`` and ``operator.add`` -> add."""
    name = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
    return _ALIASES.get(name, name)


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
    stub = is_stub(m)
    if stub is not None:
        return stub
    if isinstance(m, nn.Upsample) and getattr(m, "mode", "nearest") == "nearest":
        return S
    return MODULE_KINDS.get(type(m), OpKind.FLOAT)


NAMED_FUNCTION_KINDS: dict[tuple[str, str], OpKind] = {
    ("torchvision.ops.stochastic_depth", "stochastic_depth"): S,  # identity in eval
}
"""Functions of optional libraries, by (module, name): fxquant imports none of them."""


def classify_function(node: Node) -> OpKind:
    if node.target is F.interpolate:
        return _interp_kind(node)
    if node.target is F.pad:
        return _pad_kind(node)
    kind = FUNCTION_KINDS.get(node.target)
    if kind is None:
        key = (getattr(node.target, "__module__", None), getattr(node.target, "__name__", None))
        kind = NAMED_FUNCTION_KINDS.get(key, OpKind.FLOAT)  # type: ignore[arg-type]
    return kind


def classify_method(node: Node) -> OpKind:
    return METHOD_KINDS.get(str(node.target), OpKind.FLOAT)


_METADATA_ATTRS = frozenset({"ndim", "shape", "dtype", "device", "is_cuda"})
_METADATA_METHODS = frozenset({"dim", "size", "numel", "ndimension", "nelement"})


def _reads_metadata_only(user: fx.Node, value: fx.Node) -> bool:
    if user.op == "call_function" and user.target is getattr:
        return len(user.args) >= 2 and user.args[0] is value and user.args[1] in _METADATA_ATTRS
    return (user.op == "call_method" and user.target in _METADATA_METHODS
            and user.args[:1] == (value,))


def data_users(node: fx.Node) -> list[fx.Node]:
    """The users of ``node`` that read its numbers: users that read only its shape, dtype or
    device (``x.ndim``, ``x.shape``, ``x.size()`` -- e.g. timm's BatchNormAct2d asserting
    ``x.ndim == 4``) see the same on a fused or folded replacement, so patterns ignore them."""
    return [u for u in node.users if not _reads_metadata_only(u, node)]
