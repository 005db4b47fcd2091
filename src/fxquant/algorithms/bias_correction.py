"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", section 4.3).

Quantizing a weight ``W`` to ``W~`` shifts the expected output of a layer by
``E[(W~ - W) x]``, per output channel: rounding errors that do not average out (a 4-bit
per-tensor grid that rounds a whole channel's small weights the same way, inputs with a
non-zero mean after a ReLU) bias every later layer.  The empirical correction measures the
shift on data and puts it back into the bias::

    delta_c = mean over batch and positions of (layer(x; W)_c - layer(x; W~)_c)
    b_c    += delta_c

where ``x`` is the input the layer receives *in the quantized model* (all quantizers in their
current, frozen state), ``layer(x; W)`` the layer with its weight quantizer off and
``layer(x; W~)`` with it on.  Layers are corrected one at a time in execution order, each
measurement running the model with every earlier layer already corrected, so a layer's
correction accounts for the (corrected) shifts upstream, as in the paper.

Both outputs are computed from the layer's captured input with the layer's own output
quantizer off (a module quantized by eager capture runs its input / output quantizers inside
``forward``; its input quantizer stays on, since it is part of the layer's quantized input).

``ConvBn`` modules correct their BatchNorm's ``beta`` (the folded bias is
``beta + (b - mean) * gamma / sqrt(var + eps)``, so ``beta += delta`` moves it by exactly
``delta``); a BatchNorm without ``beta`` (``affine=False``) gets the shift through the conv bias
(``delta * sqrt(var + eps)``).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import nn as qnn
from ..errors import ConfigError, DataError
from ..fake_quant import FakeQuantize, FakeQuantState, fake_quantize_state
from ..graph.report import check_prepared, num_inputs_of
from ..graph.simulate import float_simulation
from ..modelio import ModelInputs, call_model, iter_inputs, model_device

__all__ = ["CORRECTABLE", "bias_correction", "channel_sums", "corrected_bias"]

CORRECTABLE: tuple[type, ...] = (
    qnn.QuantConv1d,
    qnn.QuantConv2d,
    qnn.QuantConv3d,
    qnn.QuantConvTranspose1d,
    qnn.QuantConvTranspose2d,
    qnn.QuantConvTranspose3d,
    qnn.QuantLinear,
    qnn.ConvBn1d,
    qnn.ConvBn2d,
    qnn.ConvBn3d,
)
"""Weight-quantized module types whose bias :func:`bias_correction` adjusts."""


# -- math --------------------------------------------------------------------------------------
def channel_sums(y: Tensor, channel_dim: int) -> tuple[Tensor, int]:
    """Per-channel ``(sum, count)`` of ``y`` over every dim but ``channel_dim`` (float64 sums).

    >>> s, n = channel_sums(torch.tensor([[1.0, 2.0], [3.0, 6.0]]), channel_dim=1)
    >>> (s / n).tolist(), n
    ([2.0, 4.0], 2)
    """
    dims = [d for d in range(y.dim()) if d != channel_dim % y.dim()]
    count = y.numel() // max(1, y.shape[channel_dim])
    return y.to(torch.float64).sum(dim=dims), count


def corrected_bias(bias: Tensor | None, delta: Tensor) -> Tensor:
    """``bias + delta`` (``delta`` alone for a layer without bias), in ``delta``'s dtype."""
    return delta.clone() if bias is None else bias.detach().to(delta) + delta


# -- plumbing ----------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised from a hook to end a forward pass once the layer of interest has run."""


def _channel_dim(module: nn.Module, y: Tensor) -> int:
    if isinstance(module, nn.Linear):
        return -1
    return 1 if y.dim() == module.weight.dim() else 0  # batched vs unbatched conv


def _apply(module: nn.Module, delta: Tensor) -> None:
    """Add ``delta`` (float64, per output channel) to the module's effective bias."""
    with torch.no_grad():
        if isinstance(module, qnn.ConvBnNd):
            bn = module.bn
            if bn.bias is not None:
                bn.bias.add_(delta.to(bn.bias))
                return
            std = torch.sqrt(bn.running_var.to(delta) + bn.eps)
            delta = delta * std  # conv bias enters the fold as (b - mean) / std
        dtype = module.weight.dtype
        new = corrected_bias(module.bias, delta).to(dtype)
        if module.bias is None:
            module.bias = nn.Parameter(new, requires_grad=module.weight.requires_grad)
        else:
            module.bias.copy_(new)


