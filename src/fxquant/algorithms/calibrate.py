"""Post-training calibration: run data through a prepared model with observers on."""

from __future__ import annotations

from collections.abc import Iterable
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
from ..fake_quant import FakeQuantize, FakeQuantState, set_fake_quantize

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

    Under torch.distributed (more than one rank) every rank calls it on its own shard (e.g. a
    DataLoader with a ``DistributedSampler``) and the observers' statistics are merged at the
    end, so every rank gets the scales of one process over the union of the data (see
    :mod:`fxquant.distributed`).  Moving-average observers average each batch over the ranks:
    then every rank needs the same number of batches (a :class:`DataError` otherwise).
    """
    from ..graph.report import get_report

    try:
        num_inputs = get_report(qmodel).num_inputs
    except TypeError:
        num_inputs = 1
    device = model_device(qmodel)
    quantizers = [m for m in qmodel.modules() if isinstance(m, FakeQuantize)]
    synced = [q for q in quantizers if q.distributed_sync.active()]
    per_batch = [q for q in synced if syncs_every_batch(q)]
    groups = list({id(q.distributed_sync.group): q.distributed_sync.group for q in per_batch}
                  .values())
    was_training = qmodel.training
    qmodel.eval()
    set_fake_quantize(qmodel, FakeQuantState.CALIBRATION)
    total = num_batches
    if total is None and hasattr(data, "__len__"):
        total = len(data)  # type: ignore[arg-type]
    seen = 0
    try:
        with torch.no_grad():
            batches = iter(
                tqdm(data, total=total, desc="calibrate", disable=not progress, leave=False)
            )
            while True:
                done = num_batches is not None and seen >= num_batches
                batch = _END if done else next(batches, _END)
                if groups:
                    names = [q.name for q in per_batch]
                    agree_on_batch(batch is not _END, seen, groups, names, device)
                if batch is _END:
                    break
                qmodel(*batch_to_args(batch, num_inputs, device))
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
        raise ValueError("calibrate: the data yielded no batch; pass at least one batch")
    return qmodel


_END = object()
