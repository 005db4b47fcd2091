"""QAT fine-tuning for ``fxquant quantize --qat-epochs N``.

Without ``--train-spec`` the quantized model is fine-tuned to reproduce the float model's
outputs on the calibration batches (distillation: the mean squared error summed over the
outputs), which needs no labels.  ``--train-spec file.py:function`` names a function returning
either an iterable of batches of model inputs (distilled the same way) or ``(batches,
loss_fn)`` with ``loss_fn(model, batch) -> scalar loss tensor`` for a task loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError, bounded
from ..fake_quant import FakeQuantState, set_fake_quantize
from ..modelio import as_batches, as_inputs, call_model, output_tensors
from .common import user_code_error
from .spec import call_user_function

__all__ = ["TrainSetup", "train_setup", "fine_tune"]

LossFn = Callable[[nn.Module, Any], torch.Tensor]


class TrainSetup:
    """The batches QAT iterates over each epoch and the loss it minimises."""

    def __init__(self, batches: Sequence[Any], loss_fn: LossFn | None, label: str) -> None:
        self.batches = list(batches)
        self.loss_fn = loss_fn
        self.label = label


def train_setup(spec: str | None, calibration: Sequence[Any]) -> TrainSetup:
    """The training data and loss from ``--train-spec`` (or distillation on ``calibration``)."""
    if spec is None:
        return TrainSetup(calibration, None, "distillation on the calibration batches")
    out, label = call_user_function(spec, "--train-spec")
    loss_fn = None
    if isinstance(out, tuple) and len(out) == 2 and callable(out[1]):
        out, loss_fn = out
    try:
        batches = list(as_batches(out))
    except Exception as exc:
        raise ConfigError(
            f"--train-spec {bounded(spec)!r}: {label} must return an iterable of batches or "
            f"(batches, loss_fn); got {type(out).__name__} ({bounded(str(exc), 120)})"
        ) from None
    if not batches:
        raise ConfigError(f"--train-spec {bounded(spec)!r}: {label} returned no batches")
    what = "its loss_fn" if loss_fn is not None else "distillation"
    return TrainSetup(batches, loss_fn, f"{label}, {what}")


def _distill_loss(float_model: nn.Module, num_inputs: int) -> LossFn:
    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        inputs = as_inputs(batch, num_inputs)
        with torch.no_grad():
            targets = output_tensors(call_model(float_model, inputs))
        outs = output_tensors(call_model(model, inputs))
        return sum(torch.nn.functional.mse_loss(o.float(), t.float())
                   for o, t in zip(outs, targets, strict=True))

    return loss


def fine_tune(qmodel: nn.Module, float_model: nn.Module, setup: TrainSetup, epochs: int,
              lr: float, num_inputs: int, progress: bool) -> list[float]:
    """QAT: ``epochs`` passes of Adam over ``setup.batches``; returns the mean loss per epoch.
    The model is left in eval mode with its scales frozen (``VALIDATION``)."""
    loss_fn = setup.loss_fn or _distill_loss(float_model, num_inputs)
    params = [p for p in qmodel.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("--qat-epochs: the model has no trainable parameters")
    opt = torch.optim.Adam(params, lr=lr)
    set_fake_quantize(qmodel, FakeQuantState.QAT)
    qmodel.train()
    history = []
    try:
        bar = tqdm(total=epochs * len(setup.batches), desc="QAT", disable=not progress,
                   leave=False)
        for epoch in range(epochs):
            total = 0.0
            for batch in setup.batches:
                try:
                    loss = loss_fn(qmodel, batch)
                except Exception as exc:
                    raise user_code_error(f"the QAT loss ({setup.label})", exc) from None
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise ConfigError(f"the QAT loss_fn must return a scalar tensor, got "
                                      f"{type(loss).__name__}")
                if not math.isfinite(float(loss)):
                    raise DataError(
                        f"QAT epoch {epoch + 1}: the loss is {float(loss)}; lower --lr or check "
                        "the training data"
                    )
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss)
                bar.update(1)
            history.append(total / len(setup.batches))
        bar.close()
    finally:
        qmodel.eval()
        set_fake_quantize(qmodel, FakeQuantState.VALIDATION)
    return history
