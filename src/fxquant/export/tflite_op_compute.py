"""TFLite handlers of the ops with weights or a reduction over a dimension: CONV_2D /
DEPTHWISE_CONV_2D, TRANSPOSE_CONV, FULLY_CONNECTED, BATCH_MATMUL, attention (float32) and
embedding (GATHER).

Integer kernels follow LiteRT's quantization spec: int8 symmetric per-channel weights
(CONV_2D / FULLY_CONNECTED axis 0, DEPTHWISE_CONV_2D axis 3, TRANSPOSE_CONV axis 0), bias int32
(int64 for 16x8) at ``input_scale * weight_scale``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..errors import ExportError, bounded
from .tflite_lower import (
    NHWC,
    Const,
    Dyn,
    Grid,
    Lowerer,
    identity,
    permuted,
)
from .tflite_op_support import (
    ACT,
    PAD_SAME,
    PAD_VALID,
    conv_padding,
    decide,
    dyn_input,
    float_inputs,
    on_output_grid,
    operand_tensor,
    out_tensor,
    pair,
)
from .tflite_writer import TFLQuant

__all__ = ["conv2d", "conv_transpose2d", "embedding", "linear", "matmul", "sdpa"]


def _bias(L: Lowerer, n: fx.Node, b: Any, channels: int, in_grid: Grid, w_scale: np.ndarray
          ) -> int:
    """int32 (int64 for 16-bit activations) bias at ``input_scale * weight_scale``."""
    bias = L.value(b) if b is not None else None
    values = (bias.value.detach().double().reshape(-1) if isinstance(bias, Const)
              else torch.zeros(channels, dtype=torch.float64))
    scale = np.float32(in_grid.scale) * w_scale.astype(np.float32)
    codes = torch.round(values / torch.from_numpy(scale.astype(np.float64)))
    wide = in_grid.dtype == "INT16"
    limit = 2**63 - 1 if wide else 2**31 - 1
    if bool((codes.abs() > limit).any()):
        L.warnings.append(f"{n.name}: bias saturates the int32 accumulator range")
        codes = codes.clamp(-limit, limit)
    dtype = "INT64" if wide else "INT32"
    return L.const(f"{n.name}_bias", codes.to(torch.int64),
                   dtype, TFLQuant(tuple(float(s) for s in scale), (0,) * len(scale)))


def _weight(L: Lowerer, n: fx.Node, w: Any, layout: tuple[int, ...], axis: int
            ) -> tuple[int, np.ndarray] | None:
    """Integer weight tensor (codes permuted by ``layout``, per-channel axis ``axis``) and the
    per-output-channel scales; ``None`` when the weight is not quantized to int8 with zero
    point 0."""
    c = L.value(w)
    if not isinstance(c, Const) or c.qp is None:
        return None
    qp = c.qp
    if qp.dtype.bits > 8 or not qp.dtype.signed or bool((qp.zero_point != 0).any()):
        raise ExportError(
            f"{n.name}: weight quantizer {bounded(c.source)!r} is {qp.dtype} with zero point "
            f"{qp.zero_point.reshape(-1)[:1].tolist()}; TFLite's int8 kernels take symmetric int8 "
            "weights with zero point 0 (prepare with backend='tflite')"
        )
    codes = qp.quantize(c.value.detach().float()).to(torch.int64).permute(layout)
    scale = qp.scale.detach().double().reshape(-1).numpy()
    channels = codes.shape[axis]
    if scale.size == 1:
        quant = TFLQuant((float(scale[0]),), (0,))
        scale = np.full(channels, scale[0])
    else:
        quant = TFLQuant(tuple(float(s) for s in scale), (0,) * scale.size, axis)
    return L.const(f"{n.name}_weight", codes, "INT8", quant), scale


def _float_weight(L: Lowerer, n: fx.Node, w: Any, layout: tuple[int, ...]) -> int:
    c = L.value(w)
    if not isinstance(c, Const):
        raise ExportError(f"{n.name}: the weight must be a constant for TFLite")
    return L.const(f"{n.name}_weight", c.float_value().permute(layout), "FLOAT32")


def _float_bias(L: Lowerer, n: fx.Node, b: Any, channels: int) -> int:
    c = L.value(b) if b is not None else None
    v = c.value.detach().float() if isinstance(c, Const) else torch.zeros(channels)
    return L.const(f"{n.name}_bias", v, "FLOAT32")


# -- weighted ops --------------------------------------------------------------------------------
def conv2d(L: Lowerer, n: fx.Node) -> Dyn:
    args = list(n.args) + [None] * (7 - len(n.args))
    x_node, w_node, b_node = args[0], args[1], args[2]
    stride = pair(args[3] if args[3] is not None else n.kwargs.get("stride", 1))
    padding_arg = args[4] if args[4] is not None else n.kwargs.get("padding", 0)
    dilation = pair(args[5] if args[5] is not None else n.kwargs.get("dilation", 1))
    groups = int(args[6] if args[6] is not None else n.kwargs.get("groups", 1))
    x = dyn_input(L, x_node, n)
    if x.rank != 4:
        raise ExportError(f"{n.name}: only 2-D convolutions (4-D inputs) have a TFLite form")
    w = L.value(w_node)
    if not isinstance(w, Const):
        raise ExportError(f"{n.name}: the convolution weight must be a constant for TFLite")
    cout, cin_g, kh, kw = (int(s) for s in w.value.shape)
    cin = x.shape[1]
    if isinstance(padding_arg, str):
        if padding_arg == "valid":
            padding_arg = (0, 0)
        else:
            padding_arg = ((dilation[0] * (kh - 1)) // 2, (dilation[1] * (kw - 1)) // 2)
    padding = pair(padding_arg)
    depthwise = groups > 1 and groups == cin and cin_g == 1
    if groups > 1 and not depthwise:
        raise ExportError(
            f"{n.name}: a grouped convolution (groups={groups}, not depthwise) has no TFLite "
            "kernel; split it into per-group convolutions in the model"
        )
    grid, covered, act, why = decide(L, n, [x], fusable=True)
    xq, pad = conv_padding(L, n, x, (kh, kw), stride, dilation, padding)
    out_shape = L.shape(n)
    layout = (1, 2, 3, 0) if depthwise else (0, 2, 3, 1)  # [1,kh,kw,C*M] / [O,kh,kw,I]
    wq = _weight(L, n, w_node, layout, 3 if depthwise else 0) if grid is not None else None
    if grid is not None and wq is None:
        grid, covered, act, why = None, [], "NONE", "its weight is not quantized"
    if grid is None:
        xq = float_inputs(L, n, [xq], why)[0]
        wt = _float_weight(L, n, w_node, layout)
        bt = _float_bias(L, n, b_node, cout)
        out = out_tensor(L, n, out_shape, NHWC, None, [], n.name)
    else:
        assert x.grid is not None and wq is not None
        wt, wscale = wq
        bt = _bias(L, n, b_node, cout, x.grid, wscale)
        out = out_tensor(L, n, out_shape, NHWC, grid, covered)
    opts: dict[str, Any] = {"Padding": pad, "StrideW": stride[1], "StrideH": stride[0],
                            "DilationWFactor": dilation[1], "DilationHFactor": dilation[0],
                            "FusedActivationFunction": ACT[act]}
    if depthwise:
        opts["DepthMultiplier"] = cout // cin
        L.emit("DEPTHWISE_CONV_2D", [L.get(xq, NHWC), wt, bt], [out.tensor],
               ("DepthwiseConv2DOptions", opts))
    else:
        L.emit("CONV_2D", [L.get(xq, NHWC), wt, bt], [out.tensor], ("Conv2DOptions", opts))
    return out


def conv_transpose2d(L: Lowerer, n: fx.Node) -> Dyn:
    args = list(n.args) + [None] * (8 - len(n.args))
    x = dyn_input(L, args[0], n)
    w = L.value(args[1])
    stride = pair(args[3] if args[3] is not None else 1)
    padding = pair(args[4] if args[4] is not None else 0)
    out_pad = pair(args[5] if args[5] is not None else 0)
    groups = int(args[6] if args[6] is not None else 1)
    dilation = pair(args[7] if args[7] is not None else 1)
    if x.rank != 4 or not isinstance(w, Const) or groups != 1 or dilation != (1, 1):
        raise ExportError(f"{n.name}: only 2-D, ungrouped, undilated transposed convolutions "
                          "with a constant weight have a TFLite form")
    _, cout, kh, kw = (int(s) for s in w.value.shape)
    out_shape = L.shape(n)
    h, wd = x.shape[2], x.shape[3]
    if padding == (0, 0) and out_pad == (0, 0):
        pad = PAD_VALID
    elif all(o == sz * s for o, sz, s in zip(out_shape[2:], (h, wd), stride, strict=True)) and all(
            p == (k - s) // 2 and (k - s) >= 0 for p, k, s in zip(padding, (kh, kw), stride,
                                                                  strict=True)):
        pad = PAD_SAME
    else:
        raise ExportError(f"{n.name}: padding {padding} / output_padding {out_pad} has no "
                          "TFLite TRANSPOSE_CONV form")
    grid, covered, act, why = decide(L, n, [x], fusable=True)
    layout = (1, 2, 3, 0)  # [Cin, Cout, kh, kw] -> [Cout, kh, kw, Cin]
    wq = None
    if grid is not None:
        c = L.value(args[1])
        if c.qp is not None and c.qp.per_channel and c.qp.axis != 1:
            raise ExportError(f"{n.name}: transposed-conv weight must be per channel on axis 1")
        wq = _weight(L, n, args[1], layout, 0)
        if wq is None:
            grid, covered, act, why = None, [], "NONE", "its weight is not quantized"
    shape_t = L.int_const(f"{n.name}_output_shape", permuted(out_shape, NHWC))
    if grid is None:
        xq = float_inputs(L, n, [x], why)[0]
        wt = _float_weight(L, n, args[1], layout)
        bt = _float_bias(L, n, args[2], cout)
        out = out_tensor(L, n, out_shape, NHWC, None, [], n.name)
    else:
        assert wq is not None and x.grid is not None
        xq = x
        wt, wscale = wq
        bt = _bias(L, n, args[2], cout, x.grid, wscale)
        out = out_tensor(L, n, out_shape, NHWC, grid, covered)
    L.emit("TRANSPOSE_CONV", [shape_t, wt, L.get(xq, NHWC), bt], [out.tensor],
           ("TransposeConvOptions", {"Padding": pad, "StrideW": stride[1],
                                     "StrideH": stride[0],
                                     "FusedActivationFunction": ACT[act]}))
    return out


def linear(L: Lowerer, n: fx.Node) -> Dyn:
    x = dyn_input(L, n.args[0], n)
    w_node = n.args[1]
    b_node = n.args[2] if len(n.args) > 2 else n.kwargs.get("bias")
    w = L.value(w_node)
    if not isinstance(w, Const):
        return _matmul_dynamic(L, n, x, dyn_input(L, w_node, n), transpose_b=True, bias=b_node)
    cout = int(w.value.shape[0])
    grid, covered, act, why = decide(L, n, [x], fusable=True)
    wq = _weight(L, n, w_node, (0, 1), 0) if grid is not None else None
    if grid is not None and wq is None:
        grid, covered, act, why = None, [], "NONE", "its weight is not quantized"
    xt = L.as_layout(x, identity(x.rank))
    out_shape = L.shape(n)
    if grid is None:
        xt = float_inputs(L, n, [xt], why)[0]
        wt = _float_weight(L, n, w_node, (0, 1))
        bt = _float_bias(L, n, b_node, cout)
        out = out_tensor(L, n, out_shape, identity(len(out_shape)), None, [], n.name)
    else:
        assert wq is not None and x.grid is not None
        wt, wscale = wq
        bt = _bias(L, n, b_node, cout, x.grid, wscale)
        out = out_tensor(L, n, out_shape, identity(len(out_shape)), grid, covered)
    L.emit("FULLY_CONNECTED", [xt.tensor, wt, bt], [out.tensor],
           ("FullyConnectedOptions", {"FusedActivationFunction": ACT[act],
                                      "KeepNumDims": x.rank > 2}))
    return out


def _matmul_dynamic(L: Lowerer, n: fx.Node, a: Dyn, b: Dyn, transpose_b: bool = False,
                    bias: Any = None) -> Dyn:
    if bias is not None and L.value(bias) is not None:
        raise ExportError(f"{n.name}: F.linear with a run-time weight and a bias has no TFLite "
                          "form")
    grid, covered, _, why = decide(L, n, [a, b])
    a = L.as_layout(a, identity(a.rank))
    b = L.as_layout(b, identity(b.rank))
    out_shape = L.shape(n)
    if grid is None:
        a, b = float_inputs(L, n, [a, b], why)
    out = out_tensor(L, n, out_shape, identity(len(out_shape)), grid, covered,
               None if grid is not None else n.name)
    L.emit("BATCH_MATMUL", [a.tensor, b.tensor], [out.tensor],
           ("BatchMatMulOptions", {"AdjX": False, "AdjY": transpose_b}))
    return out


def matmul(L: Lowerer, n: fx.Node) -> Dyn:
    a, b = L.value(n.args[0]), L.value(n.args[1])
    if isinstance(a, Dyn) and isinstance(b, Dyn):
        if a.rank < 2 or b.rank < 2:
            raise ExportError(f"{n.name}: matmul of vectors has no TFLite form")
        return _matmul_dynamic(L, n, a, b)
    if isinstance(a, Dyn) and isinstance(b, Const) and b.value.dim() == 2:
        # x @ W == linear(x, W^T): FULLY_CONNECTED with the transposed constant
        const = Const(b.value.t(), None if b.qp is None or b.qp.per_channel else b.qp, b.source)
        L.values[n.args[1]] = const
        try:
            return linear(L, n)
        finally:
            L.values[n.args[1]] = b
    raise ExportError(f"{n.name}: matmul with a constant left operand has no TFLite form")


def sdpa(L: Lowerer, n: fx.Node) -> Dyn:
    """``F.scaled_dot_product_attention`` in float32: BATCH_MATMUL (adj_y), MUL by the scale,
    [ADD the mask], SOFTMAX, BATCH_MATMUL."""
    q, k, v = (dyn_input(L, a, n) for a in n.args[:3])
    mask = n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask")
    dropout = n.args[4] if len(n.args) > 4 else n.kwargs.get("dropout_p", 0.0)
    causal = n.args[5] if len(n.args) > 5 else n.kwargs.get("is_causal", False)
    scale = n.kwargs.get("scale", n.args[6] if len(n.args) > 6 else None)
    if dropout or n.kwargs.get("enable_gqa"):
        raise ExportError(f"{n.name}: scaled_dot_product_attention with dropout / GQA has no "
                          "TFLite form")
    grid, covered, _ = L.output_grid(n, False)
    if L.quantize:
        L.note_float(n, "attention (scaled_dot_product_attention) runs in float32")
    qf, kf, vf = (L.as_layout(L.dequantized(t), identity(t.rank)) for t in (q, k, v))
    scale = float(scale) if scale is not None else 1.0 / float(np.sqrt(q.shape[-1]))
    s_shape = (*q.shape[:-1], k.shape[-2])
    scores, scaled = L.new(f"{n.name}_scores", s_shape, None), L.new(f"{n.name}_scaled", s_shape,
                                                                      None)
    L.emit("BATCH_MATMUL", [qf.tensor, kf.tensor], [scores],
           ("BatchMatMulOptions", {"AdjX": False, "AdjY": True}))
    L.emit("MUL", [scores, L.const(f"{n.name}_scale", np.float32(scale), "FLOAT32")], [scaled],
           ("MulOptions", {}))
    cur = scaled
    add: Any = None
    if causal:
        tq, tk = s_shape[-2], s_shape[-1]
        add = Const(torch.full((tq, tk), float("-inf")).triu(1).clamp(min=-1e30))
    elif mask is not None:
        add = L.value(mask)
        if isinstance(add, Const) and add.value.dtype == torch.bool:
            add = Const(torch.where(add.value, 0.0, -1e30))
    if add is not None:
        masked = L.new(f"{n.name}_masked", s_shape, None)
        other = (L.get(L.dequantized(add)) if isinstance(add, Dyn) else
                 operand_tensor(L, add, identity(len(s_shape)), len(s_shape), None,
                                f"{n.name}_mask"))
        L.emit("ADD", [cur, other], [masked], ("AddOptions", {}))
        cur = masked
    probs = L.new(f"{n.name}_probs", s_shape, None)
    L.emit("SOFTMAX", [cur], [probs], ("SoftmaxOptions", {"Beta": 1.0}))
    o_shape = L.shape(n)
    out_t = L.new(n.name, o_shape, None)
    L.emit("BATCH_MATMUL", [probs, vf.tensor], [out_t],
           ("BatchMatMulOptions", {"AdjX": False, "AdjY": False}))
    out = Dyn(out_t, identity(len(o_shape)), None, o_shape)
    return on_output_grid(L, out, grid, covered)


def embedding(L: Lowerer, n: fx.Node) -> Dyn:
    """``F.embedding(indices, weight)`` as GATHER of the (fake-quantized) float table; the
    output quantizer, if any, is a QUANTIZE after it."""
    w, idx = L.value(n.args[0]), dyn_input(L, n.args[1], n)
    if not isinstance(w, Const):
        raise ExportError(f"{n.name}: the embedding table must be a constant for TFLite")
    table = L.const(f"{n.name}_table", w.float_value(), "FLOAT32")
    shape = L.shape(n)
    out = L.new(n.name, shape, None)
    L.emit("GATHER", [table, L.get(idx)], [out], ("GatherOptions", {"Axis": 0}))
    return Dyn(out, identity(len(shape)), None, shape)
