"""Run a function on N real processes joined by a gloo process group (127.0.0.1, a free port).

``run_ranks(fn, *args)`` forks ``world_size`` processes (fork: no re-import, ~0.2 s), each runs
``fn(rank, world_size, *args)`` inside an initialised gloo group and exits; an exception in any
rank fails the caller with that rank's traceback, and a run that does not finish in ``timeout``
seconds (a rank waiting in a collective the others never start) is killed and reported.
"""

from __future__ import annotations

import datetime
import functools
import importlib
import os
import pathlib
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["run_ranks", "warm_ddp"]

COLLECTIVE_TIMEOUT_S = 60


@functools.cache
def warm_ddp() -> None:
    """Import what ``DistributedDataParallel``'s constructor imports lazily (torch's compiler
    stack: seconds) once, in the parent, so that forked ranks inherit it."""
    importlib.import_module("torch._dynamo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(
    rank: int, fn: Callable[..., Any], args: tuple, world_size: int, port: int, errors: str
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    try:
        torch.manual_seed(0)  # the same on every rank unless the check reseeds
        fn(rank, world_size, *args)
        dist.barrier()
    except BaseException:
        pathlib.Path(errors, f"rank{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], *args: Any, world_size: int = 2, timeout: float = 120.0):
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; raise if any fails.

    The error shows every failing rank's traceback, the rank that failed first (not the one
    that lost its peer) first.
    """
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with tempfile.TemporaryDirectory() as errors:
        ctx = mp.start_processes(
            _entry, args=(fn, args, world_size, _free_port(), errors), nprocs=world_size,
            join=False, start_method=method,
        )
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=max(0.05, min(1.0, deadline - time.monotonic()))):
                if time.monotonic() > deadline:
                    for p in ctx.processes:
                        if p.is_alive():
                            os.kill(p.pid, 9)
                    raise TimeoutError(f"the ranks did not finish in {timeout:.0f} s")
        except Exception as exc:
            reports = sorted(pathlib.Path(errors).glob("rank*.txt"))
            texts = [(("Connection closed" in r.read_text()), r.stem, r.read_text())
                     for r in reports]
            detail = "\n".join(f"--- {name}:\n{text}" for _, name, text in sorted(texts))
            raise AssertionError(f"{fn.__name__} failed: {exc}\n{detail}") from None
