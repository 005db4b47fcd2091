"""Exact integer accumulation (the int32 accumulator of an integer kernel) with float kernels.

A conv / matmul over integer codes is exact in float32 as long as every partial sum stays below
2^24 in magnitude, whatever order the float kernel sums in.  Every partial sum of output channel
``c`` is bounded by ``sum_k |w[c, k]| * max|x|`` (plus ``|bias[c]|``), so each function checks that
bound first: within it, one float32 kernel call; beyond it, the reduction is split into chunks
that each stay within it -- two halves (the bias in the first) are added in float32, whose one
rounding of their exact sum is ``float32(acc)``; more chunks are summed in float64, exact -- or,
where no split stays within the bound, the whole op runs in float64.  Either way the result is
``float32(acc)``: the exact int32 accumulator rounded once to float32, which is what a runtime's
``float(acc)`` conversion gives.

float32 kernels are only trusted at full precision: with
``torch.set_float32_matmul_precision("high" | "medium")`` (TF32 / bf16 passes) every call runs in
float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["EXACT_FLOAT32", "Route", "accumulation_route", "accumulate", "exact_conv",
           "exact_linear", "exact_matmul"]

EXACT_FLOAT32 = float(2**24)
"""Integers up to this magnitude are exact float32 values, and so are sums staying below it."""
_LIMIT = EXACT_FLOAT32 - 1.0


def _full_precision() -> bool:
    return torch.get_float32_matmul_precision() == "highest"


def _chunks(per_input: Tensor, limit: float) -> list[tuple[int, int]] | None:
    """Consecutive ranges of the reduction axis whose bound stays within ``limit`` (``per_input``:
    the bound contributed by each reduction index); None when one index alone exceeds it."""
    if bool((per_input > limit).any()):
        return None
    ranges, start, acc = [], 0, 0.0
    for i, v in enumerate(per_input.tolist()):
        if acc + v > limit:
            ranges.append((start, i))
            start, acc = i, 0.0
        acc += v
    ranges.append((start, per_input.numel()))
    return ranges


def _finish(total: Tensor, bias: Tensor | None, channel_view: tuple[int, ...]) -> Tensor:
    """``float32(total + bias)`` from an exact float64 ``total``."""
    if bias is not None:
        total = total + bias.double().reshape(channel_view)
    return total.to(torch.float32)


@dataclass(frozen=True)
class Route:
    """How an exact accumulation runs, decided from the weight codes, bias and input bound alone
    (so a kernel decides once for its constant weights): ``kind`` ``"float32"`` (one call),
    ``"halves"`` (two float32 calls, the bias in the first, one float32 add), ``"chunks"`` (float32
    calls over ``ranges`` of the reduction axis, summed in float64) or ``"float64"``."""

    kind: str
    ranges: tuple[tuple[int, int], ...] = ()


def accumulation_route(w: Tensor, bias: Tensor | None, x_bound: float,
                       splittable: bool) -> Route:
    """The :class:`Route` for centred weight codes ``w`` (``[C_out, reduction, *rest]``), int32
    bias codes and the input bound ``max |x|``; ``splittable``: whether the reduction axis may be
    split (not for grouped convs)."""
    w_abs = w.detach().abs()  # float32 sums of |codes| are exact (< 2^24 per channel)
    per_channel = w_abs.sum(tuple(range(1, w.dim()))).double() * x_bound
    if bias is not None:
        per_channel = per_channel + bias.detach().abs().double()
    if bool((per_channel <= _LIMIT).all()):
        return Route("float32")
    if splittable:
        per_pair = w_abs.sum(tuple(range(2, w.dim()))) if w.dim() > 2 else w_abs  # [C_out, red]
        per_input = per_pair.amax(0).double() * x_bound
        if bias is not None:  # two float32 halves, the bias in the first: one float32 add
            halves = _chunks(per_input, _LIMIT - float(bias.detach().abs().max()))
        else:
            halves = _chunks(per_input, _LIMIT)
        if halves is not None and len(halves) == 2:
            return Route("halves", (*halves,))
        ranges = _chunks(per_input, _LIMIT)
        if ranges is not None and len(ranges) > 1:
            return Route("chunks", tuple(ranges))
    return Route("float64")


def accumulate(
    route: Route, x: Tensor, w: Tensor, bias: Tensor | None,
    call: Callable[[Tensor, Tensor, Tensor | None], Tensor], channel_view: tuple[int, ...],
    x_axis: int,
) -> Tensor:
    """``float32(call(x, w) + bias)`` exactly, along ``route`` (:func:`accumulation_route` of the
    same ``w``, ``bias`` and a bound on ``|x|``); ``w`` is split along its axis 1, ``x`` along
    ``x_axis``.  float32 kernels below full matmul precision: float64."""
    kind = route.kind if _full_precision() else "float64"
    if kind == "float32":
        return call(x.float(), w.float(), None if bias is None else bias.float())
    if kind == "halves":
        (lo, mid), (_, hi) = route.ranges
        first = call(x.narrow(x_axis, lo, mid - lo).float(), w.narrow(1, lo, mid - lo).float(),
                     None if bias is None else bias.float())
        # both halves are exact integers in float32; IEEE addition rounds their exact sum
        # once: float32(acc), as the float64 sum rounded to float32
        return first.add_(call(x.narrow(x_axis, mid, hi - mid).float(),
                               w.narrow(1, mid, hi - mid).float(), None))
    if kind == "chunks":
        total = None
        for lo, hi in route.ranges:
            part = call(x.narrow(x_axis, lo, hi - lo).float(),
                        w.narrow(1, lo, hi - lo).float(), None).double()
            total = part if total is None else total.add_(part)
        assert total is not None
        return _finish(total, bias, channel_view)
    return _finish(call(x.double(), w.double(), None), bias, channel_view)


def _bounded(
    x: Tensor, w: Tensor, bias: Tensor | None, x_bound: float,
    call: Callable[[Tensor, Tensor, Tensor | None], Tensor], channel_view: tuple[int, ...],
    x_axis: int, splittable: bool,
) -> Tensor:
    """``float32(call(x, w) + bias)`` exactly; ``w``: ``[C_out, reduction, *rest]``, split along
    its axis 1 (``x``'s ``x_axis``)."""
    route = accumulation_route(w, bias, x_bound, splittable)
    return accumulate(route, x, w, bias, call, channel_view, x_axis)


def exact_conv(
    conv: Callable[[Tensor, Tensor, Tensor | None], Tensor], x: Tensor, w: Tensor,
    bias: Tensor | None, x_bound: float, groups: int,
) -> Tensor:
    """``float32`` of the exact integer ``conv(x, w) + bias``.

    Args:
        conv: ``conv(x, w, bias)`` with the layer's geometry (stride, padding, groups ...).
        x: centred input codes ``q - zp`` (any float dtype), NC + spatial.
        w: centred weight codes ``[C_out, C_in / groups, *kernel]``.
        bias: int32 bias codes ``[C_out]`` (any dtype holding them exactly) or None.
        x_bound: ``max |q - zp|`` over the input grid.
        groups: the conv's groups (grouped convs are split along input channels only when
            ``groups == 1``; a grouped conv beyond the bound runs in float64).
    """
    view = (1, -1) + (1,) * (x.dim() - 2)
    return _bounded(x, w, bias, x_bound, conv, view, 1, groups == 1)


def exact_linear(x: Tensor, w: Tensor, bias: Tensor | None, x_bound: float) -> Tensor:
    """``float32`` of the exact integer ``x @ w.T + bias`` (``w``: ``[C_out, K]``)."""
    return _bounded(x, w, bias, x_bound, torch.nn.functional.linear, (-1,), -1, True)


def exact_matmul(a: Tensor, b: Tensor, a_bound: float, b_bound: float) -> Tensor:
    """``float32`` of the exact integer ``a @ b`` of two centred code tensors."""
    k = a.shape[-1]
    if _full_precision() and k * a_bound * b_bound <= _LIMIT:
        return torch.matmul(a.float(), b.float())
    step = int(_LIMIT // max(1.0, a_bound * b_bound))
    if _full_precision() and step >= 1:
        total = None
        for lo in range(0, k, step):
            n = min(step, k - lo)
            part = torch.matmul(a.narrow(-1, lo, n).float(), b.narrow(-2, lo, n).float()).double()
            total = part if total is None else total.add_(part)
        assert total is not None
        return total.to(torch.float32)
    return torch.matmul(a.double(), b.double()).to(torch.float32)
