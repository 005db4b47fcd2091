"""The modes a fake quantizer can be in, and switching them on any (sub)module."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator

from torch import nn

from ..distributed import merge_pending

__all__ = ["FakeQuantState", "set_fake_quantize", "fake_quantize_state"]


class FakeQuantState(enum.Enum):
    """What a fake quantizer does in ``forward``.

    QAT: observe (update statistics and scale) and fake-quantize; for training.
    CALIBRATION: observe only; outputs stay float.
    VALIDATION: fake-quantize with frozen scale / zero point; nothing is observed.
    FLOAT: pass-through; the quantizer is off.
    """

    QAT = 0
    CALIBRATION = 1
    VALIDATION = 2
    FLOAT = 3


def set_fake_quantize(module: nn.Module, state: FakeQuantState) -> nn.Module:
    """Put every fake quantizer inside ``module`` (any submodule of a prepared model) in ``state``.

    Only quantizers change: call ``module.eval()`` / ``requires_grad_(False)`` yourself to freeze
    BatchNorm statistics and weights, e.g. for a backbone kept in VALIDATION while a head trains
    in QAT.  Returns ``module``.
    """
    if not isinstance(state, FakeQuantState):
        raise TypeError(f"state must be a FakeQuantState member, got {state!r}")
    from .fake_quantize import FakeQuantize

    quantizers = [m for m in module.modules() if isinstance(m, FakeQuantize)]
    _switch(quantizers, [state] * len(quantizers))
    return module


def _switch(quantizers: list, states: list[FakeQuantState]) -> None:
    """Put each quantizer in its state; those leaving CALIBRATION merge their distributed
    statistics first, all in one batched collective (a no-op outside torch.distributed)."""
    leaving = [
        q for q, s in zip(quantizers, states, strict=True)
        if s is not FakeQuantState.CALIBRATION and q.state is FakeQuantState.CALIBRATION
    ]
    merge_pending(leaving)
    for q, s in zip(quantizers, states, strict=True):
        q._apply_state(s)


@contextlib.contextmanager
def fake_quantize_state(module: nn.Module, state: FakeQuantState) -> Iterator[nn.Module]:
    """Context manager: ``state`` inside the block, each quantizer's previous state after."""
    from .fake_quantize import FakeQuantize

    saved = [(m, m.state) for m in module.modules() if isinstance(m, FakeQuantize)]
    set_fake_quantize(module, state)
    try:
        yield module
    finally:
        _switch([m for m, _ in saved], [s for _, s in saved])
