"""Post-training calibration: run data through a prepared model with observers on."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..distributed import (
    agree_on_batch,
    discard_pending,
    global_count,
    no_distributed_sync,
    syncs_every_batch,
)
from ..errors import DataError
from ..fake_quant import FakeQuantize, FakeQuantState, set_fake_quantize
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

    Under torch.distributed (more than one rank) every rank calls it on its own shard (e.g. a
    DataLoader with a ``DistributedSampler``) and the observers' statistics are merged at the
    end, so every rank gets the scales of one process over the union of the data (see
    :mod:`fxquant.distributed`).  Moving-average observers average each batch over the ranks:
    then every rank needs the same number of batches (a :class:`DataError` otherwise).

    >>> import torch, fxquant
    >>> q = fxquant.prepare(torch.nn.Sequential(torch.nn.Linear(4, 2)), torch.randn(1, 4))
    >>> data = [(torch.randn(8, 4), torch.zeros(8)) for _ in range(2)]  # (inputs, labels)
    >>> q = calibrate(q, data, progress=False)
    >>> fxquant.summary(q).quantizers[0].state
    'VALIDATION'
    """
    device = model_device(qmodel)
    quantizers = [m for m in qmodel.modules() if isinstance(m, FakeQuantize)]
    synced = [q for q in quantizers if q.distributed_sync.active()]
    per_batch = [q for q in synced if syncs_every_batch(q)]
    groups = list({id(q.distributed_sync.group): q.distributed_sync.group for q in per_batch}
                  .values())
    was_training = qmodel.training
    qmodel.eval()
    set_fake_quantize(qmodel, FakeQuantState.CALIBRATION)
    seen = 0
    try:
        with torch.no_grad():
            batches = iter(tqdm(iter_inputs(data, num_inputs_of(qmodel), device),
                                total=batch_count(data, num_batches), desc="calibrate",
                                disable=not progress, leave=False))
            while True:
                done = num_batches is not None and seen >= num_batches
                batch = _END if done else next(batches, _END)
                if groups:
                    names = [q.name for q in per_batch]
                    agree_on_batch(batch is not _END, seen, groups, names, device)
                if batch is _END:
                    break
                call_model(qmodel, batch)
                seen += 1
    except BaseException:
        discard_pending(quantizers)  # a failing rank starts no collective
        with no_distributed_sync(qmodel):
            set_fake_quantize(qmodel, FakeQuantState.VALIDATION)
        qmodel.train(was_training)
        raise
    set_fake_quantize(qmodel, FakeQuantState.VALIDATION)  # merges the ranks' statistics
    qmodel.train(was_training)
    if synced:
        seen = global_count(seen, synced[0].distributed_sync.group, device)
    if seen == 0:
        raise DataError("calibrate: the data yielded no batch; pass at least one batch")
    return qmodel


_END = object()
