"""ATen op -> TFLite operator handlers (the table :func:`lower_node` dispatches on).

Each handler gets the :class:`~fxquant.export.tflite_lower.Lowerer` and the node, emits TFLite
operators and returns the node's value.  Integer kernels follow LiteRT's quantization spec:
int8 activations (asymmetric) or int16 (symmetric, "16x8"), int8 symmetric per-channel weights
(CONV_2D / FULLY_CONNECTED axis 0, DEPTHWISE_CONV_2D axis 3, TRANSPOSE_CONV axis 0), bias int32
(int64 for 16x8) at ``input_scale * weight_scale``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..errors import ExportError, bounded
from .tflite_lower import (
    NHWC,
    QDQ,
    Const,
    Dyn,
    Grid,
    Lowerer,
    grid_of,
    identity,
    invert,
    permuted,
)
from .tflite_writer import TFLQuant

__all__ = ["HANDLERS", "lower_node", "UNSUPPORTED"]

aten = torch.ops.aten
_ACT = {"NONE": 0, "RELU": 1, "RELU6": 3}
_PAD_SAME, _PAD_VALID = 0, 1

UNSUPPORTED = "no TFLite form"

Handler = Callable[[Lowerer, fx.Node], Any]


# -- shared helpers ----------------------------------------------------------------------------
def _dyn(L: Lowerer, a: Any, n: fx.Node) -> Dyn:
    v = L.value(a)
    if not isinstance(v, Dyn):
        raise ExportError(f"{n.name}: expected a run-time tensor input")
    return v


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = list(v)
    return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))


def _decide(L: Lowerer, n: fx.Node, dyns: list[Dyn], fusable: bool = False,
            kernel: bool = True) -> tuple[Grid | None, list[fx.Node], str, str]:
    """``(grid, covered nodes, fused act, why float)`` for an op on ``dyns``."""
    if not L.quantize:
        return None, [], "NONE", ""
    grid, covered, act = L.output_grid(n, fusable)
    if not kernel:
        return None, [], "NONE", "TFLite has no integer kernel for it"
    if any(d.grid is None for d in dyns):
        return None, [], "NONE", "an input is float"
    if grid is None:
        return None, [], "NONE", "its output is not quantized"
    if any(d.grid.dtype != grid.dtype for d in dyns):
        return None, [], "NONE", "inputs and output have different integer types"
    return grid, covered, act, ""


def _out(L: Lowerer, n: fx.Node, shape: tuple[int, ...], perm: tuple[int, ...],
         grid: Grid | None, covered: list[fx.Node], name: str | None = None) -> Dyn:
    """A new output tensor for ``n`` (named after its quantizer when quantized)."""
    if name is None:
        name = L.qparams(covered[-1])[1] if covered else n.name
    t = L.new(_tensor_name(name), permuted(shape, perm), grid)
    d = Dyn(t, perm, grid, shape)
    for c in covered:
        L.values[c] = d
    if covered:
        L.record(d, L.qparams(covered[-1])[1])
    return d


def _tensor_name(path: str) -> str:
    """The TFLite tensor name of a quantizer's tensor: the op's name (``conv1``)."""
    for suffix in (".output_fake_quant", ".activation_post_process"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def _float_inputs(L: Lowerer, n: fx.Node, dyns: list[Dyn], why: str) -> list[Dyn]:
    if L.quantize and why and any(d.grid is not None for d in dyns):
        L.note_float(n, why)
    elif L.quantize and why and L.output_grid(n)[0] is not None:
        L.note_float(n, why)
    return [L.dequantized(d) for d in dyns]


def _operand(L: Lowerer, v: Any, perm: tuple[int, ...], rank: int, grid_dtype: str | None,
             name: str) -> int:
    """A constant (tensor or Python number) as a TFLite tensor in layout ``perm`` (broadcast
    to ``rank`` dims): quantized on its quantizer's grid (or an exact one for a number) when
    ``grid_dtype`` is set, float32 otherwise."""
    if isinstance(v, Const):
        t, qp = v.value.detach(), v.qp
    else:
        t, qp = torch.tensor(float(v)), None
    if t.dim() < rank and t.numel() > 1:
        t = t.reshape((1,) * (rank - t.dim()) + tuple(t.shape))
    if t.dim() == rank:
        t = t.permute(perm)
    if grid_dtype is None:
        fv = qp.fake_quantize(t.float()) if qp is not None and not qp.per_channel else t.float()
        return L.const(name, fv, "FLOAT32")
    if qp is not None and not qp.per_channel:
        g = grid_of(qp, v.source if isinstance(v, Const) else "")
        codes = qp.quantize(t.float()).to(torch.int64) + (g.zero_point - int(qp.zero_point))
        return L.const(name, codes, g.dtype, g.quant())
    # an unquantized constant: an exact symmetric grid for it
    t = t.float()
    amax = float(t.abs().max()) if t.numel() else 0.0
    qmax = 32767 if grid_dtype == "INT16" else 127
    scale = amax / qmax if amax > 0 else 1.0
    codes = torch.round(t / scale).clamp(-qmax, qmax).to(torch.int64)
    return L.const(name, codes, grid_dtype, TFLQuant((scale,), (0,)))


def _same_padding(size: int, k: int, s: int, d: int) -> tuple[int, int, int]:
    """TFLite SAME: ``(output size, pad before, pad after)``."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return out, total // 2, total - total // 2


