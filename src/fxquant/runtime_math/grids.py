"""The grids the runtime kernels read, once per forward pass.

:class:`Grid` is a per-tensor quantizer's grid as the kernels use it.  Inside
:func:`one_forward` (one forward pass of the runtime simulation) each settled quantizer's grid
is read once (:func:`grid_of`, :func:`qparams_of`: a conv's output grid is the next conv's input
grid).  Across passes it is derived again only when the quantizer's scale / zero point changed
(:class:`fxquant.numerics.held.Snapshot`), so a kernel can keep constants built from the
very :class:`Grid` / :class:`QParams` objects it was given.  A kernel that saturates onto its
output quantizer's grid itself records its result (:func:`mark_on_grid`), and
:class:`SkipOnGrid` -- standing in for that quantizer and for the clips its grid implies --
passes that very tensor through.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..fake_quant import FakeQuantize, LearnableFakeQuantize
from ..numerics import QParams, native
from ..numerics.held import Snapshot
from . import ort

__all__ = ["Grid", "one_forward", "qparams_of", "grid_of", "check_kept", "checked", "mark_on_grid",
           "SkipOnGrid"]

_F32 = torch.float32

_MEMO: contextvars.ContextVar[dict[int, Any] | None] = contextvars.ContextVar(
    "fxquant_runtime_grids", default=None)


@contextlib.contextmanager
def one_forward() -> Iterator[None]:
    """Inside this block each quantizer's grid is read once and reused by every kernel that
    reads it (a conv's output grid is the next conv's input grid).  For one forward pass of the
    runtime simulation: a kernel only reads *settled* quantizers, whose grids do not change
    while the model runs."""
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


class _Held:
    """A quantizer's qparams (and per-tensor grid) with the snapshot they were read from."""

    __slots__ = ("grid", "qp", "snapshot")

    def __init__(self, snapshot: Snapshot | None, qp: QParams) -> None:
        self.snapshot, self.qp = snapshot, qp
        self.grid: Grid | None = None


_HELD: weakref.WeakKeyDictionary[FakeQuantize, _Held] = weakref.WeakKeyDictionary()

_KNOWN_QPARAMS = (FakeQuantize._applied_scale_zero_point,
                  LearnableFakeQuantize._applied_scale_zero_point)
"""How the library's quantizers derive their applied grid: from ``scale``, ``zero_point``,
``dtype`` and ``eps`` only.  A subclass that derives it otherwise is read afresh every pass."""


def _sources(fq: FakeQuantize) -> tuple[tuple[Tensor, Tensor], tuple[Any, ...]]:
    # scale / zero point: buffers, or parameters of a learnable quantizer (read from the module's
    # tables directly: this runs for every quantizer at every pass)
    d = fq.__dict__
    buffers, params = d["_buffers"], d["_parameters"]
    scale = buffers.get("scale") if "scale" in buffers else params.get("scale")
    zp = buffers.get("zero_point") if "zero_point" in buffers else params.get("zero_point")
    if scale is None or zp is None:  # kept elsewhere by a subclass
        scale, zp = fq.scale, fq.zero_point
    return (scale, zp), (type(fq), fq.dtype, fq.ch_axis, fq.scale_math, fq.eps)


def _held(fq: FakeQuantize) -> _Held:
    """``fq``'s qparams, read again only when its scale / zero point / grid changed."""
    memo = _MEMO.get()
    key = ("held", id(fq))
    if memo is not None:
        entry = memo.get(key)  # type: ignore[call-overload]
        if entry is not None:
            return entry
    if type(fq)._applied_scale_zero_point not in _KNOWN_QPARAMS:
        entry = _Held(None, fq.qparams())
    else:
        tensors, extra = _sources(fq)
        entry = _HELD.get(fq)
        if entry is None or entry.snapshot is None or not entry.snapshot.holds(tensors, extra):
            entry = _HELD[fq] = _Held(Snapshot(tensors, extra), fq.qparams())
    if memo is not None:
        memo[key] = entry  # type: ignore[index]
    return entry


def qparams_of(fq: FakeQuantize) -> QParams:
    """``fq.qparams()``, read once per :func:`one_forward` block -- the same object from pass to
    pass while the quantizer's grid holds."""
    if _MEMO.get() is None:
        return fq.qparams()
    return _held(fq).qp


def grid_of(fq: FakeQuantize) -> Grid:
    """``Grid(fq.qparams())``, built once per :func:`one_forward` block -- the same object from
    pass to pass while the quantizer's grid holds."""
    if _MEMO.get() is None:
        return Grid(fq.qparams())
    entry = _held(fq)
    if entry.grid is None:
        entry.grid = Grid(entry.qp)
    return entry.grid


