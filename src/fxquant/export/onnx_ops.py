"""ONNX emitters, part 1: the emitter protocol, helpers, elementwise / binary / shape ops.

An emitter gets the writer (``cx``, see :class:`fxquant.export.onnx_writer.OnnxWriter`), for
modules the module, then the op's arguments as the fx graph passed them, with tensors replaced by
:class:`~fxquant.export.onnx_graph.TensorRef` (or ``Const`` / ``WeightSpec`` for parameters) and
Python values as they were with the example inputs.  It writes float ONNX nodes and returns the
result (``cx.final`` names it after the op); quantizers, weights and biases are the writer's job.

Shapes: view / reshape / flatten / expand use the shapes recorded with the example inputs, with
the batch dimension left symbolic (``0`` = copy, ``-1`` = infer) so that a dynamic-batch model
runs at any batch size.  Sizes the model reads from a tensor (``x.shape[0]``, ``x.size(1)``, and
``+ - * // %`` of them) are :class:`Dim` values: view / reshape / expand (the emitters in
``SIZE_EMITTERS``) compute them in the graph (Shape -> Gather), every other emitter gets their
example value.  ``reshape_as`` / ``view_as`` / ``expand_as`` use ``Shape(other)``.

Layers with parameters, pooling and resizing are in :mod:`fxquant.export.onnx_layers`; the
lookup tables in :mod:`fxquant.export.onnx_emitters`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.fx as fx
from onnx import TensorProto

from ..graph.meta import op_name
from .onnx_graph import TensorRef, onnx_type_of_torch

__all__ = ["UnsupportedOp", "Dim", "symbolic_size", "concrete_sizes"]

_INT64_MAX = 2**63 - 1


class UnsupportedOp(ValueError):
    """An emitter cannot express this use of its op (the writer adds the op name)."""


# -- small helpers --------------------------------------------------------------------------------
def _tup(v: Any, n: int) -> list[int]:
    if isinstance(v, (tuple, list)):
        if len(v) == 1 and n > 1:
            return [int(v[0])] * n
        return [int(a) for a in v]
    return [int(v)] * n


def _axis(d: int, rank: int) -> int:
    return d % rank if rank else d


def _chain(cx, x: str, steps: list[tuple[str, list[str], dict[str, Any]]]) -> TensorRef:
    """Apply ``(op_type, extra_inputs, attrs)`` steps to ``x``; the last one is the result."""
    for op_type, extra, attrs in steps[:-1]:
        x = cx.b.one(op_type, [x, *extra], f"{cx.op}_{op_type.lower()}", **attrs)
    op_type, extra, attrs = steps[-1]
    return cx.final(op_type, [x, *extra], **attrs)


def _out_elem(cx) -> int:
    meta = cx.out_meta
    dtype = getattr(meta, "dtype", None)
    return onnx_type_of_torch(dtype) if dtype is not None else TensorProto.FLOAT


def _operand(cx, v: Any, elem: int) -> str:
    """A binary-op operand as an ONNX name of element type ``elem`` (scalars become consts)."""
    if isinstance(v, (bool, int, float)):
        return cx.scalar(v, TensorRef("", (), elem)).name
    r = cx.ref(v)
    if r.elem_type != elem:
        return cx.b.one("Cast", [r.name], f"{r.name}_cast", to=elem)
    return r.name


def _module(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A function emitter used for a module whose forward takes only tensors."""

    def emit(cx, mod, *args, **kwargs):
        return fn(cx, *args, **kwargs)

    return emit


# -- elementwise ----------------------------------------------------------------------------------
def _unary(op_type: str, **attrs: Any) -> Callable[..., Any]:
    def emit(cx, x, *_, **__):
        return cx.final(op_type, [cx.ref(x).name], **attrs)

    return emit


def _identity(cx, x, *_, **__):
    return x


def _clip(cx, x, lo=None, hi=None) -> TensorRef:
    x = cx.ref(x)
    if isinstance(lo, TensorRef) or isinstance(hi, TensorRef):
        cur = x.name
        if lo is not None:
            cur = cx.b.one("Max", [cur, _operand(cx, lo, x.elem_type)], f"{cx.op}_max")
        if hi is None:
            return cx.final("Identity", [cur])
        return cx.final("Min", [cur, _operand(cx, hi, x.elem_type)])
    ins = [x.name, cx.scalar(lo, x).name if lo is not None else ""]
    if hi is not None:
        ins.append(cx.scalar(hi, x).name)
    return cx.final("Clip", ins)