def _padding(L: Lowerer, n: fx.Node, x: Dyn, k: tuple[int, int], s: tuple[int, int],
             d: tuple[int, int], p: tuple[int, int], ceil_mode: bool = False,
             pad_value_ok: bool = True) -> tuple[Dyn, int]:
    """TFLite padding for torch's symmetric ``p``: SAME when it is the same, else an explicit
    PAD and VALID.  Returns the (maybe padded) NHWC input and the padding enum."""
    h, w = x.shape[2], x.shape[3]
    if p == (0, 0) and not ceil_mode:
        return x, _PAD_VALID
    same = [_same_padding(sz, kk, ss, dd) for sz, kk, ss, dd in zip((h, w), k, s, d, strict=True)]
    outs = [_pool_out(sz, kk, ss, dd, pp, ceil_mode)
            for sz, kk, ss, dd, pp in zip((h, w), k, s, d, p, strict=True)]
    # TFLite SAME windows start at i * stride - pad_before: the same windows as torch's when
    # the output sizes agree and pad_before is torch's padding (SAME ignores / zero-pads the
    # rest exactly as torch's padding does)
    if all(o == so and pb == pp for (so, pb, _), o, pp in zip(same, outs, p, strict=True)):
        return x, _PAD_SAME
    if not pad_value_ok:
        raise ExportError(f"{n.name}: padding {p} has no TFLite form for this op")
    if ceil_mode:
        raise ExportError(f"{n.name}: ceil_mode=True has no TFLite form")
    pads = [[0, 0], [p[0], p[0]], [p[1], p[1]], [0, 0]]
    out = L.new(f"{n.name}_pad", (x.shape[0], h + 2 * p[0], w + 2 * p[1], x.shape[1]), x.grid)
    L.emit("PAD", [L.get(x, NHWC), L.const(f"{n.name}_paddings", np.asarray(pads, np.int32),
                                           "INT32")], [out])
    return Dyn(out, NHWC, x.grid, (x.shape[0], x.shape[1], h + 2 * p[0], w + 2 * p[1])), _PAD_VALID


