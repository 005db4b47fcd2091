"""ONNX emitters, part 2: layers with parameters (conv, linear, embedding, norms), pooling and
resizing.  The emitter protocol is described in :mod:`fxquant.export.onnx_ops`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from onnx import TensorProto
from torch import nn

from .. import nn as qnn
from .onnx_graph import TensorRef
from .onnx_ops import UnsupportedOp, _chain, _tup

__all__: list[str] = []


# -- weighted -------------------------------------------------------------------------------------
def _weight_shape(w: Any) -> tuple[int, ...]:
    v = getattr(w, "value", None)
    return tuple(v.shape) if v is not None else tuple(w.shape)


def _conv_pads(padding: Any, kernel: list[int], dilation: list[int], n: int) -> list[int]:
    if padding == "valid":
        return [0] * (2 * n)
    if padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
        return [t // 2 for t in total] + [t - t // 2 for t in total]
    p = _tup(padding, n)
    return p + p


_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _conv(cx, x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    x = cx.ref(x)
    n = x.rank - 2
    kernel = list(_weight_shape(w)[2:])
    d = _tup(dilation, n)
    pads = _conv_pads(padding, kernel, d, n)
    if padding_mode != "zeros":
        mode = _PAD_MODES.get(padding_mode)
        if mode is None or (mode == "wrap" and cx.opset < 19):
            raise UnsupportedOp(f"padding_mode={padding_mode!r} needs opset >= 19 (Pad wrap)")
        full = [0, 0, *pads[:n], 0, 0, *pads[n:]]
        pn = cx.b.int64s(f"{cx.op}.pads", full)
        x = TensorRef(cx.b.one("Pad", [x.name, pn], f"{cx.op}_pad", mode=mode), None, x.elem_type)
        pads = [0] * (2 * n)
    wref, bref = cx.weight_bias(w, bias, x, kind="conv")
    ins = [x.name, wref.name] + ([bref.name] if bref is not None else [])
    return cx.final("Conv", ins, kernel_shape=kernel, strides=_tup(stride, n), pads=pads,
                    dilations=d, group=int(groups))


def _conv_module(cx, m, x):
    if isinstance(m, qnn.ConvBnNd):
        with torch.no_grad():
            w, b = m.folded_weight_and_bias()
    else:
        w, b = m.weight, m.bias
    b = None if b is None else b.detach()
    return _conv(cx, x, cx.module_weight(m, w), b, m.stride, m.padding, m.dilation, m.groups,
                 m.padding_mode)


def _conv_transpose_module(cx, m, x, output_size=None):
    x = cx.ref(x)
    n = x.rank - 2
    k, s, p, d = list(m.kernel_size), _tup(m.stride, n), _tup(m.padding, n), _tup(m.dilation, n)
    out_sp, in_sp = cx.out_shape[2:], x.shape[2:]
    out_pad = [o - ((i - 1) * s_ - 2 * p_ + d_ * (k_ - 1) + 1)
               for o, i, s_, p_, d_, k_ in zip(out_sp, in_sp, s, p, d, k, strict=True)]
    w = cx.module_weight(m, m.weight)
    b = None if m.bias is None else m.bias.detach()
    wref, bref = cx.weight_bias(w, b, x, kind="conv_transpose", groups=m.groups)
    ins = [x.name, wref.name] + ([bref.name] if bref is not None else [])
    return cx.final("ConvTranspose", ins, kernel_shape=k, strides=s, pads=p + p, dilations=d,
                    group=int(m.groups), output_padding=out_pad if any(out_pad) else None)


def _linear(cx, x, weight, bias=None):
    x = cx.ref(x)
    if x.rank == 2:
        wref, bref = cx.weight_bias(weight, bias, x, kind="gemm")
        ins = [x.name, wref.name] + ([bref.name] if bref is not None else [])
        return cx.final("Gemm", ins, transB=1)
    if isinstance(weight, TensorRef):  # computed weight [out, in]: transpose in the graph
        wt = cx.b.one("Transpose", [weight.name], f"{cx.op}_weight_t", perm=[1, 0])
        bref = cx.ref(bias) if bias is not None else None
    else:
        wref, bref = cx.weight_bias(weight, bias, x, kind="matmul")
        wt = wref.name
    if bref is None:
        return cx.final("MatMul", [x.name, wt])
    mm = cx.b.one("MatMul", [x.name, wt], f"{cx.op}_matmul")
    return cx.final("Add", [mm, bref.name])


def _linear_module(cx, m, x):
    b = None if m.bias is None else m.bias.detach()
    return _linear(cx, x, cx.module_weight(m, m.weight), b)


def _f_linear(cx, x, weight, bias=None):
    return _linear(cx, x, weight, bias)


def _f_conv(cx, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return _conv(cx, x, weight, bias, stride, padding, dilation, groups)


def _embedding_module(cx, m, idx):
    wref, _ = cx.weight_bias(cx.module_weight(m, m.weight), None, None, kind="plain")
    return cx.final("Gather", [wref.name, cx.ref(idx).name], axis=0)


# -- normalization --------------------------------------------------------------------------------
def _layer_norm(cx, x, n_axes: int, w: TensorRef | None, b: TensorRef | None, eps: float):
    x = cx.ref(x)
    if cx.opset >= 17:
        if w is None:
            w = TensorRef(cx.b.const(f"{cx.op}.ones", np.ones(x.shape[-n_axes:], np.float32)),
                          x.shape[-n_axes:])
        ins = [x.name, w.name] + ([b.name] if b is not None else [])
        return cx.final("LayerNormalization", ins, axis=-n_axes, epsilon=float(eps))
    bd = cx.b
    axes = list(range(x.rank - n_axes, x.rank))
    mean = bd.one("ReduceMean", [x.name], f"{cx.op}_mean", axes=axes, keepdims=1)
    diff = bd.one("Sub", [x.name, mean], f"{cx.op}_centered")
    var = bd.one("ReduceMean", [bd.one("Mul", [diff, diff])], f"{cx.op}_var", axes=axes,
                 keepdims=1)
    std = bd.one("Sqrt", [bd.one("Add", [var, cx.scalar(eps, x).name])], f"{cx.op}_std")
    steps: list[tuple[str, list[str], dict[str, Any]]] = [("Div", [std], {})]
    if w is not None:
        steps.append(("Mul", [w.name], {}))
    if b is not None:
        steps.append(("Add", [b.name], {}))
    return _chain(cx, diff, steps)


def _layer_norm_module(cx, m, x):
    path = cx.module_path()
    w, b = cx.param(path, "weight", m.weight), cx.param(path, "bias", m.bias)
    return _layer_norm(cx, x, len(m.normalized_shape), w, b, m.eps)


def _f_layer_norm(cx, x, normalized_shape, weight=None, bias=None, eps=1e-5):
    w = cx.ref(weight) if weight is not None else None
    b = cx.ref(bias) if bias is not None else None
    return _layer_norm(cx, x, len(_tup(normalized_shape, 1)), w, b, eps)


def _batch_norm_module(cx, m, x):
    if m.running_mean is None:
        raise UnsupportedOp("BatchNorm without running statistics uses batch statistics")
    path = cx.module_path()
    c = m.num_features
    w = m.weight if m.weight is not None else torch.ones(c)
    b = m.bias if m.bias is not None else torch.zeros(c)
    ins = [cx.ref(x).name] + [
        cx.param(path, a, t).name
        for a, t in (("weight", w), ("bias", b), ("running_mean", m.running_mean),
                     ("running_var", m.running_var))
    ]
    return cx.final("BatchNormalization", ins, epsilon=float(m.eps))


def _f_batch_norm(cx, x, running_mean=None, running_var=None, weight=None, bias=None,
                  training=False, momentum=0.1, eps=1e-5):
    """``F.batch_norm`` with running statistics in eval mode -> BatchNormalization."""
    if training or running_mean is None or running_var is None:
        raise UnsupportedOp("F.batch_norm with batch statistics (training=True or no running "
                            "statistics); prepare the model in eval mode")
    x = cx.ref(x)
    mean, var = cx.ref(running_mean), cx.ref(running_var)
    c = mean.shape[0] if mean.shape else x.shape[1]
    w = cx.ref(weight) if weight is not None else TensorRef(
        cx.b.const(f"{cx.op}.ones", np.ones(c, np.float32)), (c,))
    b = cx.ref(bias) if bias is not None else TensorRef(
        cx.b.const(f"{cx.op}.zeros", np.zeros(c, np.float32)), (c,))
    return cx.final("BatchNormalization", [x.name, w.name, b.name, mean.name, var.name],
                    epsilon=float(eps))


def _instance_norm_module(cx, m, x):
    if m.track_running_stats:
        raise UnsupportedOp("InstanceNorm with track_running_stats=True")
    x = cx.ref(x)
    c = x.shape[1]
    path = cx.module_path()
    w = cx.param(path, "weight", m.weight if m.weight is not None else torch.ones(c))
    b = cx.param(path, "bias", m.bias if m.bias is not None else torch.zeros(c))
    return cx.final("InstanceNormalization", [x.name, w.name, b.name], epsilon=float(m.eps))


def _prelu_module(cx, m, x):
    x = cx.ref(x)
    slope = m.weight.detach()
    if slope.numel() > 1:
        slope = slope.reshape(-1, *([1] * (x.rank - 2)))
    return cx.final("PRelu", [x.name, cx.param(cx.module_path(), "weight", slope).name])


# -- pooling --------------------------------------------------------------------------------------
def _max_pool(cx, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
              return_indices=False):
    if return_indices:
        raise UnsupportedOp("return_indices=True")
    x = cx.ref(x)
    n = x.rank - 2
    k = _tup(kernel_size, n)
    s = _tup(stride, n) if stride not in (None, (), []) else k
    p, d = _tup(padding, n), _tup(dilation, n)
    return cx.final("MaxPool", [x.name], kernel_shape=k, strides=s, pads=p + p,
                    dilations=d if any(v != 1 for v in d) else None, ceil_mode=int(ceil_mode))


def _avg_pool(cx, x, kernel_size, stride=None, padding=0, ceil_mode=False,
              count_include_pad=True, divisor_override=None):
    if divisor_override is not None:
        raise UnsupportedOp("divisor_override")
    x = cx.ref(x)
    n = x.rank - 2
    k = _tup(kernel_size, n)
    s = _tup(stride, n) if stride not in (None, (), []) else k
    p = _tup(padding, n)
    return cx.final("AveragePool", [x.name], kernel_shape=k, strides=s, pads=p + p,
                    ceil_mode=int(ceil_mode), count_include_pad=int(count_include_pad))


def _adaptive(global_op: str, pool_op: str) -> Callable[..., Any]:
    def emit(cx, x, output_size, *_, **__):
        x = cx.ref(x)
        n = x.rank - 2
        in_sp = list(x.shape[2:])
        sizes = list(output_size) if isinstance(output_size, (tuple, list)) else [output_size] * n
        out = [i if o is None else int(o) for i, o in zip(in_sp, sizes, strict=True)]
        if all(o == 1 for o in out):
            return cx.final(global_op, [x.name])
        if out == in_sp:
            return x
        if any(i % o for i, o in zip(in_sp, out, strict=True)):
            raise UnsupportedOp(f"adaptive pooling {in_sp} -> {out} (sizes not divisible)")
        k = [i // o for i, o in zip(in_sp, out, strict=True)]
        return cx.final(pool_op, [x.name], kernel_shape=k, strides=k)

    return emit


_adaptive_avg = _adaptive("GlobalAveragePool", "AveragePool")
_adaptive_max = _adaptive("GlobalMaxPool", "MaxPool")


def _max_pool_module(cx, m, x):
    return _max_pool(cx, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                     m.return_indices)


def _avg_pool_module(cx, m, x):
    return _avg_pool(cx, x, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                     m.count_include_pad, getattr(m, "divisor_override", None))


def _adaptive_avg_module(cx, m, x):
    return _adaptive_avg(cx, x, m.output_size)


def _adaptive_max_module(cx, m, x):
    if m.return_indices:
        raise UnsupportedOp("return_indices=True")
    return _adaptive_max(cx, x, m.output_size)


def _resize(cx, x, mode: str, align_corners: bool | None, antialias: bool = False):
    if antialias:
        raise UnsupportedOp("antialias=True")
    x = cx.ref(x)
    out = list(cx.out_shape)
    if cx.dynamic_batch and cx.batch is not None and x.shape[0] == cx.batch:
        shape = cx.b.one("Shape", [x.name], f"{cx.op}_shape")
        i64 = cx.b.int64s
        nc = cx.b.one("Slice", [shape, i64(f"{cx.op}.s0", [0]), i64(f"{cx.op}.s1", [2])],
                      f"{cx.op}_nc")
        sizes = cx.b.one("Concat", [nc, i64(f"{cx.op}.spatial", out[2:])], f"{cx.op}_sizes",
                         axis=0)
    else:
        sizes = cx.b.int64s(f"{cx.op}.sizes", out)
    if mode == "nearest":
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                 "nearest_mode": "floor"}
    elif mode == "nearest-exact":
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
                 "nearest_mode": "round_prefer_ceil"}
    elif mode in ("linear", "bilinear", "trilinear", "bicubic"):
        attrs = {"mode": "cubic" if mode == "bicubic" else "linear",
                 "coordinate_transformation_mode": "align_corners" if align_corners
                 else "pytorch_half_pixel"}
        if mode == "bicubic":
            attrs["cubic_coeff_a"] = -0.75
    else:
        raise UnsupportedOp(f"interpolation mode {mode!r}")
    return cx.final("Resize", [x.name, "", "", sizes], **attrs)


def _interpolate(cx, x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                 recompute_scale_factor=None, antialias=False):
    return _resize(cx, x, mode, align_corners, antialias)


def _upsample_module(cx, m, x):
    mode = getattr(m, "mode", "nearest")
    align = getattr(m, "align_corners", None)
    if isinstance(m, nn.UpsamplingBilinear2d):
        align = True
    return _resize(cx, x, mode, align)


def _pixel_shuffle(cx, x, upscale_factor):
    return cx.final("DepthToSpace", [cx.ref(x).name], blocksize=int(upscale_factor), mode="CRD")


# -- attention, group norm, padding ---------------------------------------------------------------
def _sdpa(cx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
          enable_gqa=False):
    """``F.scaled_dot_product_attention`` (inference: no dropout) as its math, in float:
    ``softmax(q @ k^T * scale + mask) @ v``.  fxquant quantizes the op's inputs and output only,
    so nothing inside is quantized (as in the simulation)."""
    if enable_gqa:
        raise UnsupportedOp("scaled_dot_product_attention with enable_gqa=True")
    q, k, v = cx.ref(query), cx.ref(key), cx.ref(value)
    bd = cx.b
    perm = list(range(k.rank))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    kt = bd.one("Transpose", [k.name], f"{cx.op}_key_t", perm=perm)
    scores = bd.one("MatMul", [q.name, kt], f"{cx.op}_scores")
    s = 1.0 / float(q.shape[-1]) ** 0.5 if scale is None else float(scale)
    scores = bd.one("Mul", [scores, cx.scalar(s, q, f"{cx.op}.scale").name], f"{cx.op}_scaled")
    bool_mask = attn_mask is not None and cx.ref(attn_mask).elem_type == TensorProto.BOOL
    masked = is_causal or bool_mask
    neg_inf = cx.scalar(float("-inf"), q, f"{cx.op}.neg_inf").name if masked else ""
    if is_causal:
        n_q, n_k = q.shape[-2], k.shape[-2]
        keep = np.tril(np.ones((n_q, n_k), dtype=bool))
        keep_n = bd.const(f"{cx.op}.causal_mask", keep, TensorProto.BOOL)
        scores = bd.one("Where", [keep_n, scores, neg_inf], f"{cx.op}_causal")
    if attn_mask is not None:
        m = cx.ref(attn_mask)
        if m.elem_type == TensorProto.BOOL:
            scores = bd.one("Where", [m.name, scores, neg_inf], f"{cx.op}_masked")
        else:
            scores = bd.one("Add", [scores, m.name], f"{cx.op}_masked")
    probs = bd.one("Softmax", [scores], f"{cx.op}_probs", axis=-1)
    return cx.final("MatMul", [probs, v.name])


def _group_norm(cx, x, num_groups, weight=None, bias=None, eps=1e-5):
    """``F.group_norm`` as Reshape (N, G, -1) -> InstanceNormalization -> Reshape back -> affine
    (opset 13; GroupNormalization needs 18 and changed meaning in 21)."""
    x = cx.ref(x)
    bd = cx.b
    g = int(num_groups)
    ones = bd.const(f"{cx.op}.group_scale", np.ones(g, np.float32))
    zeros = bd.const(f"{cx.op}.group_bias", np.zeros(g, np.float32))
    grouped = bd.one("Reshape", [x.name, bd.int64s(f"{cx.op}.group_shape", [0, g, -1])],
                     f"{cx.op}_grouped")
    normed = bd.one("InstanceNormalization", [grouped, ones, zeros], f"{cx.op}_normalized",
                    epsilon=float(eps))
    shape = bd.one("Shape", [x.name], f"{cx.op}_shape")
    steps: list[tuple[str, list[str], dict[str, Any]]] = [("Reshape", [shape], {})]
    affine = bd.int64s(f"{cx.op}.affine_shape", [-1] + [1] * (x.rank - 2))
    for t, op_type in ((weight, "Mul"), (bias, "Add")):
        if t is not None:
            r = bd.one("Reshape", [cx.ref(t).name, affine], f"{cx.op}_{op_type.lower()}_operand")
            steps.append((op_type, [r], {}))
    return _chain(cx, normed, steps)


def _group_norm_module(cx, m, x):
    path = cx.module_path()
    w = cx.param(path, "weight", m.weight) if m.affine else None
    b = cx.param(path, "bias", m.bias) if m.affine else None
    return _group_norm(cx, x, m.num_groups, w, b, m.eps)


def _pad(cx, x, pad, mode="constant", value=None):
    """``F.pad``: torch's ``pad`` lists (begin, end) pairs from the last dim backwards."""
    x = cx.ref(x)
    pad = [int(p) for p in pad]
    n = len(pad) // 2
    begins, ends = [0] * x.rank, [0] * x.rank
    for i in range(n):
        d = x.rank - 1 - i
        begins[d], ends[d] = pad[2 * i], pad[2 * i + 1]
    onnx_mode = "constant" if mode == "constant" else _PAD_MODES.get(mode)
    if onnx_mode is None or (onnx_mode == "wrap" and cx.opset < 19):
        raise UnsupportedOp(f"F.pad mode={mode!r} (circular needs opset >= 19)")
    ins = [x.name, cx.b.int64s(f"{cx.op}.pads", begins + ends)]
    if onnx_mode == "constant" and value:
        ins.append(cx.scalar(float(value), x, f"{cx.op}.value").name)
    return cx.final("Pad", ins, mode=onnx_mode)


def _pad_module(cx, m, x):
    x = cx.ref(x)
    return _pad(cx, x, _tup(m.padding, 2 * (x.rank - 2)), "constant", getattr(m, "value", 0.0))