def _clamp(cx, x, min=None, max=None, **_):
    return _clip(cx, x, min, max)


def _relu6(cx, x, *_, **__):
    return _clip(cx, x, 0.0, 6.0)


def _hardtanh(cx, x, min_val=-1.0, max_val=1.0, *_, **__):
    return _clip(cx, x, min_val, max_val)


def _gelu(cx, x, approximate: str = "none", **_):
    x = cx.ref(x)
    if cx.opset >= 20:
        return cx.final("Gelu", [x.name], approximate=approximate)
    b, f = cx.b, x.name

    def c(v: float) -> str:
        return cx.scalar(v, x).name

    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        x3 = b.one("Mul", [b.one("Mul", [f, f]), f])
        inner = b.one("Add", [f, b.one("Mul", [x3, c(0.044715)])])
        t = b.one("Tanh", [b.one("Mul", [inner, c(math.sqrt(2.0 / math.pi))])])
    else:  # 0.5 x (1 + erf(x / sqrt(2))), as torch computes it
        t = b.one("Erf", [b.one("Mul", [f, c(1.0 / math.sqrt(2.0))])])
    half_x = b.one("Mul", [f, c(0.5)])
    return cx.final("Mul", [half_x, b.one("Add", [t, c(1.0)])])


def _silu(cx, x, *_, **__):
    x = cx.ref(x)
    return cx.final("Mul", [x.name, cx.b.one("Sigmoid", [x.name], f"{cx.op}_sigmoid")])


def _hardswish(cx, x, *_, **__):
    x = cx.ref(x)
    if cx.opset >= 14:
        return cx.final("HardSwish", [x.name])
    hs = cx.b.one("HardSigmoid", [x.name], f"{cx.op}_hardsigmoid", alpha=1 / 6, beta=0.5)
    return cx.final("Mul", [x.name, hs])


def _hardsigmoid(cx, x, *_, **__):
    return cx.final("HardSigmoid", [cx.ref(x).name], alpha=1 / 6, beta=0.5)


def _leaky_relu(cx, x, negative_slope=0.01, *_, **__):
    return cx.final("LeakyRelu", [cx.ref(x).name], alpha=float(negative_slope))


def _elu(cx, x, alpha=1.0, *_, **__):
    return cx.final("Elu", [cx.ref(x).name], alpha=float(alpha))


def _softmax_axis(dim: int | None, rank: int) -> int:
    if dim is None:  # torch's legacy implicit dimension
        return 0 if rank in (0, 1, 3) else 1
    return _axis(dim, rank)


def _softmax_like(op_type: str) -> Callable[..., Any]:
    def emit(cx, x, dim=None, *_, **__):
        x = cx.ref(x)
        return cx.final(op_type, [x.name], axis=_softmax_axis(dim, x.rank))

    return emit


def _pow(cx, x, exponent, *_, **__):
    elem = _out_elem(cx)
    return cx.final("Pow", [_operand(cx, x, elem), _operand(cx, exponent, elem)])


def _rsqrt(cx, x, *_, **__):
    s = cx.b.one("Sqrt", [cx.ref(x).name], f"{cx.op}_sqrt")
    return cx.final("Reciprocal", [s])


# -- binary ---------------------------------------------------------------------------------------
def _binary(op_type: str, swap: bool = False) -> Callable[..., Any]:
    def emit(cx, a, b, *rest, alpha=1, rounding_mode=None, **_):
        if rest:
            alpha = rest[0]
        if rounding_mode is not None:
            raise UnsupportedOp(f"rounding_mode={rounding_mode!r} is not supported")
        if swap:
            a, b = b, a
        elem = _out_elem(cx)
        bn = _operand(cx, b, elem)
        if alpha != 1:
            bn = cx.b.one("Mul", [bn, cx.scalar(alpha, TensorRef("", (), elem)).name])
        return cx.final(op_type, [_operand(cx, a, elem), bn])

    return emit


def _matmul(cx, a, b, *_, **__):
    return cx.final("MatMul", [cx.ref(a).name, cx.ref(b).name])


