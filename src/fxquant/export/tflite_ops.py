"""ATen op -> TFLite handler: the table :func:`lower_node` dispatches on.

Each handler gets the :class:`~fxquant.export.tflite_lower.Lowerer` and the node, emits TFLite
operators and returns the node's value.  The handlers live by family: weights and matmuls in
:mod:`.tflite_op_compute`, elementwise ops and float islands in :mod:`.tflite_op_pointwise`,
data movement and pooling in :mod:`.tflite_op_layout`; what they share in
:mod:`.tflite_op_support`.  Integer kernels follow LiteRT's quantization spec: int8 activations
(asymmetric) or int16 (symmetric, "16x8"), int8 symmetric per-channel weights, int32 bias (int64
for 16x8) at ``input_scale * weight_scale``.
"""

from __future__ import annotations

import operator
from typing import Any

import torch.fx as fx

from ..errors import ExportError, bounded
from .tflite_lower import (
    QDQ,
    Const,
    Dyn,
    Lowerer,
    grid_of,
)
from .tflite_op_compute import conv2d, conv_transpose2d, embedding, linear, matmul, sdpa
from .tflite_op_layout import (
    adaptive_avg_pool2d,
    avg_pool2d,
    cat,
    chunk,
    getitem,
    max_pool2d,
    mean,
    pad,
    permute,
    reshape,
    resize,
    select,
    slice_,
    split,
    unbind,
)
from .tflite_op_pointwise import (
    BINARY,
    batch_norm,
    binary,
    gelu,
    hardsigmoid,
    hardswish,
    layer_norm,
    leaky_relu,
    relu,
    sigmoid,
    silu,
    softmax,
    tanh,
)
from .tflite_op_support import UNSUPPORTED, Handler, aten, tensor_name

__all__ = ["HANDLERS", "lower_node", "UNSUPPORTED"]


def identity_op(L: Lowerer, n: fx.Node) -> Any:
    return L.value(n.args[0])


def qdq(L: Lowerer, n: fx.Node) -> Any:
    v = L.value(n.args[0])
    if not L.quantize:  # the float model: quantizers are dropped
        return v
    qp, path = L.qparams(n)
    if isinstance(v, Const):
        return Const(v.value, qp, path)
    if not isinstance(v, Dyn) or not L.quantize:
        return v
    out = L.quantized(v, grid_of(qp, path), tensor_name(path))
    L.record(out, path)
    return out


HANDLERS: dict[Any, Handler] = {
    aten.conv2d: conv2d,
    aten.convolution: conv2d,
    aten.conv_transpose2d: conv_transpose2d,
    aten.linear: linear,
    aten.matmul: matmul,
    aten.bmm: matmul,
    aten.mm: matmul,
    **{k: binary for k in BINARY},
    aten.relu: relu,
    aten.relu_: relu,
    aten.relu6: relu,
    aten.hardtanh: relu,
    aten.hardtanh_: relu,
    aten.clamp: relu,
    aten.sigmoid: sigmoid,
    aten.sigmoid_: sigmoid,
    aten.tanh: tanh,
    aten.tanh_: tanh,
    aten.hardswish: hardswish,
    aten.hardswish_: hardswish,
    aten.hardsigmoid: hardsigmoid,
    aten.hardsigmoid_: hardsigmoid,
    aten.silu: silu,
    aten.silu_: silu,
    aten.clamp_: relu,
    aten.relu6_: relu,
    aten.gelu: gelu,
    aten.leaky_relu: leaky_relu,
    aten.softmax: softmax,
    aten._softmax: softmax,
    aten.log_softmax: softmax,
    aten.mean: mean,
    aten.adaptive_avg_pool2d: adaptive_avg_pool2d,
    aten.avg_pool2d: avg_pool2d,
    aten.max_pool2d: max_pool2d,
    aten.reshape: reshape,
    aten.view: reshape,
    aten._unsafe_view: reshape,
    aten.reshape_as: reshape,
    aten.view_as: reshape,
    aten.flatten: reshape,
    aten.squeeze: reshape,
    aten.unsqueeze: reshape,
    aten.permute: permute,
    aten.transpose: permute,
    aten.t: permute,
    aten.cat: cat,
    aten.concat: cat,
    aten.constant_pad_nd: pad,
    aten.pad: pad,
    aten.slice: slice_,
    aten.select: select,
    aten.split: split,
    aten.split_with_sizes: split,
    aten.chunk: chunk,
    aten.unbind: unbind,
    aten.upsample_nearest2d: resize,
    aten.upsample_bilinear2d: resize,
    aten.layer_norm: layer_norm,
    aten.embedding: embedding,
    aten.scaled_dot_product_attention: sdpa,
    aten.batch_norm: batch_norm,
    aten._native_batch_norm_legit_no_training: batch_norm,
    aten.dropout: identity_op,
    aten.dropout_: identity_op,
    aten.feature_dropout: identity_op,
    aten.feature_dropout_: identity_op,
    aten.alpha_dropout: identity_op,
    aten.contiguous: identity_op,
    aten.clone: identity_op,
    aten.alias: identity_op,
    aten.detach: identity_op,
    aten.to: identity_op,
    aten.type_as: identity_op,
    aten.lift_fresh_copy: identity_op,
}


def lower_node(L: Lowerer, n: fx.Node) -> Any:
    """Lower one call_function node (its value goes to ``L.values``)."""
    if n.target is QDQ:
        return qdq(L, n)
    if n.target is operator.getitem:
        return getitem(L, n)
    packet = getattr(n.target, "overloadpacket", None)
    handler = HANDLERS.get(packet)
    if handler is None:
        name = getattr(n.target, "__name__", str(n.target))
        raise ExportError(
            f"op {bounded(name)} ({n.name}) has {UNSUPPORTED}; keep it out of the exported "
            "model or rewrite it with supported ops (fxquant.export.tflite_ops.HANDLERS)"
        )
    return handler(L, n)
