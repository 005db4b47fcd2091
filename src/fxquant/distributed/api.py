"""Model-level switches and checks for distributed calibration / QAT."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .observers import discard_pending, merge_pending
from .settings import DistributedSync, participants, world_size

__all__ = ["set_distributed_sync", "no_distributed_sync", "sync_observers", "diverged_state"]

_MASK = (1 << 62) - 1  # digests as non-negative int64 whose negation cannot overflow


def set_distributed_sync(module: nn.Module, enabled: bool = True, group: Any = None) -> nn.Module:
    """Switch distributed synchronisation of every quantizer and ConvBn inside ``module``.

    On by default: when ``torch.distributed`` is initialised with more than one rank, activation
    observers merge their statistics across ranks and ConvBn modules normalise with the global
    batch statistics (see :mod:`fxquant.distributed`).  ``enabled=False`` makes them rank-local;
    ``group`` picks a process group other than the default one.  Returns ``module``.

    Turning it off drops any statistics observed rank-locally and not merged yet.

    >>> import fxquant, torch
    >>> q = fxquant.prepare(torch.nn.Linear(4, 2), torch.randn(1, 4))
    >>> _ = fxquant.set_distributed_sync(q, False)
    >>> {m.distributed_sync.enabled for m in fxquant.distributed.participants(q)}
    {False}
    """
    setting = DistributedSync(bool(enabled), group)
    mods = list(participants(module))
    if not enabled:
        discard_pending([m for m in mods if hasattr(m, "observer")])
    for m in mods:
        m.distributed_sync = setting
    return module


@contextlib.contextmanager
def no_distributed_sync(module: nn.Module) -> Iterator[nn.Module]:
    """Rank-local quantizers / ConvBn inside the block (each module's setting restored after).

    For work that one rank does alone while the process group is up -- e.g. calibrating or
    evaluating on rank 0 only -- which would otherwise wait for the other ranks.  Statistics
    observed before the block and not merged yet are kept (merged after it as usual).
    """
    saved = [(m, m.distributed_sync) for m in participants(module)]
    for m, setting in saved:  # statistics not merged yet are kept for after the block
        m.distributed_sync = DistributedSync(False, setting.group)
    try:
        yield module
    finally:
        for m, setting in saved:
            m.distributed_sync = setting


def sync_observers(module: nn.Module) -> nn.Module:
    """Merge across ranks what the quantizers of ``module`` observed rank-locally (collective).

    Leaving ``CALIBRATION`` (the end of :func:`fxquant.calibrate`, ``set_fake_quantize``) does
    this already; call it to read merged ranges in the middle of a calibration.  Every rank must
    call it.  A no-op outside torch.distributed.  Returns ``module``.
    """
    merge_pending([m for m in participants(module) if hasattr(m, "observer")])
    return module


def diverged_state(module: nn.Module, group: Any = None) -> list[str]:
    """Names of ``module.state_dict()`` entries that differ between the ranks of ``group``.

    Each tensor (dtype, shape and bytes) is hashed and the hashes compared with two all-reduces
    (a collective: every rank must call it).  Empty when every rank holds bit-identical weights,
    quantizer parameters / buffers, observer statistics and BatchNorm statistics; ``[]`` outside
    torch.distributed.  Use it to check a replicated model, e.g. after every QAT step.
    """
    if world_size(group) <= 1:
        return []
    state = module.state_dict()
    names = list(state)
    device = next(iter(state.values())).device if state else torch.device("cpu")
    keys = _reduce_digests([_digest(b"\n".join(n.encode() for n in names))], group, device)
    if keys:
        return ["<state_dict keys differ between ranks>"]
    differ = _reduce_digests([_tensor_digest(t) for t in state.values()], group, device)
    return [names[i] for i in differ]


def _reduce_digests(digests: list[int], group: Any, device: torch.device) -> list[int]:
    """Indices whose digest is not the same on every rank."""
    t = torch.tensor(digests, dtype=torch.int64, device=device)
    both = torch.cat([t, -t])
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    most, neg_least = both.split(len(digests))
    return (most != -neg_least).nonzero().flatten().tolist()


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & _MASK


def _tensor_digest(t: torch.Tensor) -> int:
    head = f"{t.dtype}{tuple(t.shape)}".encode()
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return _digest(head + flat.view(torch.uint8).numpy().tobytes())