def _neg(cx, x, *_, **__):
    return cx.final("Neg", [cx.ref(x).name])


def _cat(cx, tensors, dim=0, *_, axis=None, **__):
    refs = [cx.ref(t) for t in tensors]
    dim = axis if axis is not None else dim
    return cx.final("Concat", [r.name for r in refs], axis=_axis(dim, refs[0].rank))


def _stack(cx, tensors, dim=0, *_, **__):
    refs = [cx.ref(t) for t in tensors]
    d = _axis(dim, refs[0].rank + 1)
    axes = cx.b.int64s(f"{cx.op}.axes", [d])
    parts = [cx.b.one("Unsqueeze", [r.name, axes], f"{cx.op}_unsqueeze") for r in refs]
    return cx.final("Concat", parts, axis=d)


def _einsum(cx, equation, *operands, **_):
    if len(operands) == 1 and isinstance(operands[0], (tuple, list)):
        operands = tuple(operands[0])
    return cx.final("Einsum", [cx.ref(o).name for o in operands], equation=equation)


# -- sizes read from tensors -----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Dim:
    """A size read from a graph tensor (``op == "Gather"``, ``operands == (ref, axis)``) or
    computed from such sizes (``op`` an ONNX binary op on ``operands``); ``value`` is its value
    with the example inputs."""

    value: int
    op: str
    operands: tuple[Any, ...]


_DIM_OPS = {operator.add: "Add", operator.sub: "Sub", operator.mul: "Mul",
            operator.floordiv: "Div", operator.mod: "Mod"}


def _has_dim(obj: Any) -> bool:
    if isinstance(obj, Dim):
        return True
    if isinstance(obj, slice):
        return _has_dim((obj.start, obj.stop, obj.step))
    if isinstance(obj, (tuple, list)):
        return any(_has_dim(v) for v in obj)
    if isinstance(obj, dict):
        return any(_has_dim(v) for v in obj.values())
    return False


def concrete_sizes(obj: Any) -> Any:
    """``obj`` with every :class:`Dim` replaced by its example value."""
    if isinstance(obj, Dim):
        return obj.value
    if isinstance(obj, slice) and _has_dim(obj):
        return slice(*(concrete_sizes(v) for v in (obj.start, obj.stop, obj.step)))
    if isinstance(obj, (tuple, list)) and _has_dim(obj):
        items = [concrete_sizes(v) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, dict) and _has_dim(obj):
        return {k: concrete_sizes(v) for k, v in obj.items()}
    return obj


def symbolic_size(cx, node: fx.Node, args: tuple, kwargs: dict, rec: Any) -> Any:
    """The value of a node computing a Python value: :class:`Dim` for sizes read from graph
    tensors (with ``dynamic_batch``), else ``rec``, the value seen with the example inputs."""
    if not cx.dynamic_batch or node.op not in ("call_function", "call_method"):
        return rec
    t = node.target
    src = args[0] if args else None
    if isinstance(src, TensorRef) and src.rank:
        if node.op == "call_function" and t is getattr and args[1:] == ("shape",):
            return tuple(Dim(int(v), "Gather", (src, i)) for i, v in enumerate(rec))
        if node.op == "call_method" and t == "size":
            d = args[1] if len(args) > 1 else kwargs.get("dim")
            if d is None:
                return tuple(Dim(int(v), "Gather", (src, i)) for i, v in enumerate(rec))
            return Dim(int(rec), "Gather", (src, _axis(d, src.rank)))
    if t is operator.getitem and isinstance(src, tuple) and _has_dim(src):
        return src[args[1]]
    if (t in _DIM_OPS and isinstance(rec, int) and len(args) == 2 and _has_dim(args)
            and all(isinstance(a, (Dim, int)) for a in args)):
        return Dim(int(rec), _DIM_OPS[t], tuple(args))
    return rec