def check_kept(quantizers: Iterable[FakeQuantize],
               kept: Iterable[tuple[Any, Sequence[Tensor | None], Snapshot]]) -> bool:
    """At the start of a :func:`one_forward` pass: check the kept grid of every quantizer in
    ``quantizers`` and every ``(constant, its sources now, its snapshot)`` in ``kept`` with one
    native comparison.  When all hold they are marked for this pass (:func:`qparams_of` /
    :func:`grid_of` and :func:`checked` then skip their own checks); otherwise nothing is marked
    and each is checked where it is read (only what changed is rebuilt).  Returns whether all
    held."""
    memo = _MEMO.get()
    if memo is None:
        return False
    marks: list[tuple[Any, Any]] = []
    tensors: list[Tensor | None] = []
    copies: list[Tensor | None] = []
    seen: set[int] = set()  # a conv's output quantizer is the next kernel's input quantizer
    for fq in quantizers:
        key = ("held", id(fq))
        if (id(fq) in seen or key in memo
                or type(fq)._applied_scale_zero_point not in _KNOWN_QPARAMS):
            continue
        seen.add(id(fq))
        entry = _HELD.get(fq)
        if entry is None or entry.snapshot is None:
            continue
        sources, extra = _sources(fq)
        if extra != entry.snapshot.extra:
            return False
        marks.append((key, entry))
        tensors.extend(sources)
        copies.extend(entry.snapshot.copies)
    for constant, sources, snapshot in kept:
        if len(sources) != len(snapshot.copies):
            return False
        marks.append((("kept", id(constant)), constant))
        tensors.extend(sources)
        copies.extend(snapshot.copies)
    if not marks:
        return False
    same = native.same_bytes(tensors, copies)
    if same is None:  # no native kernels, or a tensor off the CPU: checked where read
        return False
    if same:
        for key, value in marks:
            memo[key] = value  # type: ignore[index]
    return same


def checked(constant: Any) -> bool:
    """Whether :func:`check_kept` saw ``constant``'s sources hold in this pass."""
    memo = _MEMO.get()
    return memo is not None and memo.get(("kept", id(constant))) is constant  # type: ignore[call-overload]


def mark_on_grid(t: Tensor, fq: FakeQuantize) -> Tensor:
    """Record that ``t`` is already ``fq``'s output (saturated values of its grid) in this
    :func:`one_forward` block: the quantizer, and clips its grid implies, pass it through
    (:class:`SkipOnGrid`)."""
    memo = _MEMO.get()
    if memo is not None:
        # a weak reference: the memo must not keep the pass's activations alive
        memo[("on grid", id(fq))] = weakref.ref(t)  # type: ignore[index]
    return t


class SkipOnGrid(nn.Module):
    """Stands in for ``fq`` -- or for a clip its grid implies -- after a kernel that produces
    ``fq``'s values itself: the very tensor the kernel recorded passes through unchanged (the
    module would return it bit for bit: a saturated grid value is its own fake quantization, and
    inside the clip); anything else -- the kernel fell back to the float op -- runs ``inner``."""

    def __init__(self, inner: nn.Module, fq: FakeQuantize) -> None:
        super().__init__()
        self.inner = inner
        self.fq = fq

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        memo = _MEMO.get()
        ref = None if args or kwargs or memo is None else memo.get(
            ("on grid", id(self.fq)))  # type: ignore[call-overload]
        if ref is not None and ref() is x:
            return x
        return self.inner(x, *args, **kwargs)


class Grid:
    """A per-tensor quantizer's grid as the kernels use it: float32 0-d scale (and its float32
    reciprocal), int zero point, code bounds, the largest ``|code - zero_point|`` and the
    ``extent``: the lowest and highest grid values as Python floats."""

    __slots__ = ("bound", "extent", "inverse", "qmax", "qmin", "qp", "scale", "zp")

    def __init__(self, qp: QParams) -> None:
        self.qp = qp
        self.scale = qp.scale.reshape(()).to(_F32)
        self.inverse = 1.0 / self.scale  # float32 1 / scale
        self.zp = int(qp.zero_point.reshape(()))
        self.qmin, self.qmax = qp.dtype.qmin, qp.dtype.qmax
        self.bound = float(max(self.zp - self.qmin, self.qmax - self.zp))
        self.extent = (float((self.qmin - self.zp) * self.scale),
                       float((self.qmax - self.zp) * self.scale))

    def centred(self, x: Tensor) -> Tensor:
        """``q - zp`` of a tensor on this grid: ``x == (q - zp) * scale`` in float32, and
        ``x * float32(1 / scale)`` is within 3 float32 roundings of that integer (< 2^20 in
        magnitude), so rounding recovers it exactly."""
        inv = self.inverse
        fast = native.scale_round(x, inv) if x.dtype == _F32 else None
        return fast if fast is not None else ort.round_(torch.mul(x.to(_F32), inv))

    def codes(self, x: Tensor) -> Tensor:
        """The raw codes ``q`` of a tensor on this grid."""
        inv = self.inverse
        fast = native.scale_round(x, inv, add=self.zp) if x.dtype == _F32 else None
        return fast if fast is not None else self.centred(x).add_(self.zp)

    def value(self, codes: Tensor) -> Tensor:
        """Dequantize raw codes: ``(q - zp) * scale`` in float32 (ONNX DequantizeLinear)."""
        return codes.sub_(self.zp).mul_(self.scale)
