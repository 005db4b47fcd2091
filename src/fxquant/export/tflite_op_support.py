"""What the TFLite op handlers share: input checks, the integer-or-float decision of an op
(:func:`decide`), output tensors, operands, padding and pooling arithmetic, float islands.

The handlers (:mod:`.tflite_op_compute`, :mod:`.tflite_op_pointwise`, :mod:`.tflite_op_layout`)
and the dispatch table (:mod:`.tflite_ops`) build on these.
"""

from __future__ import annotations

from collections.abc import Callable
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
    grid_of,
    identity,
    permuted,
)
from .tflite_writer import TFLQuant

__all__ = [
    "ACT", "Handler", "PAD_SAME", "PAD_VALID", "UNSUPPORTED", "aten", "broadcast_dyn",
    "conv_padding", "decide", "dyn_input", "float_inputs", "float_unary", "layout_for", "moved",
    "on_output_grid", "operand_tensor", "out_tensor", "pad_zeros", "pair", "requantize_to",
    "tensor_name"
]

aten = torch.ops.aten
ACT = {"NONE": 0, "RELU": 1, "RELU6": 3}
PAD_SAME, PAD_VALID = 0, 1

UNSUPPORTED = "no TFLite form"

Handler = Callable[[Lowerer, fx.Node], Any]


# -- shared helpers ----------------------------------------------------------------------------
def dyn_input(L: Lowerer, a: Any, n: fx.Node) -> Dyn:
    v = L.value(a)
    if not isinstance(v, Dyn):
        raise ExportError(f"{n.name}: expected a run-time tensor input")
    return v


def pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = list(v)
    return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))


