"""The emitter tables: module type / function / tensor-method name -> ONNX emitter (plain data).

:func:`find_emitter` looks an fx node up; anything missing makes ``export_onnx`` raise an error
naming the op (or export it in float through ``torch.onnx`` when listed in ``keep_float``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .. import nn as qnn
from ..graph.patterns import is_stub
from .onnx_layers import (
    _adaptive_avg,
    _adaptive_avg_module,
    _adaptive_max,
    _adaptive_max_module,
    _avg_pool,
    _avg_pool_module,
    _batch_norm_module,
    _conv_module,
    _conv_transpose_module,
    _embedding_module,
    _f_batch_norm,
    _f_conv,
    _f_layer_norm,
    _f_linear,
    _group_norm,
    _group_norm_module,
    _instance_norm_module,
    _interpolate,
    _layer_norm_module,
    _linear_module,
    _max_pool,
    _max_pool_module,
    _pad,
    _pad_module,
    _pixel_shuffle,
    _prelu_module,
    _sdpa,
    _upsample_module,
)
from .onnx_ops import (
    _binary,
    _cast_recorded,
    _cat,
    _clamp,
    _einsum,
    _elu,
    _expand,
    _expand_as,
    _flatten,
    _flatten_module,
    _gelu,
    _getitem,
    _hardsigmoid,
    _hardswish,
    _hardtanh,
    _identity,
    _leaky_relu,
    _matmul,
    _module,
    _module_attr,
    _neg,
    _permute,
    _pow,
    _reduce,
    _relu6,
    _repeat,
    _reshape,
    _reshape_as,
    _rsqrt,
    _silu,
    _softmax_like,
    _split,
    _squeeze,
    _stack,
    _t,
    _transpose,
    _unary,
    _unbind,
    _unflatten,
    _unsqueeze,
)

__all__ = ["MODULE_EMITTERS", "FUNCTION_EMITTERS", "METHOD_EMITTERS", "SIZE_EMITTERS",
           "find_emitter", "supported_ops"]

# -- tables ---------------------------------------------------------------------------------------
def _types(*names: str) -> list[type]:
    return [getattr(nn, n) for n in names if hasattr(nn, n)]


_RELU = _unary("Relu")

MODULE_EMITTERS: dict[type, Callable[..., Any]] = {
    **{t: _conv_module for t in (nn.Conv1d, nn.Conv2d, nn.Conv3d, qnn.QuantConv1d,
                                 qnn.QuantConv2d, qnn.QuantConv3d, qnn.ConvBn1d, qnn.ConvBn2d,
                                 qnn.ConvBn3d)},
    **{t: _conv_transpose_module for t in (nn.ConvTranspose1d, nn.ConvTranspose2d,
                                           nn.ConvTranspose3d, qnn.QuantConvTranspose1d,
                                           qnn.QuantConvTranspose2d, qnn.QuantConvTranspose3d)},
    nn.Linear: _linear_module,
    qnn.QuantLinear: _linear_module,
    nn.Embedding: _embedding_module,
    qnn.QuantEmbedding: _embedding_module,
    **{t: _batch_norm_module for t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)},
    **{t: _instance_norm_module for t in (nn.InstanceNorm1d, nn.InstanceNorm2d,
                                          nn.InstanceNorm3d)},
    nn.LayerNorm: _layer_norm_module,
    nn.GroupNorm: _group_norm_module,
    **{t: _pad_module for t in _types("ZeroPad1d", "ZeroPad2d", "ZeroPad3d", "ConstantPad1d",
                                      "ConstantPad2d", "ConstantPad3d")},
    nn.ReLU: _module(_RELU),
    nn.ReLU6: _module(_relu6),
    nn.Sigmoid: _module(_unary("Sigmoid")),
    nn.Tanh: _module(_unary("Tanh")),
    nn.GELU: _module_attr(_gelu, "approximate"),
    nn.SiLU: _module(_silu),
    nn.Hardswish: _module(_hardswish),
    nn.Hardsigmoid: _module(_hardsigmoid),
    nn.LeakyReLU: _module_attr(_leaky_relu, "negative_slope"),
    nn.ELU: _module_attr(_elu, "alpha"),
    nn.Hardtanh: _module_attr(_hardtanh, "min_val", "max_val"),
    nn.PReLU: _prelu_module,
    nn.Softmax: _module_attr(_softmax_like("Softmax"), "dim"),
    nn.LogSoftmax: _module_attr(_softmax_like("LogSoftmax"), "dim"),
    **{t: _max_pool_module for t in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)},
    **{t: _avg_pool_module for t in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)},
    **{t: _adaptive_avg_module for t in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                                         nn.AdaptiveAvgPool3d)},
    **{t: _adaptive_max_module for t in (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                                         nn.AdaptiveMaxPool3d)},
    **{t: _module(_identity) for t in _types("Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
                                              "AlphaDropout", "Identity")},
    nn.Flatten: _flatten_module,
    nn.Unflatten: _module_attr(_unflatten, "dim", "unflattened_size"),
    **{t: _upsample_module for t in (nn.Upsample, nn.UpsamplingNearest2d,
                                     nn.UpsamplingBilinear2d)},
    nn.PixelShuffle: _module_attr(_pixel_shuffle, "upscale_factor"),
}

_ELEMENTWISE = {
    "relu": _RELU,
    "sigmoid": _unary("Sigmoid"),
    "tanh": _unary("Tanh"),
    "exp": _unary("Exp"),
    "sqrt": _unary("Sqrt"),
    "rsqrt": _rsqrt,
    "erf": _unary("Erf"),
    "abs": _unary("Abs"),
    "neg": _neg,
    "pow": _pow,
    "clamp": _clamp,
    "clip": _clamp,
    "softmax": _softmax_like("Softmax"),
    "log_softmax": _softmax_like("LogSoftmax"),
    "add": _binary("Add"),
    "sub": _binary("Sub"),
    "mul": _binary("Mul"),
    "div": _binary("Div"),
    "matmul": _matmul,
    "bmm": _matmul,
    "mean": _reduce("ReduceMean"),
    "sum": _reduce("ReduceSum"),
}

FUNCTION_EMITTERS: dict[Any, Callable[..., Any]] = {
    F.relu: _RELU,
    torch.relu: _RELU,
    F.relu_: _RELU,
    F.relu6: _relu6,
    F.hardtanh: _hardtanh,
    torch.sigmoid: _ELEMENTWISE["sigmoid"],
    F.sigmoid: _ELEMENTWISE["sigmoid"],
    torch.tanh: _ELEMENTWISE["tanh"],
    F.tanh: _ELEMENTWISE["tanh"],
    F.gelu: _gelu,
    F.silu: _silu,
    F.hardswish: _hardswish,
    F.hardsigmoid: _hardsigmoid,
    F.leaky_relu: _leaky_relu,
    F.elu: _elu,
    F.softmax: _ELEMENTWISE["softmax"],
    torch.softmax: _ELEMENTWISE["softmax"],
    F.log_softmax: _ELEMENTWISE["log_softmax"],
    torch.exp: _ELEMENTWISE["exp"],
    torch.sqrt: _ELEMENTWISE["sqrt"],
    torch.rsqrt: _rsqrt,
    torch.erf: _ELEMENTWISE["erf"],
    torch.abs: _ELEMENTWISE["abs"],
    torch.neg: _neg,
    operator.neg: _neg,
    torch.pow: _pow,
    operator.pow: _pow,
    torch.clamp: _clamp,
    torch.clip: _clamp,
    torch.add: _ELEMENTWISE["add"],
    operator.add: _ELEMENTWISE["add"],
    operator.iadd: _ELEMENTWISE["add"],
    torch.sub: _ELEMENTWISE["sub"],
    operator.sub: _ELEMENTWISE["sub"],
    operator.isub: _ELEMENTWISE["sub"],
    torch.mul: _ELEMENTWISE["mul"],
    operator.mul: _ELEMENTWISE["mul"],
    operator.imul: _ELEMENTWISE["mul"],
    torch.div: _ELEMENTWISE["div"],
    operator.truediv: _ELEMENTWISE["div"],
    torch.matmul: _matmul,
    operator.matmul: _matmul,
    torch.bmm: _matmul,
    torch.cat: _cat,
    torch.concat: _cat,
    torch.stack: _stack,
    torch.einsum: _einsum,
    F.linear: _f_linear,
    F.conv1d: _f_conv,
    F.conv2d: _f_conv,
    F.conv3d: _f_conv,
    F.layer_norm: _f_layer_norm,
    F.batch_norm: _f_batch_norm,
    F.group_norm: _group_norm,
    F.pad: _pad,
    F.scaled_dot_product_attention: _sdpa,
    F.max_pool1d: _max_pool,
    F.max_pool2d: _max_pool,
    F.max_pool3d: _max_pool,
    F.avg_pool1d: _avg_pool,
    F.avg_pool2d: _avg_pool,
    F.avg_pool3d: _avg_pool,
    F.adaptive_avg_pool1d: _adaptive_avg,
    F.adaptive_avg_pool2d: _adaptive_avg,
    F.adaptive_avg_pool3d: _adaptive_avg,
    F.adaptive_max_pool1d: _adaptive_max,
    F.adaptive_max_pool2d: _adaptive_max,
    F.adaptive_max_pool3d: _adaptive_max,
    torch.flatten: _flatten,
    torch.reshape: _reshape,
    torch.permute: _permute,
    torch.transpose: _transpose,
    torch.swapaxes: _transpose,
    torch.t: _t,
    torch.squeeze: _squeeze,
    torch.unsqueeze: _unsqueeze,
    torch.chunk: _split,
    torch.split: _split,
    torch.unbind: _unbind,
    operator.getitem: _getitem,
    F.dropout: _identity,
    F.dropout1d: _identity,
    F.dropout2d: _identity,
    F.dropout3d: _identity,
    F.interpolate: _interpolate,
    F.pixel_shuffle: _pixel_shuffle,
    torch.mean: _ELEMENTWISE["mean"],
    torch.sum: _ELEMENTWISE["sum"],
}

METHOD_EMITTERS: dict[str, Callable[..., Any]] = {
    **_ELEMENTWISE,
    "relu_": _RELU,
    "add_": _ELEMENTWISE["add"],
    "sub_": _ELEMENTWISE["sub"],
    "mul_": _ELEMENTWISE["mul"],
    "div_": _ELEMENTWISE["div"],
    "__getitem__": _getitem,
    "view": _reshape,
    "reshape": _reshape,
    "view_as": _reshape_as,
    "reshape_as": _reshape_as,
    "unflatten": _unflatten,
    "flatten": _flatten,
    "permute": _permute,
    "transpose": _transpose,
    "swapaxes": _transpose,
    "t": _t,
    "squeeze": _squeeze,
    "unsqueeze": _unsqueeze,
    "chunk": _split,
    "split": _split,
    "unbind": _unbind,
    "expand": _expand,
    "expand_as": _expand_as,
    "repeat": _repeat,
    "contiguous": _identity,
    "clone": _identity,
    "detach": _identity,
    "to": _cast_recorded,
    "float": _cast_recorded,
    "type_as": _cast_recorded,
}


# emitters that take sizes read from tensors as Dim values (the others get example values)
SIZE_EMITTERS: frozenset[Callable[..., Any]] = frozenset({_reshape, _expand, _unflatten})


def find_emitter(node: fx.Node, mod: nn.Module | None) -> Callable[..., Any] | None:
    """The emitter of ``node`` (``mod``: its module for ``call_module``), or None."""
    if mod is not None:
        if is_stub(mod) is not None:
            return _module(_identity)
        return MODULE_EMITTERS.get(type(mod))
    if node.op == "call_function":
        return FUNCTION_EMITTERS.get(node.target)
    if node.op == "call_method":
        return METHOD_EMITTERS.get(str(node.target))
    return None


def supported_ops() -> Sequence[str]:
    """Names of everything with an emitter (for docs and error messages)."""
    mods = [t.__name__ for t in MODULE_EMITTERS]
    funcs = [getattr(f, "__name__", str(f)) for f in FUNCTION_EMITTERS]
    return sorted(set(mods) | set(funcs) | set(METHOD_EMITTERS))
