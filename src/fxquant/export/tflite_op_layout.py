"""TFLite handlers of data movement and pooling: MEAN, AVERAGE_POOL_2D, MAX_POOL_2D, RESHAPE,
TRANSPOSE (a relabelled layout, materialized when a consumer needs it), CONCATENATION, PAD,
STRIDED_SLICE, SPLIT, RESIZE_*.

NCHW -> NHWC is handled here: a 4-D tensor lives channels-last in the file and each handler
works on the TFLite tensor's own dimension order (:attr:`Dyn.perm`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..errors import ExportError
from .tflite_lower import (
    NHWC,
    Const,
    Dyn,
    Grid,
    Lowerer,
    identity,
    invert,
    permuted,
)
from .tflite_op_support import (
    PAD_VALID,
    aten,
    conv_padding,
    decide,
    dyn_input,
    float_inputs,
    layout_for,
    moved,
    operand_tensor,
    out_tensor,
    pad_zeros,
    pair,
    requantize_to,
)

__all__ = [
    "adaptive_avg_pool2d", "avg_pool2d", "cat", "chunk", "getitem", "max_pool2d", "mean", "pad",
    "permute", "reshape", "resize", "select", "slice_", "split", "unbind"
]


# -- reductions and pooling ------------------------------------------------------------------
def mean(L: Lowerer, n: fx.Node) -> Dyn:
    x = dyn_input(L, n.args[0], n)
    dims = n.args[1] if len(n.args) > 1 else list(range(x.rank))
    dims = [int(d) % x.rank for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    keep = bool(n.args[2]) if len(n.args) > 2 else bool(n.kwargs.get("keepdim", False))
    return _mean(L, n, x, dims, keep)


def _mean(L: Lowerer, n: fx.Node, x: Dyn, dims: list[int], keep: bool) -> Dyn:
    grid, covered, _, why = decide(L, n, [x])
    if grid is None:
        x = float_inputs(L, n, [x], why)[0]
    pos = invert(x.perm)
    axes = sorted(pos[d] for d in dims)
    if keep:
        perm = x.perm
    else:
        kept = [d for d in x.perm if d not in dims]
        # torch dims that remain, renumbered in torch order
        order = sorted(kept)
        perm = tuple(order.index(d) for d in kept)
    out = out_tensor(L, n, L.shape(n), perm, grid, covered, None if grid is not None else n.name)
    L.emit("MEAN", [x.tensor, L.int_const(f"{n.name}_axes", axes)], [out.tensor],
           ("ReducerOptions", {"KeepDims": keep}))
    return out


def adaptive_avg_pool2d(L: Lowerer, n: fx.Node) -> Dyn:
    x = dyn_input(L, n.args[0], n)
    size = pair(n.args[1])
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
            g2, cov2, _, _ = decide(L, n, [x])
            if g2 is not None and g2.same(grid):
                covered = cov2
    else:
        grid, covered, _, why = decide(L, n, [x])
        if grid is not None and x.grid is not None and not grid.same(x.grid):
            # TFLite's integer average pool keeps the input grid: requantize afterwards
            pooled = _pool_emit(L, n, x, opcode, k, s, p, ceil_mode, x.grid, [])
            return requantize_to(L, n, pooled, grid, covered)
    if grid is None:
        x = float_inputs(L, n, [x], why)[0] if not move else x
    return _pool_emit(L, n, x, opcode, k, s, p, ceil_mode, grid, covered)


def _pool_emit(L: Lowerer, n: fx.Node, x: Dyn, opcode: str, k: tuple[int, int],
               s: tuple[int, int], p: tuple[int, int], ceil_mode: bool, grid: Grid | None,
               covered: list[fx.Node]) -> Dyn:
    try:  # SAME padding where it is torch's
        xq, pad = conv_padding(L, n, x, k, s, (1, 1), p, ceil_mode, pad_value_ok=False)
    except ExportError:
        if opcode != "MAX_POOL_2D":
            raise
        # max pooling ignores the lowest value: pad with it (torch's padding before, and after
        # as much as the last window needs, ceil_mode included) and pool VALID
        size = (x.shape[2], x.shape[3])
        out_hw = L.shape(n)[2:]
        after = tuple(max(0, (o - 1) * ss + kk - (sz + pp))
                      for o, ss, kk, sz, pp in zip(out_hw, s, k, size, p, strict=True))
        xq, pad = _pad_lowest(L, n, x, p, after), PAD_VALID
    name = None if covered else (f"{n.name}" if grid is None or opcode != "MAX_POOL_2D"
                                 else n.name)
    out = out_tensor(L, n, L.shape(n), NHWC, grid, covered, name)
    L.emit(opcode, [L.get(xq, NHWC)], [out.tensor],
           ("Pool2DOptions", {"Padding": pad, "StrideW": s[1], "StrideH": s[0],
                              "FilterWidth": k[1], "FilterHeight": k[0]}))
    return out


def _pad_lowest(L: Lowerer, n: fx.Node, x: Dyn, p: tuple[int, int],
                after: tuple[int, int] | None = None) -> Dyn:
    """``x`` (NHWC) padded spatially with its lowest value (PADV2): what max pooling's implicit
    -inf padding does; ``p`` before, ``after`` (default ``p``) after."""
    h, w = x.shape[2], x.shape[3]
    after = p if after is None else after
    pads = [[0, 0], [p[0], after[0]], [p[1], after[1]], [0, 0]]
    if x.grid is not None:
        value = L.const(f"{n.name}_pad_value", np.asarray(x.grid.qmin), x.grid.dtype,
                        x.grid.quant())
    else:
        value = L.const(f"{n.name}_pad_value", np.asarray(np.finfo(np.float32).min), "FLOAT32")
    shape = (x.shape[0], x.shape[1], h + p[0] + after[0], w + p[1] + after[1])
    out = L.new(f"{n.name}_pad", permuted(shape, NHWC), x.grid)
    L.emit("PADV2", [L.get(x, NHWC), L.const(f"{n.name}_paddings", np.asarray(pads, np.int32),
                                             "INT32"), value], [out])
    return Dyn(out, NHWC, x.grid, shape)


def avg_pool2d(L: Lowerer, n: fx.Node) -> Dyn:
    x = dyn_input(L, n.args[0], n)
    k = pair(n.args[1])
    s = pair(n.args[2]) if len(n.args) > 2 and n.args[2] else k
    p = pair(n.args[3]) if len(n.args) > 3 else (0, 0)
    ceil_mode = bool(n.args[4]) if len(n.args) > 4 else False
    count_pad = bool(n.args[5]) if len(n.args) > 5 else True
    if p != (0, 0) and count_pad:
        if ceil_mode:
            raise ExportError(f"{n.name}: avg_pool2d with padding, count_include_pad=True and "
                              "ceil_mode=True has no TFLite form (TFLite averages valid elements "
                              "only); use count_include_pad=False or ceil_mode=False")
        # torch divides by the whole window, padded zeros included: pad with zeros explicitly
        # (PAD writes the zero point) and average VALID windows
        x, p = pad_zeros(L, n, x, p), (0, 0)
    return _pool(L, n, x, "AVERAGE_POOL_2D", k, s, p, ceil_mode)


def max_pool2d(L: Lowerer, n: fx.Node) -> Dyn:
    x = dyn_input(L, n.args[0], n)
    k = pair(n.args[1])
    s = pair(n.args[2]) if len(n.args) > 2 and n.args[2] else k
    p = pair(n.args[3]) if len(n.args) > 3 else (0, 0)
    d = pair(n.args[4]) if len(n.args) > 4 else (1, 1)
    ceil_mode = bool(n.args[5]) if len(n.args) > 5 else False
    if d != (1, 1):
        raise ExportError(f"{n.name}: dilated max pooling has no TFLite form")
    return _pool(L, n, x, "MAX_POOL_2D", k, s, p, ceil_mode)


def reshape(L: Lowerer, n: fx.Node) -> Dyn:
    x = dyn_input(L, n.args[0], n)
    shape = L.shape(n)
    if shape == x.shape:
        return x
    # moving only size-1 dims keeps the data order: reshape straight from the current layout
    src_perm = x.perm
    kept = [d for d in x.perm if x.shape[d] != 1]
    if kept != sorted(kept):
        src_perm = identity(x.rank)
    src = L.get(x, src_perm)
    return moved(L, n, x, shape, identity(len(shape)),
                  lambda s, o: L.emit("RESHAPE", [s, L.int_const(f"{n.name}_shape", shape)], [o]),
                  src)


def permute(L: Lowerer, n: fx.Node) -> Dyn:
    x = dyn_input(L, n.args[0], n)
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
    perm = layout_for(dyns, rank)
    grid, covered, _, why = decide(L, n, dyns)
    tensors = []
    for i, p in enumerate(parts):
        if isinstance(p, Dyn):
            if grid is not None:
                p = L.quantized(p, grid, f"{n.name}_input{i}")  # TFLite: inputs on the output grid
            else:
                p = float_inputs(L, n, [p], why)[0]
            tensors.append(L.get(p, perm))
        elif grid is not None:  # a constant part, on the output grid (what the quantizer does)
            v = (p.float_value() if isinstance(p, Const) else torch.tensor(float(p)))
            v = v.reshape((1,) * (rank - v.dim()) + tuple(v.shape)).permute(perm)
            codes = torch.round(v.double() / grid.scale) + grid.zero_point
            tensors.append(L.const(f"{n.name}_part{i}", codes.clamp(grid.qmin, grid.qmax),
                                   grid.dtype, grid.quant()))
        else:
            tensors.append(operand_tensor(L, p, perm, rank, None, f"{n.name}_part{i}"))
    out = out_tensor(L, n, out_shape, perm, grid, covered, None if grid is not None else n.name)
    L.emit("CONCATENATION", tensors, [out.tensor],
           ("ConcatenationOptions", {"Axis": invert(perm)[dim]}))
    return out


def pad(L: Lowerer, n: fx.Node) -> Dyn:
    x = dyn_input(L, n.args[0], n)
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
    return moved(L, n, x, L.shape(n), x.perm,
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
    x = dyn_input(L, n.args[0], n)
    dim = int(n.args[1]) % x.rank if len(n.args) > 1 else 0
    start = n.args[2] if len(n.args) > 2 and n.args[2] is not None else 0
    end = n.args[3] if len(n.args) > 3 and n.args[3] is not None else x.shape[dim]
    step = int(n.args[4]) if len(n.args) > 4 else 1
    end = min(int(end), x.shape[dim]) if end < 2**62 else x.shape[dim]
    if int(start) == 0 and end == x.shape[dim] and step == 1:
        return x
    return _strided(L, n, x, dim, int(start), end, step, False, n.name)


def select(L: Lowerer, n: fx.Node) -> Dyn:
    x = dyn_input(L, n.args[0], n)
    dim, idx = int(n.args[1]) % x.rank, int(n.args[2])
    idx = idx + x.shape[dim] if idx < 0 else idx
    return _strided(L, n, x, dim, idx, idx + 1, 1, True, n.name)


def split(L: Lowerer, n: fx.Node) -> list[Dyn]:
    x = dyn_input(L, n.args[0], n)
    dim = int(n.args[2]) % x.rank if len(n.args) > 2 else 0
    size = n.args[1]
    total = x.shape[dim]
    if isinstance(size, int):
        sizes = [min(size, total - i) for i in range(0, total, size)]
    else:
        sizes = [int(s) for s in size]
    return _pieces(L, n, x, dim, sizes)


def chunk(L: Lowerer, n: fx.Node) -> list[Dyn]:
    x = dyn_input(L, n.args[0], n)
    chunks = int(n.args[1])
    dim = int(n.args[2]) % x.rank if len(n.args) > 2 else 0
    size = -(-x.shape[dim] // chunks)
    sizes = [min(size, x.shape[dim] - i) for i in range(0, x.shape[dim], size)]
    return _pieces(L, n, x, dim, sizes)


def _pieces(L: Lowerer, n: fx.Node, x: Dyn, dim: int, sizes: list[int]) -> list[Dyn]:
    """``x`` cut along ``dim`` into consecutive pieces of ``sizes`` (STRIDED_SLICE each)."""
    outs, start = [], 0
    for i, s in enumerate(sizes):
        outs.append(_strided(L, n, x, dim, start, start + s, 1, False, f"{n.name}_{i}"))
        start += s
    return outs


def unbind(L: Lowerer, n: fx.Node) -> list[Dyn]:
    x = dyn_input(L, n.args[0], n)
    dim = int(n.args[1]) % x.rank if len(n.args) > 1 else 0
    return [_strided(L, n, x, dim, i, i + 1, 1, True, f"{n.name}_{i}")
            for i in range(x.shape[dim])]


def getitem(L: Lowerer, n: fx.Node) -> Any:
    return L.value(n.args[0])[n.args[1]]


def resize(L: Lowerer, n: fx.Node) -> Dyn:
    x = dyn_input(L, n.args[0], n)
    out_shape = L.shape(n)
    nearest = "nearest" in str(n.target)
    align = bool(n.args[2]) if not nearest and len(n.args) > 2 else False
    grid = x.grid
    covered: list[fx.Node] = []
    if grid is not None:
        g2, cov2, _, _ = decide(L, n, [x])
        if g2 is not None and g2.same(grid):
            covered = cov2
    opcode = "RESIZE_NEAREST_NEIGHBOR" if nearest else "RESIZE_BILINEAR"
    table = "ResizeNearestNeighborOptions" if nearest else "ResizeBilinearOptions"
    size = L.int_const(f"{n.name}_size", out_shape[2:])
    out = out_tensor(L, n, out_shape, NHWC, grid, covered, None if covered else n.name)
    L.emit(opcode, [L.get(x, NHWC), size], [out.tensor],
           (table, {"AlignCorners": align, "HalfPixelCenters": not align and not nearest}))
    return out