def _size_name(cx, d: Any) -> str:
    """A 1-element int64 tensor holding size ``d`` (a :class:`Dim` or an int)."""
    if not isinstance(d, Dim):
        return cx.b.int64s(f"{cx.op}.size", [int(d)])
    cache = cx.size_names
    if id(d) not in cache:
        if d.op == "Gather":
            ref, axis = d.operands
            if ref.name not in cache:
                cache[ref.name] = (cx.b.one("Shape", [ref.name], f"{ref.name}_shape"), ref)
            idx = cx.b.int64s(f"{ref.name}.axis{axis}", [axis])
            name = cx.b.one("Gather", [cache[ref.name][0], idx], f"{ref.name}_size{axis}", axis=0)
        else:
            name = cx.b.one(d.op, [_size_name(cx, a) for a in d.operands], f"{cx.op}_size")
        cache[id(d)] = (name, d)  # d kept alive: its id stays unique
    return cache[id(d)][0]


def _sizes_tensor(cx, sizes: Any) -> str:
    return cx.b.one("Concat", [_size_name(cx, s) for s in sizes], f"{cx.op}_sizes", axis=0)


def _size_args(sizes: tuple, kw: dict) -> tuple:
    if "size" in kw or "shape" in kw:
        sizes = (kw.get("size", kw.get("shape")),)
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    return sizes


# -- shape ops ------------------------------------------------------------------------------------
def _reshape_to(cx, x: TensorRef, out: tuple[int, ...]) -> TensorRef:
    if tuple(x.shape) == tuple(out):
        return x
    target = list(out)
    if cx.dynamic_batch and cx.batch is not None and x.shape and out and x.shape[0] == cx.batch:
        target[0] = 0 if out[0] == cx.batch else -1
    return cx.final("Reshape", [x.name, cx.b.int64s(f"{cx.op}.shape", target)])


def _reshape_recorded(cx, x, *_, **__):
    return _reshape_to(cx, cx.ref(x), cx.out_shape)


def _reshape(cx, x, *sizes, **kw):
    """view / reshape: sizes read from tensors stay symbolic (see the module docstring)."""
    sizes = _size_args(sizes, kw)
    if not _has_dim(sizes):
        return _reshape_recorded(cx, x)
    return cx.final("Reshape", [cx.ref(x).name, _sizes_tensor(cx, sizes)])


def _shape_of_other(cx, other: Any) -> str | None:
    """``Shape(other)`` when ``other`` is a graph tensor (its runtime shape, batch included)."""
    if isinstance(other, TensorRef):
        return cx.b.one("Shape", [other.name], f"{cx.op}_shape")
    return None


def _reshape_as(cx, x, other, *_, **__):
    """``x.reshape_as(other)`` / ``view_as``: reshape to ``other``'s shape at run time."""
    x = cx.ref(x)
    shape = _shape_of_other(cx, other)
    if shape is None:
        return _reshape_to(cx, x, cx.out_shape)
    return cx.final("Reshape", [x.name, shape])


def _expand_as(cx, x, other, *_, **__):
    """``x.expand_as(other)``: expand to ``other``'s shape at run time."""
    x = cx.ref(x)
    shape = _shape_of_other(cx, other)
    if shape is None:
        return _expand(cx, x)
    return cx.final("Expand", [x.name, shape])


def _unflatten(cx, x, dim, sizes):
    """``unflatten(dim, sizes)``: the other dims from ``Shape(x)`` (dynamic batch), or the
    recorded output shape."""
    x = cx.ref(x)
    if not cx.dynamic_batch or not x.rank:
        return _reshape_recorded(cx, x)
    d = _axis(dim, x.rank)
    b = cx.b
    shape = b.one("Shape", [x.name], f"{cx.op}_input_shape")
    parts = []
    if d > 0:
        parts.append(b.one("Slice", [shape, b.int64s(f"{cx.op}.head_start", [0]),
                                     b.int64s(f"{cx.op}.head_end", [d])], f"{cx.op}_head"))
    parts += [_size_name(cx, s) for s in sizes]
    if d < x.rank - 1:
        parts.append(b.one("Slice", [shape, b.int64s(f"{cx.op}.tail_start", [d + 1]),
                                     b.int64s(f"{cx.op}.tail_end", [x.rank])], f"{cx.op}_tail"))
    target = b.one("Concat", parts, f"{cx.op}_sizes", axis=0)
    return cx.final("Reshape", [x.name, target])


