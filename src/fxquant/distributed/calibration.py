"""What :func:`fxquant.calibrate` needs under torch.distributed: agreeing on the batches."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..errors import DataError, bounded_list

__all__ = ["agree_on_batch", "global_count"]


def agree_on_batch(
    has_batch: bool, index: int, groups: list[Any], names: list[str], device: torch.device
) -> None:
    """Raise :class:`DataError` on every rank unless all ranks of ``groups`` have batch ``index``
    or none has (a collective per group).

    Needed when an observer reduces every batch across ranks (moving averages): a rank with one
    batch more would otherwise wait forever for the others.
    """
    for group in groups:
        t = torch.tensor([int(has_batch), -int(has_batch)], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        if int(t[0]) != -int(t[1]):
            mine = "has" if has_batch else "has no"
            theirs = "has none" if has_batch else "has one"
            raise DataError(
                f"calibrate: rank {dist.get_rank()} {mine} batch {index + 1} but another rank "
                f"{theirs}; quantizers {bounded_list(names, 3)} average every batch across ranks "
                "(moving-average observers), so every rank must calibrate on the same number of "
                "batches: use a DistributedSampler (equal shards), pass num_batches=, or use "
                "min-max / histogram observers, which merge once at the end"
            )


def global_count(count: int, group: Any, device: torch.device) -> int:
    """``count`` summed over the ranks of ``group`` (a collective)."""
    t = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return int(t[0])
