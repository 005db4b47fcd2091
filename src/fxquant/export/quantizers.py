"""The quantizers of a prepared model as the exporters and verify see them.

* :func:`quantizer_index`: quantizer module path -> (op name, role), from the prepare report --
  with :mod:`fxquant.export.naming` this fixes the ONNX tensor each quantizer quantizes;
* :func:`frozen_quantizers` / :func:`eval_mode`: run a model without changing its state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from torch import nn

from ..fake_quant import FakeQuantize, FakeQuantState
from ..graph.report import PrepareReport

__all__ = ["quantizer_index", "frozen_quantizers", "quantizers_off", "eval_mode"]


def quantizer_index(report: PrepareReport) -> dict[str, tuple[str, str]]:
    """Quantizer module path -> (op name, role); a shared quantizer keeps its first op."""
    index: dict[str, tuple[str, str]] = {}
    for rec in report.ops.values():
        for role, path in rec.quantizers.items():
            index.setdefault(path, (rec.name, role))
    return index


@contextlib.contextmanager
def frozen_quantizers(model: nn.Module, mapping: dict[FakeQuantState, FakeQuantState]):
    """Temporarily switch quantizer states *without* recomputing scales; restore afterwards.

    Unlike :func:`fxquant.fake_quantize_state` nothing is observed or updated: e.g.
    ``{QAT: VALIDATION}`` runs a QAT-state model with its scales exactly as they are.
    """
    saved = []
    for m in model.modules():
        if isinstance(m, FakeQuantize):
            saved.append((m, m.state_code.clone()))
            new = mapping.get(m.state)
            if new is not None:
                m.state_code.fill_(new.value)
    try:
        yield model
    finally:
        for m, code in saved:
            m.state_code.copy_(code)


@contextlib.contextmanager
def quantizers_off(model: nn.Module, paths: Iterable[str]) -> Iterator[nn.Module]:
    """The quantizers at ``paths`` are identities (``FLOAT``) inside the block, nothing
    recomputed; their states are restored afterwards."""
    saved = []
    for path in paths:
        m = model.get_submodule(path)
        if isinstance(m, FakeQuantize):
            saved.append((m, m.state_code.clone()))
            m.state_code.fill_(FakeQuantState.FLOAT.value)
    try:
        yield model
    finally:
        for m, code in saved:
            m.state_code.copy_(code)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` inside the block; every module's training flag restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t