def _flatten(cx, x, start_dim=0, end_dim=-1):
    x = cx.ref(x)
    if not x.rank:
        return _reshape_to(cx, x, cx.out_shape)
    start, end = _axis(start_dim, x.rank), _axis(end_dim, x.rank)
    if start == 1 and end == x.rank - 1 and x.rank > 2:
        return cx.final("Flatten", [x.name], axis=1)
    if not cx.dynamic_batch or start >= end:
        return _reshape_to(cx, x, cx.out_shape)
    # leading dims copied (0), the flattened block inferred (-1): any batch size, even when
    # the batch is inside the block
    target = [0] * start + [-1] + list(x.shape[end + 1:])
    return cx.final("Reshape", [x.name, cx.b.int64s(f"{cx.op}.shape", target)])


def _flatten_module(cx, m, x):
    return _flatten(cx, x, m.start_dim, m.end_dim)


def _permute(cx, x, *dims, **kw):
    if "dims" in kw:
        dims = (kw["dims"],)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    x = cx.ref(x)
    return cx.final("Transpose", [x.name], perm=[_axis(d, x.rank) for d in dims])


def _transpose(cx, x, dim0, dim1):
    x = cx.ref(x)
    perm = list(range(x.rank))
    a, b = _axis(dim0, x.rank), _axis(dim1, x.rank)
    perm[a], perm[b] = perm[b], perm[a]
    return cx.final("Transpose", [x.name], perm=perm)


def _t(cx, x):
    x = cx.ref(x)
    if x.rank < 2:
        return x
    return cx.final("Transpose", [x.name], perm=[1, 0])


def _squeeze(cx, x, dim=None):
    x = cx.ref(x)
    if dim is None:
        axes = [i for i, s in enumerate(x.shape)
                if s == 1 and not (i == 0 and cx.dynamic_batch)]
    else:
        dims = dim if isinstance(dim, (tuple, list)) else [dim]
        axes = sorted(_axis(d, x.rank) for d in dims if x.shape[_axis(d, x.rank)] == 1)
    if not axes:
        return x
    return cx.final("Squeeze", [x.name, cx.b.int64s(f"{cx.op}.axes", axes)])


def _unsqueeze(cx, x, dim):
    x = cx.ref(x)
    axes = cx.b.int64s(f"{cx.op}.axes", [_axis(dim, x.rank + 1)])
    return cx.final("Unsqueeze", [x.name, axes])


def _output_names(cx, n: int) -> list[str]:
    """Names of a multi-output op: a ``getitem`` user's name when it is the only reader."""
    by_index: dict[int, list[fx.Node]] = {}
    for u in cx.node.users:
        if u.op == "call_function" and u.target is operator.getitem and isinstance(u.args[1], int):
            by_index.setdefault(u.args[1] % n, []).append(u)
    names = []
    for i in range(n):
        users = by_index.get(i, [])
        base = op_name(users[0]) if len(users) == 1 and op_name(users[0]) else f"{cx.op}.{i}"
        names.append(cx.b.fresh(base))
    return names


def _split(cx, x, _sizes, dim=0, **__):
    x = cx.ref(x)
    metas = cx.out_meta
    d = _axis(dim, x.rank)
    sizes = [m.shape[d] for m in metas]
    names = _output_names(cx, len(sizes))
    cx.b.node("Split", [x.name, cx.b.int64s(f"{cx.op}.split", sizes)], names, axis=d)
    return tuple(TensorRef(nm, m.shape, x.elem_type) for nm, m in zip(names, metas, strict=True))


def _unbind(cx, x, dim=0):
    x = cx.ref(x)
    metas = cx.out_meta
    d = _axis(dim, x.rank)
    parts = cx.b.node("Split", [x.name, cx.b.int64s(f"{cx.op}.split", [1] * len(metas))],
                      [cx.b.fresh(f"{cx.op}_part") for _ in metas], axis=d)
    names = _output_names(cx, len(metas))
    axes = cx.b.int64s(f"{cx.op}.axes", [d])
    for p, nm in zip(parts, names, strict=True):
        cx.b.node("Squeeze", [p, axes], [nm])
    return tuple(TensorRef(nm, m.shape, x.elem_type) for nm, m in zip(names, metas, strict=True))


