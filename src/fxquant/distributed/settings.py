"""Whether a module synchronises across torch.distributed ranks, and over which process group."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
from torch import nn

__all__ = ["DistributedSync", "participants", "world_size"]

_AVAILABLE = dist.is_available()


def world_size(group: Any = None) -> int:
    """Ranks in ``group`` (None: the default group); 1 when torch.distributed is not initialised."""
    if not (_AVAILABLE and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


@dataclass(frozen=True)
class DistributedSync:
    """How one module (a fake quantizer, a ConvBn) synchronises its statistics across ranks.

    Attributes:
        enabled: synchronise when torch.distributed is initialised with more than one rank in
            ``group`` (the default).  ``False`` keeps the module rank-local.
        group: the process group (``None``: the default group).

    Modules that take part have a ``distributed_sync`` attribute holding one of these; change it
    with :func:`fxquant.set_distributed_sync`.
    """

    enabled: bool = True
    group: Any = None

    def active(self) -> bool:
        """True when this module must synchronise now (enabled, initialised, world size > 1)."""
        return self.enabled and world_size(self.group) > 1

    def __deepcopy__(self, memo: dict) -> DistributedSync:  # a process group cannot be copied
        return self


def participants(module: nn.Module) -> Iterator[nn.Module]:
    """Every submodule of ``module`` (itself included) that has a ``distributed_sync`` setting."""
    for m in module.modules():
        if isinstance(getattr(m, "distributed_sync", None), DistributedSync):
            yield m