@contextlib.contextmanager
def _output_quantizer_off(module: nn.Module) -> Iterator[None]:
    outq = module._modules.get("output_fake_quant")
    if not isinstance(outq, FakeQuantize):
        yield
        return
    with fake_quantize_state(outq, FakeQuantState.FLOAT):
        yield


def _check_frozen(qmodel: nn.Module) -> None:
    busy = [
        m.name or type(m).__name__
        for m in qmodel.modules()
        if isinstance(m, FakeQuantize)
        and m.state in (FakeQuantState.QAT, FakeQuantState.CALIBRATION)
    ]
    if busy:
        raise ConfigError(
            f"bias_correction needs frozen quantizers (VALIDATION or FLOAT), but {len(busy)} "
            f"observe data (QAT / CALIBRATION), e.g. {busy[0]!r}: run "
            "fxquant.calibrate(qmodel, data) first"
        )


def _execution_order(qmodel, inputs: ModelInputs, layers) -> tuple[list[str], Counter]:
    order: list[str] = []
    calls: Counter[str] = Counter()
    handles = []
    for name, mod in layers.items():

        def hook(_m, _args, _out, name=name):
            if name not in calls:
                order.append(name)
            calls[name] += 1

        handles.append(mod.register_forward_hook(hook))
    try:
        call_model(qmodel, inputs)
    finally:
        for h in handles:
            h.remove()
    return order, calls


def _measure(
    qmodel, module, batches: list[ModelInputs], stop_after_call: bool
) -> Tensor | None:
    """Mean of (float-weight output - quantized-weight output) per channel, over ``batches``."""
    total: Tensor | None = None
    count = 0

    def hook(mod, args, kwargs, _out):
        nonlocal total, count
        # Both outputs are recomputed with the module's own output quantizer off: a module
        # quantized by eager capture applies its input / output quantizers inside forward.
        # ``.forward`` runs no hooks, so this does not recurse.
        with _output_quantizer_off(mod):
            out = mod.forward(*args, **kwargs)
            with fake_quantize_state(mod.weight_fake_quant, FakeQuantState.FLOAT):
                ref = mod.forward(*args, **kwargs)
        s, n = channel_sums(ref - out, _channel_dim(mod, out))
        total = s if total is None else total + s
        count += n
        if stop_after_call:
            raise _Stop

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        for inputs in batches:
            try:
                call_model(qmodel, inputs)
            except _Stop:
                pass
    finally:
        handle.remove()
    return None if total is None else total / max(1, count)


def bias_correction(
    qmodel: nn.Module,
    data: Iterable[Any],
    *,
    num_batches: int | None = None,
    progress: bool = True,
) -> nn.Module:
    """Correct the biases of ``qmodel``'s weight-quantized layers in place; returns ``qmodel``.

    Args:
        qmodel: a prepared, calibrated model (every quantizer in ``VALIDATION`` or ``FLOAT``;
            quantizers that still observe would move while the corrections are measured).
        data: batches as for :func:`fxquant.calibrate`; up to ``num_batches`` of them are held
            in memory, since the data is run once per layer.
        num_batches: how many batches to use (all when None).
        progress: show a progress bar over the layers.

    Every :data:`CORRECTABLE` module with a weight quantizer is corrected in execution order
    (see the module docstring); a module called several times gets the mean shift over all its
    calls.  The model runs in eval mode without gradients; its mode is restored afterwards.
    """
    check_prepared(qmodel, "bias_correction")
    _check_frozen(qmodel)
    batches = list(iter_inputs(data, num_inputs_of(qmodel), model_device(qmodel), num_batches))
    if not batches:
        raise DataError("bias_correction: the data yielded no batch; pass at least one batch")
    layers = {
        name: m
        for name, m in qmodel.named_modules()
        if isinstance(m, CORRECTABLE) and m.weight_fake_quant is not None
    }
    was_training = qmodel.training
    qmodel.eval()
    try:  # the float simulation: the layers' forward hooks measure its bias shift
        with torch.no_grad(), float_simulation():
            order, calls = _execution_order(qmodel, batches[0], layers)
            for name in tqdm(order, desc="bias correction", disable=not progress, leave=False):
                module = layers[name]
                delta = _measure(qmodel, module, batches, calls[name] == 1)
                if delta is not None:
                    _apply(module, delta)
    finally:
        qmodel.train(was_training)
    return qmodel
