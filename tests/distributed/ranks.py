"""The distributed tests' launcher: ``fxquant.distributed.run_local`` on 2 gloo ranks."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import torch

from fxquant.distributed import run_local

__all__ = ["run_ranks", "warm_ddp"]


def run_ranks(fn: Callable[..., Any], *args: Any) -> None:
    """``fn(rank, 2, *args)`` on 2 forked gloo ranks (60 s timeout), each seeded with 0."""

    def seeded(rank: int, world: int, *a: Any) -> None:
        torch.manual_seed(0)
        fn(rank, world, *a)

    seeded.__name__ = fn.__name__
    run_local(seeded, *args, world_size=2, timeout=60.0)


@functools.cache
def warm_ddp() -> None:
    """Import what ``DistributedDataParallel``'s constructor imports lazily (torch's compiler
    stack: seconds) once, in the parent, so that forked ranks inherit it."""
    importlib.import_module("torch._dynamo")
