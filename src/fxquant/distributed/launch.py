"""Run a function on N local processes joined by a process group (tests, benchmarks, trials).

``run_local(fn, *args, world_size=2)`` starts ``world_size`` processes on this machine, each
calling ``fn(rank, world_size, *args)`` inside an initialised process group (gloo by default,
rendezvous on 127.0.0.1 at a free port), and returns when all are done.  An exception in any
rank fails the call with every failing rank's traceback (the rank that failed first before the
ones that only lost their peer); a run that does not finish in ``timeout`` seconds -- typically
one rank waiting in a collective that the others never start -- is killed and reported.

Processes are forked where the platform allows it and CUDA is not initialised (no re-import:
a fraction of a second), else spawned (``fn`` and ``args`` must then be picklable).
"""

from __future__ import annotations

import datetime
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

__all__ = ["run_local"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable[..., Any], args: tuple, world_size: int, backend: str,
           port: int, timeout: float, errors: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout),
    )
    try:
        fn(rank, world_size, *args)
        dist.barrier()
    except BaseException:
        pathlib.Path(errors, f"rank{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def run_local(fn: Callable[..., Any], *args: Any, world_size: int = 2, backend: str = "gloo",
              timeout: float = 300.0) -> None:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` local ranks; raise if any fails.

    Each rank runs single-threaded (``torch.set_num_threads(1)``) and starts from the same
    seed state as the caller.  Collectives time out after ``timeout`` seconds too.

    >>> import torch, torch.distributed as dist
    >>> def check(rank, world):
    ...     t = torch.tensor([rank + 1.0])
    ...     dist.all_reduce(t)
    ...     assert t.item() == 3.0
    >>> run_local(check)
    """
    fork = "fork" in mp.get_all_start_methods() and not torch.cuda.is_initialized()
    with tempfile.TemporaryDirectory() as errors:
        ctx = mp.start_processes(
            _entry,
            args=(fn, args, world_size, backend, _free_port(), timeout, errors),
            nprocs=world_size,
            join=False,
            start_method="fork" if fork else "spawn",
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
            reports = []
            for path in sorted(pathlib.Path(errors).glob("rank*.txt")):
                text = path.read_text()
                reports.append(("Connection closed" in text, path.stem, text))
            detail = "\n".join(f"--- {name}:\n{text}" for _, name, text in sorted(reports))
            name = getattr(fn, "__name__", repr(fn))
            raise RuntimeError(f"{name} failed on a rank: {exc}\n{detail}") from None