def _pool_out(size: int, k: int, s: int, d: int, p: int, ceil_mode: bool) -> int:
    num = size + 2 * p - d * (k - 1) - 1
    return (-(-num // s) if ceil_mode else num // s) + 1


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
    stride = _pair(args[3] if args[3] is not None else n.kwargs.get("stride", 1))
    padding_arg = args[4] if args[4] is not None else n.kwargs.get("padding", 0)
    dilation = _pair(args[5] if args[5] is not None else n.kwargs.get("dilation", 1))
    groups = int(args[6] if args[6] is not None else n.kwargs.get("groups", 1))
    x = _dyn(L, x_node, n)
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
    padding = _pair(padding_arg)
    depthwise = groups > 1 and groups == cin and cin_g == 1
    if groups > 1 and not depthwise:
        raise ExportError(
            f"{n.name}: a grouped convolution (groups={groups}, not depthwise) has no TFLite "
            "kernel; split it into per-group convolutions in the model"
        )
    grid, covered, act, why = _decide(L, n, [x], fusable=True)
    xq, pad = _padding(L, n, x, (kh, kw), stride, dilation, padding)
    out_shape = L.shape(n)
    layout = (1, 2, 3, 0) if depthwise else (0, 2, 3, 1)  # [1,kh,kw,C*M] / [O,kh,kw,I]
    wq = _weight(L, n, w_node, layout, 3 if depthwise else 0) if grid is not None else None
    if grid is not None and wq is None:
        grid, covered, act, why = None, [], "NONE", "its weight is not quantized"
    if grid is None:
        xq = _float_inputs(L, n, [xq], why)[0]
        wt = _float_weight(L, n, w_node, layout)
        bt = _float_bias(L, n, b_node, cout)
        out = _out(L, n, out_shape, NHWC, None, [], n.name)
    else:
        assert x.grid is not None and wq is not None
        wt, wscale = wq
        bt = _bias(L, n, b_node, cout, x.grid, wscale)
        out = _out(L, n, out_shape, NHWC, grid, covered)
    opts: dict[str, Any] = {"Padding": pad, "StrideW": stride[1], "StrideH": stride[0],
                            "DilationWFactor": dilation[1], "DilationHFactor": dilation[0],
                            "FusedActivationFunction": _ACT[act]}
    if depthwise:
        opts["DepthMultiplier"] = cout // cin
        L.emit("DEPTHWISE_CONV_2D", [L.get(xq, NHWC), wt, bt], [out.tensor],
               ("DepthwiseConv2DOptions", opts))
    else:
        L.emit("CONV_2D", [L.get(xq, NHWC), wt, bt], [out.tensor], ("Conv2DOptions", opts))
    return out


def conv_transpose2d(L: Lowerer, n: fx.Node) -> Dyn:
    args = list(n.args) + [None] * (8 - len(n.args))
    x = _dyn(L, args[0], n)
    w = L.value(args[1])
    stride = _pair(args[3] if args[3] is not None else 1)
    padding = _pair(args[4] if args[4] is not None else 0)
    out_pad = _pair(args[5] if args[5] is not None else 0)
    groups = int(args[6] if args[6] is not None else 1)
    dilation = _pair(args[7] if args[7] is not None else 1)
    if x.rank != 4 or not isinstance(w, Const) or groups != 1 or dilation != (1, 1):
        raise ExportError(f"{n.name}: only 2-D, ungrouped, undilated transposed convolutions "
                          "with a constant weight have a TFLite form")
    _, cout, kh, kw = (int(s) for s in w.value.shape)
    out_shape = L.shape(n)
    h, wd = x.shape[2], x.shape[3]
    if padding == (0, 0) and out_pad == (0, 0):
        pad = _PAD_VALID
    elif all(o == sz * s for o, sz, s in zip(out_shape[2:], (h, wd), stride, strict=True)) and all(
            p == (k - s) // 2 and (k - s) >= 0 for p, k, s in zip(padding, (kh, kw), stride,
                                                                  strict=True)):
        pad = _PAD_SAME
    else:
        raise ExportError(f"{n.name}: padding {padding} / output_padding {out_pad} has no "
                          "TFLite TRANSPOSE_CONV form")
    grid, covered, act, why = _decide(L, n, [x], fusable=True)
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
        xq = _float_inputs(L, n, [x], why)[0]
        wt = _float_weight(L, n, args[1], layout)
        bt = _float_bias(L, n, args[2], cout)
        out = _out(L, n, out_shape, NHWC, None, [], n.name)
    else:
        assert wq is not None and x.grid is not None
        xq = x
        wt, wscale = wq
        bt = _bias(L, n, args[2], cout, x.grid, wscale)
        out = _out(L, n, out_shape, NHWC, grid, covered)
    L.emit("TRANSPOSE_CONV", [shape_t, wt, L.get(xq, NHWC), bt], [out.tensor],
           ("TransposeConvOptions", {"Padding": pad, "StrideW": stride[1],
                                     "StrideH": stride[0],
                                     "FusedActivationFunction": _ACT[act]}))
    return out


def linear(L: Lowerer, n: fx.Node) -> Dyn:
    x = _dyn(L, n.args[0], n)
    w_node = n.args[1]
    b_node = n.args[2] if len(n.args) > 2 else n.kwargs.get("bias")
    w = L.value(w_node)
    if not isinstance(w, Const):
        return _matmul_dynamic(L, n, x, _dyn(L, w_node, n), transpose_b=True, bias=b_node)
    cout = int(w.value.shape[0])
    grid, covered, act, why = _decide(L, n, [x], fusable=True)
    wq = _weight(L, n, w_node, (0, 1), 0) if grid is not None else None
    if grid is not None and wq is None:
        grid, covered, act, why = None, [], "NONE", "its weight is not quantized"
    xt = L.as_layout(x, identity(x.rank))
    out_shape = L.shape(n)
    if grid is None:
        xt = _float_inputs(L, n, [xt], why)[0]
        wt = _float_weight(L, n, w_node, (0, 1))
        bt = _float_bias(L, n, b_node, cout)
        out = _out(L, n, out_shape, identity(len(out_shape)), None, [], n.name)
    else:
        assert wq is not None and x.grid is not None
        wt, wscale = wq
        bt = _bias(L, n, b_node, cout, x.grid, wscale)
        out = _out(L, n, out_shape, identity(len(out_shape)), grid, covered)
    L.emit("FULLY_CONNECTED", [xt.tensor, wt, bt], [out.tensor],
           ("FullyConnectedOptions", {"FusedActivationFunction": _ACT[act],
                                      "KeepNumDims": x.rank > 2}))
    return out


def _matmul_dynamic(L: Lowerer, n: fx.Node, a: Dyn, b: Dyn, transpose_b: bool = False,
                    bias: Any = None) -> Dyn:
    if bias is not None and L.value(bias) is not None:
        raise ExportError(f"{n.name}: F.linear with a run-time weight and a bias has no TFLite "
                          "form")
    grid, covered, _, why = _decide(L, n, [a, b])
    a = L.as_layout(a, identity(a.rank))
    b = L.as_layout(b, identity(b.rank))
    out_shape = L.shape(n)
    if grid is None:
        a, b = _float_inputs(L, n, [a, b], why)
    out = _out(L, n, out_shape, identity(len(out_shape)), grid, covered,
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


# -- elementwise ---------------------------------------------------------------------------------
def _layout_for(dyns: list[Dyn], rank: int) -> tuple[int, ...]:
    for d in dyns:
        if d.rank == rank and d.perm != identity(rank):
            return d.perm
    return identity(rank)


def _broadcast_dyn(L: Lowerer, d: Dyn, rank: int, perm: tuple[int, ...], n: fx.Node) -> int:
    if d.rank == rank:
        return L.get(d, perm)
    shape = (1,) * (rank - d.rank) + d.shape
    t = L.new(f"{n.name}_expand", shape, d.grid)
    L.emit("RESHAPE", [L.get(d), L.int_const(f"{n.name}_expand_shape", shape)], [t])
    return L.get(Dyn(t, identity(rank), d.grid, shape), perm)


_BINARY = {
    aten.add: "ADD", aten.add_: "ADD", aten.sub: "SUB", aten.sub_: "SUB", aten.mul: "MUL",
    aten.mul_: "MUL", aten.div: "DIV", aten.rsub: "SUB",
}


def binary(L: Lowerer, n: fx.Node) -> Dyn:
    opcode = _BINARY[n.target.overloadpacket]
    a, b = L.value(n.args[0]), L.value(n.args[1])
    alpha = n.kwargs.get("alpha", 1)
    if n.target.overloadpacket is aten.rsub:
        a, b = b, a
    if opcode == "DIV" and not isinstance(b, Dyn):
        value = b.float_value() if isinstance(b, Const) else torch.tensor(float(b))
        b, opcode = Const(1.0 / value), "MUL"
    if alpha != 1:
        if isinstance(b, Dyn):
            raise ExportError(f"{n.name}: add / sub with alpha and a run-time operand")
        b = Const((b.float_value() if isinstance(b, Const) else torch.tensor(float(b))) * alpha)
    out_shape = L.shape(n)
    rank = len(out_shape)
    dyns = [v for v in (a, b) if isinstance(v, Dyn)]
    perm = _layout_for(dyns, rank)
    kernel = opcode != "DIV"
    grid, covered, act, why = _decide(L, n, dyns, fusable=opcode in ("ADD", "SUB", "MUL"),
                                      kernel=kernel)
    if grid is None:
        ins_f = _float_inputs(L, n, dyns, why)
        mapping = dict(zip((id(d) for d in dyns), ins_f, strict=True))
        a = mapping.get(id(a), a)
        b = mapping.get(id(b), b)
    dtype = grid.dtype if grid is not None else None
    tensors = []
    for i, v in enumerate((a, b)):
        if isinstance(v, Dyn):
            tensors.append(_broadcast_dyn(L, v, rank, perm, n))
        else:
            tensors.append(_operand(L, v, perm, rank, dtype, f"{n.name}_operand{i}"))
    out = _out(L, n, out_shape, perm, grid, covered, None if grid is not None else n.name)
    options = {"FusedActivationFunction": _ACT[act]}
    if opcode in ("ADD", "SUB") and grid is not None and grid.dtype == "INT16":
        options["PotScaleInt16"] = False
    L.emit(opcode, tensors, [out.tensor], (f"{opcode.capitalize()}Options", options))
    return out


def _unary(L: Lowerer, n: fx.Node, opcode: str, kernel: bool = True,
           options: tuple[str, dict[str, Any]] | None = None, last_axis: int | None = None
           ) -> Dyn:
    x = _dyn(L, n.args[0], n)
    perm = x.perm
    if last_axis is not None:  # the op works on TFLite's last axis: that must be torch's axis
        if perm[-1] != last_axis:
            rest = [d for d in identity(x.rank) if d != last_axis]
            perm = (*rest, last_axis) if perm == identity(x.rank) else perm
            if perm[-1] != last_axis:
                perm = (*rest, last_axis)
    grid, covered, _, why = _decide(L, n, [x], kernel=kernel)
    if grid is None:
        x = _float_inputs(L, n, [x], why)[0]
    out = _out(L, n, L.shape(n), perm, grid, covered, None if grid is not None else n.name)
    L.emit(opcode, [L.get(x, perm)], [out.tensor], options)
    return out


def relu(L: Lowerer, n: fx.Node) -> Dyn:
    return _unary(L, n, clip_opcode(n))


def clip_opcode(n: fx.Node) -> str:
    from .tflite_lower import clip_kind

    kind = clip_kind(n)
    if kind is None:
        raise ExportError(f"{n.name}: only relu / relu6 clamps have a TFLite form")
    return kind


def sigmoid(L: Lowerer, n: fx.Node) -> Dyn:
    return _unary(L, n, "LOGISTIC")


def tanh(L: Lowerer, n: fx.Node) -> Dyn:
    return _unary(L, n, "TANH")


def hardswish(L: Lowerer, n: fx.Node) -> Dyn:
    x = _dyn(L, n.args[0], n)
    kernel = x.grid is None or x.grid.dtype == "INT8"
    return _unary(L, n, "HARD_SWISH", kernel=kernel)


def gelu(L: Lowerer, n: fx.Node) -> Dyn:
    approx = n.kwargs.get("approximate", n.args[1] if len(n.args) > 1 else "none")
    x = _dyn(L, n.args[0], n)
    kernel = x.grid is None or x.grid.dtype == "INT8"
    return _unary(L, n, "GELU", kernel=kernel,
                  options=("GeluOptions", {"Approximate": approx == "tanh"}))


def leaky_relu(L: Lowerer, n: fx.Node) -> Dyn:
    slope = float(n.args[1]) if len(n.args) > 1 else 0.01
    return _unary(L, n, "LEAKY_RELU", options=("LeakyReluOptions", {"Alpha": slope}))


def softmax(L: Lowerer, n: fx.Node) -> Dyn:
    x = _dyn(L, n.args[0], n)
    dim = int(n.args[1]) % x.rank
    opcode = "LOG_SOFTMAX" if n.target.overloadpacket is aten.log_softmax else "SOFTMAX"
    options = ("SoftmaxOptions", {"Beta": 1.0}) if opcode == "SOFTMAX" else None
    return _unary(L, n, opcode, options=options, last_axis=dim)


# -- reductions and pooling ------------------------------------------------------------------
def mean(L: Lowerer, n: fx.Node) -> Dyn:
    x = _dyn(L, n.args[0], n)
    dims = n.args[1] if len(n.args) > 1 else list(range(x.rank))
    dims = [int(d) % x.rank for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    keep = bool(n.args[2]) if len(n.args) > 2 else bool(n.kwargs.get("keepdim", False))
    return _mean(L, n, x, dims, keep)


def _mean(L: Lowerer, n: fx.Node, x: Dyn, dims: list[int], keep: bool) -> Dyn:
    grid, covered, _, why = _decide(L, n, [x])
    if grid is None:
        x = _float_inputs(L, n, [x], why)[0]
    pos = invert(x.perm)
    axes = sorted(pos[d] for d in dims)
    if keep:
        perm = x.perm
    else:
        kept = [d for d in x.perm if d not in dims]
        # torch dims that remain, renumbered in torch order
        order = sorted(kept)
        perm = tuple(order.index(d) for d in kept)
    out = _out(L, n, L.shape(n), perm, grid, covered, None if grid is not None else n.name)
    L.emit("MEAN", [x.tensor, L.int_const(f"{n.name}_axes", axes)], [out.tensor],
           ("ReducerOptions", {"KeepDims": keep}))
    return out


def adaptive_avg_pool2d(L: Lowerer, n: fx.Node) -> Dyn:
    x = _dyn(L, n.args[0], n)
    size = _pair(n.args[1])
    if size != (1, 1):
        h, w = x.shape[2], x.shape[3]
        if h % size[0] or w % size[1]:
            raise ExportError(f"{n.name}: adaptive pooling to {size} from {(h, w)} has no "
                              "TFLite form")
        k = (h // size[0], w // size[1])
        return _pool(L, n, x, "AVERAGE_POOL_2D", k, k, (0, 0))
    return _mean(L, n, x, [2, 3], True)


def _pool(L: Lowerer, n: fx.Node, x: Dyn, opcode: str, k: tuple[int, int],
          s: tuple[int, int], p: tuple[int, int], ceil_mode: bool = False) -> Dyn:
    if x.rank != 4:
        raise ExportError(f"{n.name}: only 2-D pooling has a TFLite form")
    move = opcode == "MAX_POOL_2D"
    if move:  # max pooling keeps its input's grid
        grid, covered, why = x.grid, [], ""
        if grid is not None:
            g2, cov2, _, _ = _decide(L, n, [x])
            if g2 is not None and g2.same(grid):
                covered = cov2
    else:
        grid, covered, _, why = _decide(L, n, [x])
        if grid is not None and x.grid is not None and not grid.same(x.grid):
            # TFLite's integer average pool keeps the input grid: requantize afterwards
            pooled = _pool_emit(L, n, x, opcode, k, s, p, ceil_mode, x.grid, [])
            return _requantize_to(L, n, pooled, grid, covered)
    if grid is None:
        x = _float_inputs(L, n, [x], why)[0] if not move else x
    return _pool_emit(L, n, x, opcode, k, s, p, ceil_mode, grid, covered)


def _requantize_to(L: Lowerer, n: fx.Node, v: Dyn, grid: Grid, covered: list[fx.Node]) -> Dyn:
    out = _out(L, n, v.shape, v.perm, grid, covered)
    L.emit("QUANTIZE", [v.tensor], [out.tensor])
    return out


def _pool_emit(L: Lowerer, n: fx.Node, x: Dyn, opcode: str, k: tuple[int, int],
               s: tuple[int, int], p: tuple[int, int], ceil_mode: bool, grid: Grid | None,
               covered: list[fx.Node]) -> Dyn:
    try:  # SAME padding where it is torch's
        xq, pad = _padding(L, n, x, k, s, (1, 1), p, ceil_mode, pad_value_ok=False)
    except ExportError:
        if opcode != "MAX_POOL_2D" or ceil_mode:
            raise
        xq, pad = _pad_lowest(L, n, x, p), _PAD_VALID  # max pooling ignores the lowest value
    name = None if covered else (f"{n.name}" if grid is None or opcode != "MAX_POOL_2D"
                                 else n.name)
    out = _out(L, n, L.shape(n), NHWC, grid, covered, name)
    L.emit(opcode, [L.get(xq, NHWC)], [out.tensor],
           ("Pool2DOptions", {"Padding": pad, "StrideW": s[1], "StrideH": s[0],
                              "FilterWidth": k[1], "FilterHeight": k[0]}))
    return out


def _pad_lowest(L: Lowerer, n: fx.Node, x: Dyn, p: tuple[int, int]) -> Dyn:
    """``x`` (NHWC) padded spatially with its lowest value (PADV2): what max pooling's implicit
    -inf padding does."""
    h, w = x.shape[2], x.shape[3]
    pads = [[0, 0], [p[0], p[0]], [p[1], p[1]], [0, 0]]
    if x.grid is not None:
        value = L.const(f"{n.name}_pad_value", np.asarray(x.grid.qmin), x.grid.dtype,
                        x.grid.quant())
    else:
        value = L.const(f"{n.name}_pad_value", np.asarray(np.finfo(np.float32).min), "FLOAT32")
    shape = (x.shape[0], x.shape[1], h + 2 * p[0], w + 2 * p[1])
    out = L.new(f"{n.name}_pad", permuted(shape, NHWC), x.grid)
    L.emit("PADV2", [L.get(x, NHWC), L.const(f"{n.name}_paddings", np.asarray(pads, np.int32),
                                             "INT32"), value], [out])
    return Dyn(out, NHWC, x.grid, shape)


def avg_pool2d(L: Lowerer, n: fx.Node) -> Dyn:
    x = _dyn(L, n.args[0], n)
    k = _pair(n.args[1])
    s = _pair(n.args[2]) if len(n.args) > 2 and n.args[2] else k
    p = _pair(n.args[3]) if len(n.args) > 3 else (0, 0)
    ceil_mode = bool(n.args[4]) if len(n.args) > 4 else False
    count_pad = bool(n.args[5]) if len(n.args) > 5 else True
    if p != (0, 0) and count_pad:
        raise ExportError(f"{n.name}: avg_pool2d with padding counts the padded zeros "
                          "(count_include_pad=True); TFLite averages valid elements only")
    return _pool(L, n, x, "AVERAGE_POOL_2D", k, s, p, ceil_mode)


def max_pool2d(L: Lowerer, n: fx.Node) -> Dyn:
    x = _dyn(L, n.args[0], n)
    k = _pair(n.args[1])
    s = _pair(n.args[2]) if len(n.args) > 2 and n.args[2] else k
    p = _pair(n.args[3]) if len(n.args) > 3 else (0, 0)
    d = _pair(n.args[4]) if len(n.args) > 4 else (1, 1)
    ceil_mode = bool(n.args[5]) if len(n.args) > 5 else False
    if d != (1, 1):
        raise ExportError(f"{n.name}: dilated max pooling has no TFLite form")
    return _pool(L, n, x, "MAX_POOL_2D", k, s, p, ceil_mode)


# -- data movement ---------------------------------------------------------------------------------
def _moved(L: Lowerer, n: fx.Node, x: Dyn, shape: tuple[int, ...], perm: tuple[int, ...],
           emit: Callable[[int, int], None], src: int) -> Dyn:
    """An op that only moves values: output keeps ``x``'s grid (no requantization)."""
    out = L.new(n.name, permuted(shape, perm), x.grid)
    emit(src, out)
    return Dyn(out, perm, x.grid, shape)


def reshape(L: Lowerer, n: fx.Node) -> Dyn:
    x = _dyn(L, n.args[0], n)
    shape = L.shape(n)
    if shape == x.shape:
        return x
    # moving only size-1 dims keeps the data order: reshape straight from the current layout
    src_perm = x.perm
    kept = [d for d in x.perm if x.shape[d] != 1]
    if kept != sorted(kept):
        src_perm = identity(x.rank)
    src = L.get(x, src_perm)
    return _moved(L, n, x, shape, identity(len(shape)),
                  lambda s, o: L.emit("RESHAPE", [s, L.int_const(f"{n.name}_shape", shape)], [o]),
                  src)


def permute(L: Lowerer, n: fx.Node) -> Dyn:
    x = _dyn(L, n.args[0], n)
    if n.target.overloadpacket is aten.permute:
        dims = tuple(int(d) % x.rank for d in n.args[1])
    elif n.target.overloadpacket is aten.t:
        dims = (1, 0) if x.rank == 2 else (0,)
    else:
        d0, d1 = int(n.args[1]) % x.rank, int(n.args[2]) % x.rank
        lst = list(identity(x.rank))
        lst[d0], lst[d1] = lst[d1], lst[d0]
        dims = tuple(lst)
    # output torch dim i is input torch dim dims[i]: the same TFLite tensor, relabelled
    pos = invert(dims)
    return Dyn(x.tensor, tuple(pos[d] for d in x.perm), x.grid, L.shape(n))


def cat(L: Lowerer, n: fx.Node) -> Dyn:
    parts = [L.value(a) for a in n.args[0]]
    dyns = [p for p in parts if isinstance(p, Dyn)]
    dim = int(n.args[1]) % len(L.shape(n)) if len(n.args) > 1 else 0
    out_shape = L.shape(n)
    rank = len(out_shape)
    parts = [p for p, a in zip(parts, n.args[0], strict=True)
             if not (isinstance(p, Dyn) and 0 in p.shape)]
    perm = _layout_for(dyns, rank)
    grid, covered, _, why = _decide(L, n, dyns)
    tensors = []
    for i, p in enumerate(parts):
        if isinstance(p, Dyn):
            if grid is not None:
                p = L.quantized(p, grid, f"{n.name}_input{i}")  # TFLite: inputs on the output grid
            else:
                p = _float_inputs(L, n, [p], why)[0]
            tensors.append(L.get(p, perm))
        elif grid is not None:  # a constant part, on the output grid (what the quantizer does)
            v = (p.float_value() if isinstance(p, Const) else torch.tensor(float(p)))
            v = v.reshape((1,) * (rank - v.dim()) + tuple(v.shape)).permute(perm)
            codes = torch.round(v.double() / grid.scale) + grid.zero_point
            tensors.append(L.const(f"{n.name}_part{i}", codes.clamp(grid.qmin, grid.qmax),
                                   grid.dtype, grid.quant()))
        else:
            tensors.append(_operand(L, p, perm, rank, None, f"{n.name}_part{i}"))
    out = _out(L, n, out_shape, perm, grid, covered, None if grid is not None else n.name)
    L.emit("CONCATENATION", tensors, [out.tensor],
           ("ConcatenationOptions", {"Axis": invert(perm)[dim]}))
    return out


def pad(L: Lowerer, n: fx.Node) -> Dyn:
    x = _dyn(L, n.args[0], n)
    spec = list(n.args[1])
    mode = n.args[2] if n.target.overloadpacket is aten.pad and len(n.args) > 2 else "constant"
    value = (n.args[3] if n.target.overloadpacket is aten.pad and len(n.args) > 3
             else (n.args[2] if n.target.overloadpacket is aten.constant_pad_nd
                   and len(n.args) > 2 else 0.0))
    if mode not in ("constant", None) or (value not in (0, 0.0, None)):
        raise ExportError(f"{n.name}: only zero padding has a TFLite form")
    pads = [[0, 0] for _ in range(x.rank)]
    for i in range(len(spec) // 2):
        pads[x.rank - 1 - i] = [int(spec[2 * i]), int(spec[2 * i + 1])]
    tfl = [pads[d] for d in x.perm]
    if any(p < 0 for pr in tfl for p in pr):
        raise ExportError(f"{n.name}: negative padding has no TFLite form")
    return _moved(L, n, x, L.shape(n), x.perm,
                  lambda s, o: L.emit("PAD", [s, L.const(f"{n.name}_paddings",
                                                         np.asarray(tfl, np.int32), "INT32")],
                                      [o]), x.tensor)


def _strided(L: Lowerer, n: fx.Node, x: Dyn, dim: int, start: int, end: int, step: int,
             shrink: bool, name: str) -> Dyn:
    size = x.shape[dim]
    start = max(0, min(size, start + size if start < 0 else start))
    end = max(0, min(size, end + size if end < 0 else end))
    pos = invert(x.perm)
    ax = pos[dim]
    begin = [0] * x.rank
    stop = [x.shape[d] for d in x.perm]
    strides = [1] * x.rank
    begin[ax], stop[ax], strides[ax] = start, (start + 1 if shrink else end), step
    if shrink:
        shape = tuple(s for i, s in enumerate(x.shape) if i != dim)
        kept = [d for d in x.perm if d != dim]
        perm = tuple(sorted(kept).index(d) for d in kept)
    else:
        shape = tuple(((end - start + step - 1) // step) if i == dim else s
                      for i, s in enumerate(x.shape))
        perm = x.perm
    out = L.new(name, permuted(shape, perm), x.grid)
    L.emit("STRIDED_SLICE", [x.tensor, L.int_const(f"{name}_begin", begin),
                             L.int_const(f"{name}_end", stop),
                             L.int_const(f"{name}_strides", strides)], [out],
           ("StridedSliceOptions", {"ShrinkAxisMask": (1 << ax) if shrink else 0}))
    return Dyn(out, perm, x.grid, shape)


def slice_(L: Lowerer, n: fx.Node) -> Dyn:
    x = _dyn(L, n.args[0], n)
    dim = int(n.args[1]) % x.rank if len(n.args) > 1 else 0
    start = n.args[2] if len(n.args) > 2 and n.args[2] is not None else 0
    end = n.args[3] if len(n.args) > 3 and n.args[3] is not None else x.shape[dim]
    step = int(n.args[4]) if len(n.args) > 4 else 1
    end = min(int(end), x.shape[dim]) if end < 2**62 else x.shape[dim]
    if int(start) == 0 and end == x.shape[dim] and step == 1:
        return x
    return _strided(L, n, x, dim, int(start), end, step, False, n.name)


def select(L: Lowerer, n: fx.Node) -> Dyn:
    x = _dyn(L, n.args[0], n)
    dim, idx = int(n.args[1]) % x.rank, int(n.args[2])
    idx = idx + x.shape[dim] if idx < 0 else idx
    return _strided(L, n, x, dim, idx, idx + 1, 1, True, n.name)


def split(L: Lowerer, n: fx.Node) -> list[Dyn]:
    x = _dyn(L, n.args[0], n)
    dim = int(n.args[2]) % x.rank if len(n.args) > 2 else 0
    size = n.args[1]
    total = x.shape[dim]
    if isinstance(size, int):
        sizes = [min(size, total - i) for i in range(0, total, size)]
    else:
        sizes = [int(s) for s in size]
    outs, start = [], 0
    for i, s in enumerate(sizes):
        outs.append(_strided(L, n, x, dim, start, start + s, 1, False, f"{n.name}_{i}"))
        start += s
    return outs


def chunk(L: Lowerer, n: fx.Node) -> list[Dyn]:
    x = _dyn(L, n.args[0], n)
    chunks = int(n.args[1])
    dim = int(n.args[2]) % x.rank if len(n.args) > 2 else 0
    size = -(-x.shape[dim] // chunks)
    sizes = [min(size, x.shape[dim] - i) for i in range(0, x.shape[dim], size)]
    outs, start = [], 0
    for i, s in enumerate(sizes):
        outs.append(_strided(L, n, x, dim, start, start + s, 1, False, f"{n.name}_{i}"))
        start += s
    return outs


def unbind(L: Lowerer, n: fx.Node) -> list[Dyn]:
    x = _dyn(L, n.args[0], n)
    dim = int(n.args[1]) % x.rank if len(n.args) > 1 else 0
    return [_strided(L, n, x, dim, i, i + 1, 1, True, f"{n.name}_{i}")
            for i in range(x.shape[dim])]


def getitem(L: Lowerer, n: fx.Node) -> Any:
    return L.value(n.args[0])[n.args[1]]


def resize(L: Lowerer, n: fx.Node) -> Dyn:
    x = _dyn(L, n.args[0], n)
    out_shape = L.shape(n)
    nearest = "nearest" in str(n.target)
    align = bool(n.args[2]) if not nearest and len(n.args) > 2 else False
    grid = x.grid
    covered: list[fx.Node] = []
    if grid is not None:
        g2, cov2, _, _ = _decide(L, n, [x])
        if g2 is not None and g2.same(grid):
            covered = cov2
    opcode = "RESIZE_NEAREST_NEIGHBOR" if nearest else "RESIZE_BILINEAR"
    table = "ResizeNearestNeighborOptions" if nearest else "ResizeBilinearOptions"
    size = L.int_const(f"{n.name}_size", out_shape[2:])
    out = _out(L, n, out_shape, NHWC, grid, covered, None if covered else n.name)
    L.emit(opcode, [L.get(x, NHWC), size], [out.tensor],
           (table, {"AlignCorners": align, "HalfPixelCenters": not align and not nearest}))
    return out


# -- float-only decompositions --------------------------------------------------------------------
def layer_norm(L: Lowerer, n: fx.Node) -> Dyn:
    x = _dyn(L, n.args[0], n)
    shape = list(n.args[1])
    w = L.value(n.args[2]) if len(n.args) > 2 else None
    b = L.value(n.args[3]) if len(n.args) > 3 else None
    eps = float(n.args[4]) if len(n.args) > 4 else 1e-5
    grid, covered, _ = L.output_grid(n, False)
    if L.quantize:
        L.note_float(n, "TFLite has no integer layer norm (it runs in float32)")
    xf = L.as_layout(L.dequantized(x), identity(x.rank))
    axes = list(range(x.rank - len(shape), x.rank))
    sh = permuted(x.shape, identity(x.rank))
    red = tuple(1 if i in axes else s for i, s in enumerate(sh))

    def t(name: str, shp: tuple[int, ...]) -> int:
        return L.new(f"{n.name}_{name}", shp, None)

    axes_t = L.int_const(f"{n.name}_axes", axes)
    mu, centred, sq, var, var_eps, inv, normed = (t("mean", red), t("centred", sh), t("sq", sh),
                                                 t("var", red), t("var_eps", red),
                                                 t("rstd", red), t("normed", sh))
    L.emit("MEAN", [xf.tensor, axes_t], [mu], ("ReducerOptions", {"KeepDims": True}))
    L.emit("SUB", [xf.tensor, mu], [centred], ("SubOptions", {}))
    L.emit("MUL", [centred, centred], [sq], ("MulOptions", {}))
    L.emit("MEAN", [sq, axes_t], [var], ("ReducerOptions", {"KeepDims": True}))
    L.emit("ADD", [var, L.const(f"{n.name}_eps", np.float32(eps), "FLOAT32")], [var_eps],
           ("AddOptions", {}))
    L.emit("RSQRT", [var_eps], [inv])
    L.emit("MUL", [centred, inv], [normed], ("MulOptions", {}))
    cur = normed
    if isinstance(w, Const):
        nxt = t("scaled", sh)
        L.emit("MUL", [cur, L.const(f"{n.name}_gamma", w.float_value(), "FLOAT32")], [nxt],
               ("MulOptions", {}))
        cur = nxt
    if isinstance(b, Const):
        nxt = t("shifted", sh)
        L.emit("ADD", [cur, L.const(f"{n.name}_beta", b.float_value(), "FLOAT32")], [nxt],
               ("AddOptions", {}))
        cur = nxt
    out = Dyn(cur, identity(x.rank), None, x.shape)
    if grid is not None:
        path = L.qparams(covered[-1])[1]
        out = L.quantized(out, grid, _tensor_name(path))
        L.record(out, path)
        for c in covered:
            L.values[c] = out
    return out


def batch_norm(L: Lowerer, n: fx.Node) -> Dyn:
    x = _dyn(L, n.args[0], n)
    w, b, mu, var = (L.value(a) for a in n.args[1:5])
    # eps: _native_batch_norm_legit_no_training's 7th argument, batch_norm's 8th
    eps_at = 6 if "legit" in str(n.target) else 7
    eps = float(n.args[eps_at]) if len(n.args) > eps_at else 1e-5
    if not all(isinstance(v, Const) or v is None for v in (w, b, mu, var)):
        raise ExportError(f"{n.name}: batch norm statistics must be constants")
    c = x.shape[1]
    inv = 1.0 / torch.sqrt(var.value.double() + eps)
    scale = (w.float_value().double() if w is not None else torch.ones(c)) * inv
    shift = (b.float_value().double() if b is not None else torch.zeros(c)) - mu.value * scale
    if L.quantize:
        L.note_float(n, "a batch norm that was not folded runs in float32")
    xf = L.dequantized(x)
    shp = (1, c) + (1,) * (x.rank - 2)
    sc = _operand(L, Const(scale.float().reshape(shp)), xf.perm, x.rank, None, f"{n.name}_scale")
    sh = _operand(L, Const(shift.float().reshape(shp)), xf.perm, x.rank, None, f"{n.name}_shift")
    mid = L.new(f"{n.name}_mul", permuted(x.shape, xf.perm), None)
    L.emit("MUL", [xf.tensor, sc], [mid], ("MulOptions", {}))
    out = L.new(n.name, permuted(x.shape, xf.perm), None)
    L.emit("ADD", [mid, sh], [out], ("AddOptions", {}))
    res = Dyn(out, xf.perm, None, x.shape)
    return res if not isinstance(n.meta.get("val"), (tuple, list)) else (res, None, None)


def _float_unary(L: Lowerer, n: fx.Node, why: str,
                 steps: Callable[[Lowerer, int, tuple[int, ...], str], int]) -> Dyn:
    """An elementwise op written as float32 TFLite ops (``steps`` emits them from the float
    input tensor and returns the result tensor), quantized afterwards when a quantizer
    follows."""
    x = _dyn(L, n.args[0], n)
    grid, covered, _ = L.output_grid(n, False)
    if L.quantize:
        L.note_float(n, why)
    xf = L.dequantized(x)
    shape = permuted(x.shape, xf.perm)
    out = Dyn(steps(L, xf.tensor, shape, n.name), xf.perm, None, x.shape)
    if grid is not None:
        path = L.qparams(covered[-1])[1]
        out = L.quantized(out, grid, _tensor_name(path))
        L.record(out, path)
        for c in covered:
            L.values[c] = out
    return out


def _hardsigmoid_steps(L: Lowerer, x: int, shape: tuple[int, ...], name: str) -> int:
    a, b, c = (L.new(f"{name}_{k}", shape, None) for k in ("plus3", "relu6", "out"))
    L.emit("ADD", [x, L.const(f"{name}_3", np.float32(3.0), "FLOAT32")], [a], ("AddOptions", {}))
    L.emit("RELU6", [a], [b])
    L.emit("MUL", [b, L.const(f"{name}_sixth", np.float32(1 / 6), "FLOAT32")], [c],
           ("MulOptions", {}))
    return c


def _silu_steps(L: Lowerer, x: int, shape: tuple[int, ...], name: str) -> int:
    a, b = L.new(f"{name}_sigmoid", shape, None), L.new(f"{name}_out", shape, None)
    L.emit("LOGISTIC", [x], [a])
    L.emit("MUL", [x, a], [b], ("MulOptions", {}))
    return b


def hardsigmoid(L: Lowerer, n: fx.Node) -> Dyn:
    return _float_unary(L, n, "TFLite has no hard sigmoid (ADD, RELU6, MUL in float32)",
                        _hardsigmoid_steps)


def silu(L: Lowerer, n: fx.Node) -> Dyn:
    return _float_unary(L, n, "TFLite has no SiLU (LOGISTIC, MUL in float32)", _silu_steps)


def sdpa(L: Lowerer, n: fx.Node) -> Dyn:
    """``F.scaled_dot_product_attention`` in float32: BATCH_MATMUL (adj_y), MUL by the scale,
    [ADD the mask], SOFTMAX, BATCH_MATMUL."""
    q, k, v = (_dyn(L, a, n) for a in n.args[:3])
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
                 _operand(L, add, identity(len(s_shape)), len(s_shape), None, f"{n.name}_mask"))
        L.emit("ADD", [cur, other], [masked], ("AddOptions", {}))
        cur = masked
    probs = L.new(f"{n.name}_probs", s_shape, None)
    L.emit("SOFTMAX", [cur], [probs], ("SoftmaxOptions", {"Beta": 1.0}))
    o_shape = L.shape(n)
    out_t = L.new(n.name, o_shape, None)
    L.emit("BATCH_MATMUL", [probs, vf.tensor], [out_t],
           ("BatchMatMulOptions", {"AdjX": False, "AdjY": False}))
    out = Dyn(out_t, identity(len(o_shape)), None, o_shape)
    if grid is not None:
        path = L.qparams(covered[-1])[1]
        out = L.quantized(out, grid, _tensor_name(path))
        L.record(out, path)
        for c in covered:
            L.values[c] = out
    return out


def embedding(L: Lowerer, n: fx.Node) -> Dyn:
    """``F.embedding(indices, weight)`` as GATHER of the (fake-quantized) float table; the
    output quantizer, if any, is a QUANTIZE after it."""
    w, idx = L.value(n.args[0]), _dyn(L, n.args[1], n)
    if not isinstance(w, Const):
        raise ExportError(f"{n.name}: the embedding table must be a constant for TFLite")
    table = L.const(f"{n.name}_table", w.float_value(), "FLOAT32")
    shape = L.shape(n)
    out = L.new(n.name, shape, None)
    L.emit("GATHER", [table, L.get(idx)], [out], ("GatherOptions", {"Axis": 0}))
    return Dyn(out, identity(len(shape)), None, shape)


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
    out = L.quantized(v, grid_of(qp, path), _tensor_name(path))
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
    **{k: binary for k in _BINARY},
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

