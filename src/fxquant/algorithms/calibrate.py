"""Post-training calibration: run data through a prepared model with observers on."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import DataError
from ..fake_quant import FakeQuantState, set_fake_quantize
from ..graph.report import num_inputs_of
from ..modelio import call_model, iter_inputs, model_device
from ..modelio import num_batches as batch_count

__all__ = ["calibrate", "model_device"]


def calibrate(
    qmodel: nn.Module,
    data: Any,
    num_batches: int | None = None,
    progress: bool = True,
) -> nn.Module:
    """Calibrate every quantizer of ``qmodel`` on ``data``; returns ``qmodel``.

    Puts the model in eval mode and its quantizers in ``CALIBRATION``, runs up to
    ``num_batches`` batches without gradients, then switches to ``VALIDATION`` (scales computed
    and frozen).  ``data`` is a DataLoader or any iterable of batches, as
    :mod:`fxquant.modelio` defines them: a tensor, a tuple of positional inputs (items beyond
    the model's inputs, e.g. labels, are dropped) or a dict of keyword inputs.  The model's
    train/eval mode is restored afterwards.  ``progress=False`` silences the progress bar.

    >>> import torch, fxquant
    >>> q = fxquant.prepare(torch.nn.Sequential(torch.nn.Linear(4, 2)), torch.randn(1, 4))
    >>> data = [(torch.randn(8, 4), torch.zeros(8)) for _ in range(2)]  # (inputs, labels)
    >>> q = calibrate(q, data, progress=False)
    >>> fxquant.summary(q).quantizers[0].state
    'VALIDATION'
    """
    device = model_device(qmodel)
    was_training = qmodel.training
    qmodel.eval()
    set_fake_quantize(qmodel, FakeQuantState.CALIBRATION)
    batches = iter_inputs(data, num_inputs_of(qmodel), device, num_batches)
    seen = 0
    try:
        with torch.no_grad():
            for inputs in tqdm(batches, total=batch_count(data, num_batches), desc="calibrate",
                               disable=not progress, leave=False):
                call_model(qmodel, inputs)
                seen += 1
    finally:
        set_fake_quantize(qmodel, FakeQuantState.VALIDATION)
        qmodel.train(was_training)
    if seen == 0:
        raise DataError("calibrate: the data yielded no batch; pass at least one batch")
    return qmodel
