"""BatchNorm in training mode with batch statistics over all ranks (SyncBatchNorm on any backend).

Used by :class:`fxquant.nn.ConvBn2d` (and 1d / 3d) under an active distributed sync: the
BatchNorm whose statistics are folded into the quantized weight normalises with the mean and
variance of the *global* batch (every rank's samples), and its running statistics -- what gets
folded for deployment -- are updated from them, identically on every rank.  Forward and backward
equal (up to float summation order) one process running the concatenated batch.

torch's ``nn.SyncBatchNorm`` does the same on GPUs only; this one works on CPU (gloo) too.  Each
rank computes its per-channel count, mean and (biased) variance; one differentiable all-reduce
(:class:`AllReduceSum`: its backward all-reduces the gradients) gathers them as rows of a
zero-padded ``[world, 3, C]`` float64 tensor, and the global moments are
combined with the parallel-variance formula ``var = sum n_r (var_r + (mean_r - mean)^2) / N``
(no cancellation, unlike ``E[x^2] - E[x]^2``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["sync_batch_norm", "AllReduceSum"]


class AllReduceSum(torch.autograd.Function):
    """``all_reduce(x, SUM)`` with a gradient: the loss of every rank depends on the sum, so the
    gradient of ``x`` is the sum of every rank's output gradient (an all-reduce in backward)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return AllReduceSum.apply(grad, ctx.group), None


def sync_batch_norm(bn: nn.Module, x: Tensor, group: Any = None) -> Tensor:
    """``bn(x)`` in training mode with the statistics of the batch over all ranks of ``group``.

    ``bn`` is a ``BatchNorm1d/2d/3d`` in training mode; its running statistics (and
    ``num_batches_tracked``) are updated as torch's BatchNorm would for the global batch.  Every
    rank of ``group`` must call it (a collective, in forward and in backward).
    """
    channels = x.shape[1]
    dims = [0, *range(2, x.dim())]
    count = x.numel() // max(1, channels)
    if count:
        var, mean = torch.var_mean(x, dim=dims, correction=0)
    else:  # an empty local batch contributes nothing
        var = mean = x.new_zeros(channels)
    rows = x.new_zeros(dist.get_world_size(group), 3, channels, dtype=torch.float64)
    local = torch.stack([torch.full_like(mean, float(count)), mean, var]).double()
    rows = rows.index_put((torch.tensor(dist.get_rank(group), device=x.device),), local)
    rows = AllReduceSum.apply(rows, group)  # every rank's row; differentiable
    n, means, variances = rows.unbind(1)  # [world, C] each
    total = n.sum(0)
    if bool((total <= 1).any()):
        raise ValueError(
            f"{type(bn).__name__}: expected more than 1 value per channel over all ranks when "
            f"training, got {int(total.min())} (input shape {tuple(x.shape)} on this rank)"
        )
    g_mean = (n * means).sum(0) / total
    g_var = (n * (variances + (means - g_mean) ** 2)).sum(0) / total
    _update_running(bn, g_mean.detach(), g_var.detach() * total / (total - 1))
    shape = (1, channels) + (1,) * (x.dim() - 2)
    scale = torch.rsqrt(g_var + bn.eps).to(x.dtype)
    if bn.weight is not None:
        scale = scale * bn.weight
    out = (x - g_mean.to(x.dtype).reshape(shape)) * scale.reshape(shape)
    return out if bn.bias is None else out + bn.bias.reshape(shape)


def _update_running(bn: nn.Module, mean: Tensor, unbiased_var: Tensor) -> None:
    """torch's ``_BatchNorm`` running-statistics update (momentum, or a cumulative average)."""
    if not bn.track_running_stats:
        return
    with torch.no_grad():
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:
                factor = 1.0 / float(bn.num_batches_tracked)
        rm, rv = bn.running_mean, bn.running_var
        rm.mul_(1 - factor).add_(mean.to(rm.dtype), alpha=factor)
        rv.mul_(1 - factor).add_(unbiased_var.to(rv.dtype), alpha=factor)
