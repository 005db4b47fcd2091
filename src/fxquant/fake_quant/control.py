"""Switching the state of every fake quantizer inside a (sub)module."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from torch import nn

from ..distributed import merge_pending
from ..errors import ConfigError, bounded
from .fake_quantize import FakeQuantize
from .state import FakeQuantState

__all__ = ["set_fake_quantize", "fake_quantize_state", "quantizer_states"]


def set_fake_quantize(module: nn.Module, state: FakeQuantState) -> nn.Module:
    """Put every fake quantizer inside ``module`` (any submodule of a prepared model) in ``state``.

    Only quantizers change: call ``module.eval()`` / ``requires_grad_(False)`` yourself to freeze
    BatchNorm statistics and weights, e.g. for a backbone kept in VALIDATION while a head trains
    in QAT.  Returns ``module``.
    """
    _check_arguments(module, state)
    quantizers = [m for m in module.modules() if isinstance(m, FakeQuantize)]
    _switch(quantizers, [state] * len(quantizers))
    return module


def _switch(quantizers: list[FakeQuantize], states: list[FakeQuantState]) -> None:
    """Put each quantizer in its state; those leaving CALIBRATION merge their distributed
    statistics first, all in one batched collective (a no-op outside torch.distributed)."""
    leaving = [
        q for q, s in zip(quantizers, states, strict=True)
        if s is not FakeQuantState.CALIBRATION and q.state is FakeQuantState.CALIBRATION
    ]
    merge_pending(leaving)
    for q, s in zip(quantizers, states, strict=True):
        q._apply_state(s)


def _check_arguments(module: nn.Module, state: FakeQuantState) -> None:
    if not isinstance(module, nn.Module):
        raise ConfigError(f"set_fake_quantize: module must be an nn.Module (a prepared model or "
                          f"a submodule of one), got {type(module).__name__}")
    if not isinstance(state, FakeQuantState):
        hint = ""
        if isinstance(state, str) and state.upper() in FakeQuantState.__members__:
            hint = f"; use fxquant.FakeQuantState.{state.upper()}"
        raise ConfigError(
            f"set_fake_quantize: state must be a FakeQuantState member (QAT, CALIBRATION, "
            f"VALIDATION, FLOAT), got {bounded(repr(state))}{hint}"
        )


@contextlib.contextmanager
def fake_quantize_state(module: nn.Module, state: FakeQuantState) -> Iterator[nn.Module]:
    """Context manager: ``state`` inside the block, each quantizer's previous state after."""
    _check_arguments(module, state)
    saved = [(m, m.state) for m in module.modules() if isinstance(m, FakeQuantize)]
    set_fake_quantize(module, state)
    try:
        yield module
    finally:
        _switch([m for m, _ in saved], [s for _, s in saved])


@contextlib.contextmanager
def quantizer_states(
    module: nn.Module,
    default: FakeQuantState | None,
    overrides: Mapping[str, FakeQuantState] | None = None,
) -> Iterator[nn.Module]:
    """Set quantizer states *without* observing or recomputing scales; restored afterwards.

    Unlike :func:`fake_quantize_state` nothing is observed: ``default`` applies to every
    quantizer (``None``: QAT becomes VALIDATION, others unchanged, i.e. the model runs with its
    scales exactly as they are); ``overrides`` maps module paths to a state.  A quantizer
    left mid-calibration computes its pending scale before it is used in VALIDATION.
    """
    overrides = overrides or {}
    saved = []
    for name, m in module.named_modules():
        if not isinstance(m, FakeQuantize):
            continue
        saved.append((m, m.state))
        st = overrides.get(name, default)
        if st is None:
            st = FakeQuantState.VALIDATION if m.state is FakeQuantState.QAT else m.state
        if st is FakeQuantState.VALIDATION and m._dirty:
            m.update_qparams()
        m.set_state_code(st)
    try:
        yield module
    finally:
        for m, state in saved:
            m.set_state_code(state)