def decide(L: Lowerer, n: fx.Node, dyns: list[Dyn], fusable: bool = False,
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


def out_tensor(L: Lowerer, n: fx.Node, shape: tuple[int, ...], perm: tuple[int, ...],
         grid: Grid | None, covered: list[fx.Node], name: str | None = None) -> Dyn:
    """A new output tensor for ``n`` (named after its quantizer when quantized)."""
    if name is None:
        name = L.qparams(covered[-1])[1] if covered else n.name
    t = L.new(tensor_name(name), permuted(shape, perm), grid)
    d = Dyn(t, perm, grid, shape)
    for c in covered:
        L.values[c] = d
    if covered:
        L.record(d, L.qparams(covered[-1])[1])
    return d


def tensor_name(path: str) -> str:
    """The TFLite tensor name of a quantizer's tensor: the op's name (``conv1``)."""
    for suffix in (".output_fake_quant", ".activation_post_process"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def float_inputs(L: Lowerer, n: fx.Node, dyns: list[Dyn], why: str) -> list[Dyn]:
    if L.quantize and why and any(d.grid is not None for d in dyns):
        L.note_float(n, why)
    elif L.quantize and why and L.output_grid(n)[0] is not None:
        L.note_float(n, why)
    return [L.dequantized(d) for d in dyns]


def operand_tensor(L: Lowerer, v: Any, perm: tuple[int, ...], rank: int, grid_dtype: str | None,
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


def conv_padding(L: Lowerer, n: fx.Node, x: Dyn, k: tuple[int, int], s: tuple[int, int],
             d: tuple[int, int], p: tuple[int, int], ceil_mode: bool = False,
             pad_value_ok: bool = True) -> tuple[Dyn, int]:
    """TFLite padding for torch's symmetric ``p``: SAME when it is the same, else an explicit
    PAD and VALID.  Returns the (maybe padded) NHWC input and the padding enum."""
    h, w = x.shape[2], x.shape[3]
    if p == (0, 0) and not ceil_mode:
        return x, PAD_VALID
    same = [_same_padding(sz, kk, ss, dd) for sz, kk, ss, dd in zip((h, w), k, s, d, strict=True)]
    outs = [_pool_out(sz, kk, ss, dd, pp, ceil_mode)
            for sz, kk, ss, dd, pp in zip((h, w), k, s, d, p, strict=True)]
    # TFLite SAME windows start at i * stride - pad_before: the same windows as torch's when
    # the output sizes agree and pad_before is torch's padding (SAME ignores / zero-pads the
    # rest exactly as torch's padding does)
    if all(o == so and pb == pp for (so, pb, _), o, pp in zip(same, outs, p, strict=True)):
        return x, PAD_SAME
    if not pad_value_ok:
        raise ExportError(f"{n.name}: padding {p} has no TFLite form for this op")
    if ceil_mode:
        raise ExportError(f"{n.name}: ceil_mode=True has no TFLite form")
    return pad_zeros(L, n, x, p), PAD_VALID


def pad_zeros(L: Lowerer, n: fx.Node, x: Dyn, p: tuple[int, int]) -> Dyn:
    """``x`` (NHWC) padded spatially with zeros (PAD: the zero point of a quantized tensor)."""
    shape = (x.shape[0], x.shape[1], x.shape[2] + 2 * p[0], x.shape[3] + 2 * p[1])
    out = L.new(f"{n.name}_pad", permuted(shape, NHWC), x.grid)
    pads = [[0, 0], [p[0], p[0]], [p[1], p[1]], [0, 0]]
    L.emit("PAD", [L.get(x, NHWC), L.const(f"{n.name}_paddings", np.asarray(pads, np.int32),
                                           "INT32")], [out])
    return Dyn(out, NHWC, x.grid, shape)


def _pool_out(size: int, k: int, s: int, d: int, p: int, ceil_mode: bool) -> int:
    num = size + 2 * p - d * (k - 1) - 1
    return (-(-num // s) if ceil_mode else num // s) + 1


# -- elementwise ---------------------------------------------------------------------------------
def layout_for(dyns: list[Dyn], rank: int) -> tuple[int, ...]:
    for d in dyns:
        if d.rank == rank and d.perm != identity(rank):
            return d.perm
    return identity(rank)


def broadcast_dyn(L: Lowerer, d: Dyn, rank: int, perm: tuple[int, ...], n: fx.Node) -> int:
    if d.rank == rank:
        return L.get(d, perm)
    shape = (1,) * (rank - d.rank) + d.shape
    t = L.new(f"{n.name}_expand", shape, d.grid)
    L.emit("RESHAPE", [L.get(d), L.int_const(f"{n.name}_expand_shape", shape)], [t])
    return L.get(Dyn(t, identity(rank), d.grid, shape), perm)


def requantize_to(L: Lowerer, n: fx.Node, v: Dyn, grid: Grid, covered: list[fx.Node]) -> Dyn:
    out = out_tensor(L, n, v.shape, v.perm, grid, covered)
    L.emit("QUANTIZE", [v.tensor], [out.tensor])
    return out


# -- data movement ---------------------------------------------------------------------------------
def moved(L: Lowerer, n: fx.Node, x: Dyn, shape: tuple[int, ...], perm: tuple[int, ...],
           emit: Callable[[int, int], None], src: int) -> Dyn:
    """An op that only moves values: output keeps ``x``'s grid (no requantization)."""
    out = L.new(n.name, permuted(shape, perm), x.grid)
    emit(src, out)
    return Dyn(out, perm, x.grid, shape)


def float_unary(L: Lowerer, n: fx.Node, why: str,
                 steps: Callable[[Lowerer, int, tuple[int, ...], str], int]) -> Dyn:
    """An elementwise op written as float32 TFLite ops (``steps`` emits them from the float
    input tensor and returns the result tensor), quantized afterwards when a quantizer
    follows."""
    x = dyn_input(L, n.args[0], n)
    grid, covered, _ = L.output_grid(n, False)
    if L.quantize:
        L.note_float(n, why)
    xf = L.dequantized(x)
    shape = permuted(x.shape, xf.perm)
    out = Dyn(steps(L, xf.tensor, shape, n.name), xf.perm, None, x.shape)
    return on_output_grid(L, out, grid, covered)


def on_output_grid(L: Lowerer, out: Dyn, grid: Grid | None, covered: list[fx.Node]) -> Dyn:
    """A float32 result put on the op's output grid (QUANTIZE), standing for the quantizer
    nodes it covers; unchanged when the op has no output quantizer."""
    if grid is None:
        return out
    path = L.qparams(covered[-1])[1]
    out = L.quantized(out, grid, tensor_name(path))
    L.record(out, path)
    for c in covered:
        L.values[c] = out
    return out
