"""AdaRound data: each layer's quantized-model input and float-model target, cached as a
bounded set of rows (im2col rows for convolutions) and served in random mini-batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..errors import DataError
from ..graph.ops import MacRule, clip_bounds, layer_traits
from ..graph.report import num_inputs_of
from ..modelio import ModelInputs, call_model, iter_inputs, model_device
from . import adaround_math as am

_CACHE_BYTES = 256 * 2**20  # bound on one layer's cached inputs + targets


# -- capture --------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by a capture hook to end a forward pass early."""


def materialize(qmodel: nn.Module, data: Any, num_batches: int | None) -> list[ModelInputs]:
    """The calibration batches (:mod:`fxquant.modelio`) on the model's device, in memory."""
    batches = list(iter_inputs(data, num_inputs_of(qmodel), model_device(qmodel), num_batches))
    if not batches:
        raise DataError("the data yielded no batch; pass at least one batch")
    return batches


def module_io(
    model: nn.Module, module: nn.Module, batches: list[ModelInputs], output: bool
) -> Iterator[Tensor]:
    """The input (``output=False``) or output of ``module``'s first call, batch by batch.

    Each forward pass stops right after the module, so later layers are not computed.  Run it
    under ``torch.no_grad()`` (a generator must not switch the grad mode itself).
    """
    seen: list[Tensor] = []

    def hook(mod: nn.Module, args: tuple, out: Any) -> None:
        seen.append((out if output else args[0]).detach())
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        for inputs in batches:
            seen.clear()
            try:
                call_model(model, inputs)
            except _Stop:
                pass
            if not seen:
                raise RuntimeError(f"{type(module).__name__} was not called by the model")
            yield seen[0]
    finally:
        handle.remove()


def following_activation(qmodel: nn.Module, name: str) -> Callable[[Tensor], Tensor] | None:
    """The clip-like activation (relu, relu6, hardtanh) that is the only user of layer
    ``name``'s only call, as a function, if any."""
    if not isinstance(qmodel, fx.GraphModule):
        return None
    calls = [n for n in qmodel.graph.nodes if n.op == "call_module" and n.target == name]
    if len(calls) != 1 or len(calls[0].users) != 1:
        return None
    bounds = clip_bounds(next(iter(calls[0].users)), qmodel)
    if bounds is None:
        return None
    lo, hi = bounds
    return lambda y: torch.clamp(y, lo, hi)


@dataclass
class _LayerCache:
    """Cached inputs ``x`` and float targets ``y`` of one layer.

    ``rows``: ``x`` is ``[R, K]`` (im2col / linear rows), ``y`` ``[R, C_out]``; otherwise whole
    examples for the module's own forward (a transposed convolution).
    """

    x: Tensor
    y: Tensor
    rows: bool


def _batch_len(x: Tensor) -> int:
    return x.shape[0] if x.dim() > 1 else 1


def _pick(count: int, keep: int, gen: torch.Generator) -> Tensor | None:
    """``keep`` random indices below ``count`` (None: keep them all)."""
    return None if keep >= count else torch.randperm(count, generator=gen)[:keep]


def _rows_of(m: nn.Module, xq: Tensor, yf: Tensor, keep: int, gen: torch.Generator):
    """``keep`` random (input row, target row) pairs of one batch."""
    if layer_traits(m).macs is MacRule.LINEAR:
        xr, yr = xq.reshape(-1, m.in_features), yf.reshape(-1, m.out_features)
        idx = _pick(xr.shape[0], keep, gen)
        return (xr, yr) if idx is None else (xr[idx.to(xr.device)], yr[idx.to(yr.device)])
    positions = yf[0, 0].numel()
    idx = _pick(yf.shape[0] * positions, keep, gen)
    idx = (torch.arange(yf.shape[0] * positions) if idx is None else idx).to(xq.device)
    n_idx, pos = torch.div(idx, positions, rounding_mode="floor"), idx % positions
    return am.conv_rows(m, xq, n_idx, pos), yf.flatten(2)[n_idx, :, pos]


def build_layer_cache(
    qmodel: nn.Module, fmodel: nn.Module, name: str, batches: list[ModelInputs],
    act: Callable[[Tensor], Tensor] | None, max_samples: int, gen: torch.Generator,
) -> _LayerCache:
    """Quantized-model inputs and float-model targets of layer ``name`` (see module doc).

    Rows (or examples) are drawn from every batch in proportion to its size.
    """
    qmod, fmod = qmodel.get_submodule(name), fmodel.get_submodule(name)
    n_total = sum(b.batch_size() for b in batches)
    rows = layer_traits(qmod).macs in (MacRule.LINEAR, MacRule.CONV)
    if rows:
        k = qmod.weight[0].numel() * getattr(qmod, "groups", 1)  # im2col / input row length
        c_out = qmod.weight.shape[0]
        keep_total = min(max_samples, max(1, _CACHE_BYTES // (4 * (k + c_out))))
    xs, ys = [], []
    with torch.no_grad():
        for xq, yf in zip(module_io(qmodel, qmod, batches, False),
                          module_io(fmodel, fmod, batches, True), strict=True):
            yf = yf if act is None else act(yf)
            n = _batch_len(xq)
            if not rows:  # whole examples, as many as fit the budget
                per_example = (xq[0].numel() + yf[0].numel()) * xq.element_size()
                keep_total = max(1, min(n_total, _CACHE_BYTES // per_example))
            keep = max(1, round(keep_total * n / max(n, n_total)))
            if rows:
                xr, yr = _rows_of(qmod, xq, yf, keep, gen)
            else:
                idx = _pick(n, keep, gen)
                xr, yr = (xq, yf) if idx is None else (xq[idx.to(xq.device)], yf[idx.to(yf.device)])
            xs.append(xr.float())
            ys.append(yr.float())
    return _LayerCache(torch.cat(xs).contiguous(), torch.cat(ys).contiguous(), rows)


class _Batches:
    """Mini-batches of a layer cache: contiguous slices of a copy reshuffled every epoch
    (slicing is several times cheaper than gathering random rows at every step)."""

    def __init__(self, cache: _LayerCache, batch_size: int, gen: torch.Generator) -> None:
        self.cache, self.gen = cache, gen
        self.n = cache.x.shape[0]
        self.bs = max(1, min(batch_size, self.n))
        self.pos = self.n  # shuffle on first use
        self.x, self.y = cache.x, cache.y

    def next(self) -> tuple[Tensor, Tensor]:
        if self.pos + self.bs > self.n:
            perm = torch.randperm(self.n, generator=self.gen).to(self.cache.x.device)
            self.x = self.y = None  # free the previous copy first
            self.x = self.cache.x.index_select(0, perm)
            self.y = self.cache.y.index_select(0, perm)
            self.pos = 0
        sl = slice(self.pos, self.pos + self.bs)
        self.pos += self.bs
        return self.x[sl], self.y[sl]
