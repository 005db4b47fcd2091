"""The grids the runtime kernels read, once per forward pass.

:class:`Grid` is a per-tensor quantizer's grid as the kernels use it.  Inside
:func:`one_forward` (one forward pass of the runtime simulation) each settled quantizer's grid
is read once (:func:`grid_of`, :func:`qparams_of`: a conv's output grid is the next conv's input
grid); a kernel that saturates onto its output quantizer's grid itself records its result
(:func:`mark_on_grid`), and :class:`SkipOnGrid` -- standing in for that quantizer and for the
clips its grid implies -- passes that very tensor through.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..fake_quant import FakeQuantize
from ..numerics import QParams, native
from . import ort

__all__ = ["Grid", "one_forward", "qparams_of", "grid_of", "mark_on_grid", "SkipOnGrid"]

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


def qparams_of(fq: FakeQuantize) -> QParams:
    """``fq.qparams()``, read once per :func:`one_forward` block."""
    memo = _MEMO.get()
    if memo is None:
        return fq.qparams()
    key = ("qp", id(fq))
    qp = memo.get(key)  # type: ignore[call-overload]
    if qp is None:
        qp = memo[key] = fq.qparams()  # type: ignore[index]
    return qp


def grid_of(fq: FakeQuantize) -> Grid:
    """``Grid(fq)``, built once per :func:`one_forward` block."""
    memo = _MEMO.get()
    if memo is None:
        return Grid(fq)
    g = memo.get(id(fq))
    if g is None:
        g = memo[id(fq)] = Grid(fq)
    return g


def mark_on_grid(t: Tensor, fq: FakeQuantize) -> Tensor:
    """Record that ``t`` is already ``fq``'s output (saturated values of its grid) in this
    :func:`one_forward` block: the quantizer, and clips its grid implies, pass it through
    (:class:`SkipOnGrid`)."""
    memo = _MEMO.get()
    if memo is not None:
        memo[("on grid", id(fq))] = t  # type: ignore[index]
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
        if not args and not kwargs and memo is not None and memo.get(
                ("on grid", id(self.fq))) is x:  # type: ignore[call-overload]
            return x
        return self.inner(x, *args, **kwargs)


class Grid:
    """A per-tensor quantizer's grid as the kernels use it: float32 0-d scale, int zero point,
    code bounds, and the largest ``|code - zero_point|``."""

    __slots__ = ("bound", "qmax", "qmin", "qp", "scale", "zp")

    def __init__(self, fq: FakeQuantize) -> None:
        qp = qparams_of(fq)
        self.qp = qp
        self.scale = qp.scale.reshape(()).to(_F32)
        self.zp = int(qp.zero_point.reshape(()))
        self.qmin, self.qmax = qp.dtype.qmin, qp.dtype.qmax
        self.bound = float(max(self.zp - self.qmin, self.qmax - self.zp))

    def centred(self, x: Tensor) -> Tensor:
        """``q - zp`` of a tensor on this grid: ``x == (q - zp) * scale`` in float32, and
        ``x * float32(1 / scale)`` is within 3 float32 roundings of that integer (< 2^20 in
        magnitude), so rounding recovers it exactly."""
        inv = 1.0 / self.scale
        fast = native.scale_round(x, inv) if x.dtype == _F32 else None
        return fast if fast is not None else ort.round_(torch.mul(x.to(_F32), inv))

    def codes(self, x: Tensor) -> Tensor:
        """The raw codes ``q`` of a tensor on this grid."""
        inv = 1.0 / self.scale
        fast = native.scale_round(x, inv, add=self.zp) if x.dtype == _F32 else None
        return fast if fast is not None else self.centred(x).add_(self.zp)

    def value(self, codes: Tensor) -> Tensor:
        """Dequantize raw codes: ``(q - zp) * scale`` in float32 (ONNX DequantizeLinear)."""
        return codes.sub_(self.zp).mul_(self.scale)