def _getitem(cx, x, idx):
    if isinstance(x, (tuple, list)):
        return x[idx]
    x = cx.ref(x)
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(not (i is None or i is Ellipsis or isinstance(i, (int, slice))) for i in idx):
        raise UnsupportedOp("tensor indexing with tensors / lists (advanced indexing)")
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    if Ellipsis in idx:
        pos = idx.index(Ellipsis)
        idx = idx[:pos] + (slice(None),) * (x.rank - n_real) + idx[pos + 1:]
    starts, ends, axes, steps, gathers, unsq = [], [], [], [], [], []
    d = out_pos = 0
    for i in idx:
        if i is None:
            unsq.append(out_pos)
            out_pos += 1
            continue
        if isinstance(i, int):
            gathers.append((d, i))
        else:
            if i.step is not None and i.step <= 0:
                raise UnsupportedOp("slices with a non-positive step")
            if i != slice(None):
                starts.append(i.start or 0)
                ends.append(_INT64_MAX if i.stop is None else i.stop)
                axes.append(d)
                steps.append(i.step or 1)
            out_pos += 1
        d += 1
    chain: list[tuple[str, list[str], dict[str, Any]]] = []
    if axes:
        i64 = cx.b.int64s
        chain.append(("Slice", [i64(f"{cx.op}.starts", starts), i64(f"{cx.op}.ends", ends),
                                i64(f"{cx.op}.axes", axes), i64(f"{cx.op}.steps", steps)], {}))
    for dim, k in reversed(gathers):
        kn = cx.b.const(f"{cx.op}.index", np.asarray(k, dtype=np.int64))
        chain.append(("Gather", [kn], {"axis": dim}))
    if unsq:
        chain.append(("Unsqueeze", [cx.b.int64s(f"{cx.op}.unsqueeze_axes", unsq)], {}))
    if not chain:
        return x
    return _chain(cx, x.name, chain)


def _expand(cx, x, *sizes, **kw):
    x = cx.ref(x)
    sizes = _size_args(sizes, kw)
    if _has_dim(sizes):  # -1 (keep) is 1 in ONNX's broadcasting Expand
        keep = [1 if isinstance(s, int) and s == -1 else s for s in sizes]
        return cx.final("Expand", [x.name, _sizes_tensor(cx, keep)])
    out = list(cx.out_shape)
    lead = len(out) - x.rank
    target = [1 if j >= lead and x.shape[j - lead] == o else o for j, o in enumerate(out)]
    return cx.final("Expand", [x.name, cx.b.int64s(f"{cx.op}.shape", target)])


def _repeat(cx, x, *sizes, **__):
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    x = cx.ref(x)
    name = x.name
    if len(sizes) > x.rank:
        lead = cx.b.int64s(f"{cx.op}.axes", list(range(len(sizes) - x.rank)))
        name = cx.b.one("Unsqueeze", [name, lead], f"{cx.op}_unsqueeze")
    return cx.final("Tile", [name, cx.b.int64s(f"{cx.op}.repeats", list(sizes))])


def _cast_recorded(cx, x, *_, **__):
    x = cx.ref(x)
    elem = _out_elem(cx)
    if elem == x.elem_type:
        return x
    return cx.final("Cast", [x.name], to=elem)


def _reduce(op_type: str) -> Callable[..., Any]:
    def emit(cx, x, dim=None, keepdim=False, *_, dtype=None, axis=None, **__):
        x = cx.ref(x)
        dim = axis if dim is None else dim
        if dim is None or (isinstance(dim, (tuple, list)) and not dim):
            axes = list(range(x.rank))
        else:
            dims = dim if isinstance(dim, (tuple, list)) else [dim]
            axes = sorted(_axis(d, x.rank) for d in dims)
        if op_type == "ReduceMean" and keepdim and x.rank >= 3 and axes == list(range(2, x.rank)):
            return cx.final("GlobalAveragePool", [x.name])
        if op_type == "ReduceSum" or cx.opset >= 18:
            return cx.final(op_type, [x.name, cx.b.int64s(f"{cx.op}.axes", axes)],
                            keepdims=int(keepdim))
        return cx.final(op_type, [x.name], axes=axes, keepdims=int(keepdim))

    return emit


def _module_attr(fn: Callable[..., Any], *attrs: str) -> Callable[..., Any]:
    """A module emitter calling ``fn(cx, x, m.<attr>...)``."""

    def emit(cx, m, x, *_, **__):
        return fn(cx, x, *(getattr(m, a) for a in attrs))

    return emit
