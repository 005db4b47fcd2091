"""Switching the state of every fake quantizer inside a (sub)module."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .fake_quantize import FakeQuantize
from .state import FakeQuantState

__all__ = ["set_fake_quantize", "fake_quantize_state"]


def set_fake_quantize(module: nn.Module, state: FakeQuantState) -> nn.Module:
    """Put every fake quantizer inside ``module`` (any submodule of a prepared model) in ``state``.

    Only quantizers change: call ``module.eval()`` / ``requires_grad_(False)`` yourself to freeze
    BatchNorm statistics and weights, e.g. for a backbone kept in VALIDATION while a head trains
    in QAT.  Returns ``module``.
    """
    if not isinstance(state, FakeQuantState):
        raise TypeError(f"state must be a FakeQuantState member, got {state!r}")
    for m in module.modules():
        if isinstance(m, FakeQuantize):
            m.set_state(state)
    return module


@contextlib.contextmanager
def fake_quantize_state(module: nn.Module, state: FakeQuantState) -> Iterator[nn.Module]:
    """Context manager: ``state`` inside the block, each quantizer's previous state after."""
    saved = [(m, m.state) for m in module.modules() if isinstance(m, FakeQuantize)]
    set_fake_quantize(module, state)
    try:
        yield module
    finally:
        for m, s in saved:
            m.set_state(s)
