"""Post-training calibration: run data through a prepared model with observers on."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..fake_quant import FakeQuantState, set_fake_quantize

__all__ = ["calibrate", "batch_to_args", "model_device"]


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for an empty module)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def batch_to_args(batch: Any, num_inputs: int, device: torch.device) -> tuple[Any, ...]:
    """Positional model inputs from one batch.

    A tensor is one input; a tuple / list supplies the first ``num_inputs`` items (so
    ``(x, y)`` batches from a labelled DataLoader work); a dict is passed through as one input.
    """
    if isinstance(batch, (tuple, list)):
        items = tuple(batch[:num_inputs]) if len(batch) > num_inputs else tuple(batch)
    else:
        items = (batch,)
    return tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in items)


def calibrate(
    qmodel: nn.Module,
    data: Iterable[Any],
    num_batches: int | None = None,
    progress: bool = True,
) -> nn.Module:
    """Calibrate every quantizer of ``qmodel`` on ``data``; returns ``qmodel``.

    Puts the model in eval mode and its quantizers in ``CALIBRATION``, runs up to
    ``num_batches`` batches (a DataLoader, or any iterable of tensors / tuples) without
    gradients, then switches to ``VALIDATION`` (scales computed and frozen).  The model's
    train/eval mode is restored afterwards.  ``progress=False`` silences the progress bar.
    """
    from ..graph.report import get_report

    try:
        num_inputs = get_report(qmodel).num_inputs
    except TypeError:
        num_inputs = 1
    device = model_device(qmodel)
    was_training = qmodel.training
    qmodel.eval()
    set_fake_quantize(qmodel, FakeQuantState.CALIBRATION)
    total = num_batches
    if total is None and hasattr(data, "__len__"):
        total = len(data)  # type: ignore[arg-type]
    seen = 0
    try:
        with torch.no_grad():
            for batch in tqdm(
                data, total=total, desc="calibrate", disable=not progress, leave=False
            ):
                if num_batches is not None and seen >= num_batches:
                    break
                qmodel(*batch_to_args(batch, num_inputs, device))
                seen += 1
    finally:
        set_fake_quantize(qmodel, FakeQuantState.VALIDATION)
        qmodel.train(was_training)
    if seen == 0:
        raise ValueError("calibrate: the data yielded no batch; pass at least one batch")
    return qmodel
