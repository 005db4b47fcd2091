"""Lowering a captured program (:mod:`fxquant.export.program`) to a :class:`TFLModel`.

The program is ATen ops plus ``fxquant::quantize_dequantize`` nodes.  :class:`Lowerer` walks it
once, in order, and maps every node to one of

* a constant (:class:`Const`: parameters, buffers and everything computed from them alone --
  a BatchNorm folded into a conv weight is evaluated here, in torch -- with the qparams of the
  quantizer that quantizes it, if any);
* a TFLite tensor (:class:`Dyn`) with its layout (``perm``: TFLite dimension ``i`` is torch
  dimension ``perm[i]``; NHWC is ``(0, 2, 3, 1)``) and its grid (:class:`Grid`, ``None`` for
  float32);
* a Python value (shapes, lists of tensors).

**Quantized or float.**  An op runs as a TFLite integer kernel when its tensor inputs are
quantized and its only consumer is the quantizer of its output (through a fused relu / relu6):
its TFLite output tensor then carries that quantizer's grid and the quantizer node maps to the
same tensor.  Ops that only move values (reshape, transpose, max pool, slicing, padding) keep
their input's grid.  Anything else runs in float32: quantized inputs are dequantized (DEQUANTIZE)
and the next quantizer becomes a QUANTIZE; :attr:`Lowerer.float_ops` says which ops and why.
A quantizer on an already quantized tensor with another grid is a requantizing QUANTIZE.

**Layout.**  Convolutions and pooling want NHWC; every other op takes its inputs in whatever
layout they have (axes are remapped through ``perm``), so a 4-D tensor stays NHWC from one conv
to the next and a TRANSPOSE appears only where an op needs torch's own order (a reshape that
mixes channels with space, a model output).  :meth:`Lowerer.get` inserts it, once per
transposition of a tensor.

The op handlers live in :mod:`fxquant.export.tflite_ops` (the dispatch table) and the
``tflite_op_*`` modules it names.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..errors import ExportError, bounded
from ..fake_quant import FakeQuantize
from ..numerics import QParams
from .program import CapturedProgram
from .tflite_writer import TFLModel, TFLQuant

__all__ = ["Grid", "Const", "Dyn", "Lowerer", "NHWC", "IDENTITY4", "QDQ"]

QDQ = torch.ops.fxquant.quantize_dequantize.default
NHWC = (0, 2, 3, 1)
IDENTITY4 = (0, 1, 2, 3)


@dataclass(frozen=True)
class Grid:
    """A per-tensor activation grid as TFLite stores it (``dtype`` ``INT8`` or ``INT16``)."""

    scale: float
    zero_point: int
    dtype: str
    qmin: int
    qmax: int
    source: str = field(default="", compare=False)

    @property
    def bits(self) -> int:
        return 16 if self.dtype == "INT16" else 8

    def quant(self) -> TFLQuant:
        return TFLQuant((self.scale,), (self.zero_point,))

    def same(self, other: Grid | None) -> bool:
        return other is not None and (self.scale, self.zero_point, self.dtype) == (
            other.scale, other.zero_point, other.dtype)


def grid_of(qp: QParams, source: str = "") -> Grid:
    """The TFLite grid of a per-tensor quantizer: signed 8-bit -> INT8, unsigned 8-bit -> INT8
    with the zero point shifted by -128 (the same real values), 16-bit signed -> INT16."""
    if qp.per_channel:
        raise ExportError(
            f"quantizer {bounded(source)!r} quantizes an activation per channel; TFLite "
            "activations are per tensor (prepare with backend='tflite')"
        )
    dt = qp.dtype
    zp = int(qp.zero_point.reshape(-1)[0])
    scale = float(qp.scale.reshape(-1)[0])
    if dt.bits <= 8:
        shift = 0 if dt.signed else -128
        return Grid(scale, zp + shift, "INT8", dt.qmin + shift, dt.qmax + shift, source)
    if dt.bits <= 16 and dt.signed:
        if zp != 0:
            raise ExportError(
                f"quantizer {bounded(source)!r} is int16 with zero point {zp}; TFLite's 16x8 "
                "kernels take symmetric int16 activations (prepare with backend='tflite')"
            )
        return Grid(scale, 0, "INT16", dt.qmin, dt.qmax, source)
    raise ExportError(
        f"quantizer {bounded(source)!r} uses {dt}; TFLite activations are int8 or int16"
    )


@dataclass
class Const:
    """A constant; ``qp``: the quantizer that quantizes it (weights), ``None`` if none."""

    value: torch.Tensor
    qp: QParams | None = None
    source: str = ""

    def float_value(self) -> torch.Tensor:
        """What the simulation computes with: the fake-quantized value when quantized."""
        v = self.value.detach().float()
        return self.qp.fake_quantize(v) if self.qp is not None else v


@dataclass
class Dyn:
    """A TFLite tensor computed at run time."""

    tensor: int
    perm: tuple[int, ...]
    grid: Grid | None
    shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)


def invert(perm: tuple[int, ...]) -> tuple[int, ...]:
    out = [0] * len(perm)
    for i, p in enumerate(perm):
        out[p] = i
    return tuple(out)


def identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def permuted(shape: tuple[int, ...], perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[p] for p in perm)


class Lowerer:
    """One lowering run (see the module docstring).

    Args:
        cp: the captured program.
        qmodel: the prepared model (its quantizers give every grid: ``fq.qparams()``).
        nhwc_io: 4-D model inputs / outputs in NHWC (TFLite's convention) instead of NCHW.
        io_dtype: ``None`` (float32 inputs / outputs around the integer model), ``"int8"`` or
            ``"uint8"`` (quantized model inputs / outputs).
        quantize: False writes the float model (quantizers dropped).
    """

    def __init__(self, cp: CapturedProgram, qmodel: nn.Module, *, nhwc_io: bool = True,
                 io_dtype: str | None = None, quantize: bool = True) -> None:
        self.cp = cp
        self.ep = cp.program
        self.qmodel = qmodel
        self.nhwc_io = nhwc_io
        self.io_dtype = io_dtype
        self.quantize = quantize
        self.model = TFLModel()
        self.values: dict[fx.Node, Any] = {}
        self.float_ops: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self.input_perms: list[tuple[int, ...]] = []
        self.output_perms: list[tuple[int, ...]] = []
        self._layouts: dict[tuple[int, tuple[int, ...]], int] = {}
        self._float_of: dict[int, int] = {}
        self._names: set[str] = set()
        self._quantizers = {p: m for p, m in qmodel.named_modules() if isinstance(m, FakeQuantize)}
        self.quantized_tensors: list[tuple[int, str, tuple[int, ...]]] = []

    def record(self, v: Dyn, quantizer: str) -> None:
        """Remember that ``v`` holds what ``quantizer`` produces (for verification)."""
        entry = (v.tensor, quantizer, v.perm)
        if entry not in self.quantized_tensors:
            self.quantized_tensors.append(entry)

    # -- names and tensors ------------------------------------------------------------------
    def unique(self, name: str) -> str:
        base, i = name, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def new(self, name: str, shape: tuple[int, ...], grid: Grid | None,
            dtype: str | None = None) -> int:
        """A new run-time tensor (``dtype`` defaults to the grid's, else FLOAT32)."""
        dt = dtype or (grid.dtype if grid is not None else "FLOAT32")
        return self.model.tensor(self.unique(name), shape, dt,
                                 quant=grid.quant() if grid is not None else None)

    def const(self, name: str, data: np.ndarray | torch.Tensor, dtype: str,
              quant: TFLQuant | None = None) -> int:
        arr = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        return self.model.tensor(self.unique(name), tuple(arr.shape), dtype, arr, quant)

    def int_const(self, name: str, values: list[int] | tuple[int, ...]) -> int:
        return self.const(name, np.asarray(list(values), dtype=np.int32), "INT32")

    def emit(self, opcode: str, inputs: list[int], outputs: list[int],
             options: tuple[str, dict[str, Any]] | None = None) -> None:
        self.model.op(opcode, inputs, outputs, options)

    # -- grids --------------------------------------------------------------------------------
    def qparams(self, qdq: fx.Node) -> tuple[QParams, str]:
        path = self.cp.quantizers.get(qdq.name, str(qdq.args[6]))
        fq = self._quantizers.get(path)
        if fq is None:
            raise ExportError(f"captured quantizer {bounded(path)!r} is not in the model")
        return fq.qparams(), path

    def grid(self, qdq: fx.Node) -> Grid:
        qp, path = self.qparams(qdq)
        return grid_of(qp, path)

    # -- layout -------------------------------------------------------------------------------
    def get(self, v: Dyn, perm: tuple[int, ...] | None = None) -> int:
        """``v``'s tensor in layout ``perm`` (default: torch's order), transposing once."""
        perm = identity(v.rank) if perm is None else perm
        if perm == v.perm:
            return v.tensor
        # TFLite tensor t has dims v.perm; we want dims perm: t' = transpose(t, p) with
        # perm[i] = v.perm[p[i]].  The cache is keyed by the transposition: one TFLite tensor
        # can stand for several torch tensors (x and x.transpose(-2, -1) share it).
        pos = invert(v.perm)
        p = tuple(pos[d] for d in perm)
        key = (v.tensor, p)
        if key in self._layouts:
            return self._layouts[key]
        name = self.model.tensors[v.tensor].name
        out = self.new(f"{name}_t", permuted(v.shape, perm), v.grid)
        self.emit("TRANSPOSE", [v.tensor, self.int_const(f"{name}_perm", p)], [out])
        self._layouts[key] = out
        return out

    def as_layout(self, v: Dyn, perm: tuple[int, ...]) -> Dyn:
        return Dyn(self.get(v, perm), perm, v.grid, v.shape)

    # -- float / quantized transitions ---------------------------------------------------------
    def dequantized(self, v: Dyn) -> Dyn:
        """``v`` as float32 (DEQUANTIZE once per tensor)."""
        if v.grid is None:
            return v
        t = self._float_of.get(v.tensor)
        if t is None:
            name = self.model.tensors[v.tensor].name
            t = self.new(f"{name}_float", permuted(v.shape, v.perm), None)
            self.emit("DEQUANTIZE", [v.tensor], [t])
            self._float_of[v.tensor] = t
        return Dyn(t, v.perm, None, v.shape)

    def quantized(self, v: Dyn, grid: Grid, name: str) -> Dyn:
        """``v`` on ``grid``: QUANTIZE from float, requantizing QUANTIZE from another grid."""
        if grid.same(v.grid):
            return v
        out = self.new(name, permuted(v.shape, v.perm), grid)
        self.emit("QUANTIZE", [v.tensor], [out])
        return Dyn(out, v.perm, grid, v.shape)

    # -- node helpers ---------------------------------------------------------------------------
    def value(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.values[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self.value(x) for x in a)
        return a

    def shape(self, n: fx.Node) -> tuple[int, ...]:
        val = n.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise ExportError(f"node {n.name} has no tensor shape")
        return tuple(int(s) for s in val.shape)

    def users(self, n: fx.Node) -> list[fx.Node]:
        return list(n.users)

    def output_grid(self, n: fx.Node, fusable: bool = True) -> tuple[Grid | None, list[fx.Node],
                                                                      str]:
        """How op ``n``'s output is quantized: ``(grid, nodes it stands for, fused act)``.

        The grid of the quantizer that is ``n``'s only consumer -- through a relu / relu6
        (``fused act`` ``RELU`` / ``RELU6``) when ``fusable`` -- or ``(None, [], "NONE")``.
        """
        if not self.quantize:
            return None, [], "NONE"
        users = self.users(n)
        act = "NONE"
        chain: list[fx.Node] = []
        while len(users) == 1:
            u = users[0]
            if u.op == "call_function" and u.target is QDQ and u.args[0] is n:
                return self.grid(u), [*chain, u], act
            kind = clip_kind(u) if fusable and act == "NONE" else None
            if kind is None or u.args[0] is not n:
                break
            act, chain, n = kind, [u], u
            users = self.users(u)
        return None, [], "NONE"

    def note_float(self, n: fx.Node, why: str) -> None:
        self.float_ops.append((n.name, why))


_RELU_TARGETS = {torch.ops.aten.relu.default: "RELU", torch.ops.aten.relu_.default: "RELU",
                 torch.ops.aten.relu6.default: "RELU6"}


def clip_kind(n: fx.Node) -> str | None:
    """``RELU`` / ``RELU6`` when node ``n`` is one of those clips (hardtanh / clamp forms too)."""
    if n.op != "call_function":
        return None
    if n.target in _RELU_TARGETS:
        return _RELU_TARGETS[n.target]
    name = getattr(n.target, "__name__", "")
    if name.startswith(("hardtanh", "clamp")):
        lo = n.args[1] if len(n.args) > 1 else n.kwargs.get("min", n.kwargs.get("min_val"))
        hi = n.args[2] if len(n.args) > 2 else n.kwargs.get("max", n.kwargs.get("max_val"))
        if name.startswith("hardtanh"):
            lo = -1.0 if lo is None else lo
            hi = 1.0 if hi is None else hi
        if lo == 0 and hi == 6:
            return "RELU6"
        if lo == 0 and hi is None:
            return "RELU"
    return None


def is_getitem(n: fx.Node) -> bool:
    return n.op == "call_function" and n.target is operator.getitem
