"""Weight-quantized versions of torch's weighted leaf modules.

``QuantConv1d`` ... ``QuantEmbedding`` subclass the torch module they replace and add one child,
``weight_fake_quant`` (a :class:`~fxquant.fake_quant.FakeQuantize`, or None for a float weight).
``forward`` is the torch forward with ``weight_fake_quant(weight)`` in place of ``weight``; the
bias stays float.  Parameters keep their names (``weight``, ``bias``), so a prepared model's
float weights load from, and save to, the same state-dict keys as the float model, with the
quantizer's buffers under ``weight_fake_quant.*``.

``from_float`` / ``to_float`` convert without copying: the new module *shares* the Parameter
objects, buffers and attributes of the old one (the caller deep-copies the model first when it
needs the original intact).

>>> import torch
>>> from torch import nn
>>> from fxquant.fake_quant import FakeQuantize
>>> float_lin = nn.Linear(4, 3)
>>> qlin = QuantLinear.from_float(float_lin, FakeQuantize(ch_axis=0, is_weight=True))
>>> qlin.weight is float_lin.weight, sorted(qlin.state_dict())[:2]
(True, ['bias', 'weight'])
>>> type(qlin.to_float()) is nn.Linear
True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fake_quant import FakeQuantState

__all__ = [
    "QuantWeightMixin",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose1d",
    "QuantConvTranspose2d",
    "QuantConvTranspose3d",
    "QuantLinear",
    "QuantEmbedding",
    "conv_forward",
    "conv_transpose_forward",
    "quantizers_on",
]

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE_FN = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


# -- module surgery ---------------------------------------------------------------------------
def rebind_module(src: nn.Module, cls: type[nn.Module], drop: Sequence[str] = ()) -> nn.Module:
    """A new ``cls`` instance with ``src``'s attributes, sharing its parameters and buffers.

    Every attribute of ``src`` (constructor settings such as ``groups``, ``padding_mode``,
    ``padding_idx``, plus hooks and ``training``) is carried over; the containers holding
    parameters, buffers, submodules and hooks are shallow-copied so that registering or
    removing an entry on one module does not affect the other.  ``drop`` names submodules
    not to carry over.  ``__init__`` is not run, so no weights are allocated or re-initialised.
    """
    new = cls.__new__(cls)
    for key, value in vars(src).items():
        new.__dict__[key] = value.copy() if isinstance(value, (dict, set, list)) else value
    for name in drop:
        new._modules.pop(name, None)
    return new


def quantizers_on(quantizers: Iterable[nn.Module | None]) -> bool:
    """True when one of ``quantizers`` (``None`` entries skipped) is not in FLOAT state.

    Modules with a float and a quantized forward (attention, recurrent layers) branch on it.
    While ``torch.export`` traces, any quantizer counts as on: reading a quantizer's state
    buffer there would be data-dependent, and exporters capture the quantized forward (a
    quantizer in FLOAT state is captured as an identity).
    """
    present = [q for q in quantizers if q is not None]
    if not present:
        return False
    if torch.compiler.is_exporting():
        return True
    return any(q.state is not FakeQuantState.FLOAT for q in present)  # type: ignore[union-attr]


def _check_quantizer(owner: str, quantizer: Any) -> None:
    if quantizer is not None and not isinstance(quantizer, nn.Module):
        raise TypeError(
            f"{owner}: weight_fake_quant must be an nn.Module (e.g. a FakeQuantize) or None, "
            f"got {type(quantizer).__name__}"
        )


# -- functional forms of the torch forwards, taking the weight explicitly ----------------------
def _pad_for_f_pad(conv: nn.Module) -> list[int]:
    """The conv's padding in ``F.pad`` order (last spatial dim first, left then right)."""
    pads: list[int] = []
    padding = conv.padding
    for i in reversed(range(len(conv.kernel_size))):
        if padding == "valid":
            left = right = 0
        elif padding == "same":
            total = conv.dilation[i] * (conv.kernel_size[i] - 1)
            left, right = total // 2, total - total // 2
        else:
            left = right = padding[i]
        pads += [left, right]
    return pads


def conv_forward(
    conv: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None, groups: int | None = None
) -> Tensor:
    """``ConvNd.forward`` of ``conv`` with ``weight`` / ``bias`` (and optionally ``groups``)."""
    fn = _CONV_FN[len(conv.kernel_size)]
    groups = conv.groups if groups is None else groups
    if conv.padding_mode != "zeros":
        x = F.pad(x, _pad_for_f_pad(conv), mode=conv.padding_mode)
        return fn(x, weight, bias, conv.stride, 0, conv.dilation, groups)
    return fn(x, weight, bias, conv.stride, conv.padding, conv.dilation, groups)


def _transpose_output_padding(
    conv: nn.Module, x: Tensor, output_size: Sequence[int] | None
) -> list[int]:
    """``output_padding`` that makes a transposed conv produce ``output_size`` (torch's rule)."""
    n = len(conv.kernel_size)
    if output_size is None:
        return list(conv.output_padding)
    non_spatial = 2 if x.dim() == n + 2 else 1
    size = list(output_size)
    if len(size) == n + non_spatial:
        size = size[non_spatial:]
    if len(size) != n:
        raise ValueError(
            f"{type(conv).__name__}: for {x.dim()}D input, output_size must have {n} or "
            f"{n + non_spatial} elements (got {len(size)})"
        )
    out = []
    for d in range(n):
        smallest = (
            (x.size(d + non_spatial) - 1) * conv.stride[d]
            - 2 * conv.padding[d]
            + conv.dilation[d] * (conv.kernel_size[d] - 1)
            + 1
        )
        if not smallest <= size[d] < smallest + conv.stride[d]:
            raise ValueError(
                f"{type(conv).__name__}: requested output size {size}, but dimension {d} must "
                f"lie in [{smallest}, {smallest + conv.stride[d] - 1}] for an input of "
                f"{tuple(x.shape[non_spatial:])}"
            )
        out.append(size[d] - smallest)
    return out


def conv_transpose_forward(
    conv: nn.Module,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    output_size: Sequence[int] | None = None,
) -> Tensor:
    """``ConvTransposeNd.forward`` of ``conv`` with ``weight`` / ``bias``."""
    if conv.padding_mode != "zeros":  # torch's constructor already refuses this
        raise ValueError(f"{type(conv).__name__}: only padding_mode='zeros' is supported")
    fn = _CONV_TRANSPOSE_FN[len(conv.kernel_size)]
    output_padding = _transpose_output_padding(conv, x, output_size)
    return fn(
        x, weight, bias, conv.stride, conv.padding, output_padding, conv.groups, conv.dilation
    )


# -- the mixin ----------------------------------------------------------------------------------
class QuantWeightMixin:
    """Adds ``weight_fake_quant`` to a torch module with a ``weight`` Parameter.

    A concrete class lists the mixin first, then the torch class it replaces, and sets
    ``_FLOAT_MODULE``, and implements ``_forward_with_weight(input, weight)`` (or ``forward``
    itself when the torch forward takes more arguments).
    """

    _FLOAT_MODULE: ClassVar[type[nn.Module]]
    weight: Tensor

    def __init__(self, *args: Any, weight_fake_quant: nn.Module | None = None, **kwargs: Any):
        """The torch constructor's arguments, plus the keyword ``weight_fake_quant``."""
        _check_quantizer(type(self).__name__, weight_fake_quant)
        super().__init__(*args, **kwargs)
        self.register_module("weight_fake_quant", weight_fake_quant)

    @classmethod
    def from_float(cls, mod: nn.Module, weight_fake_quant: nn.Module | None = None):
        """Wrap float ``mod`` (exactly of type ``_FLOAT_MODULE``), sharing its parameters."""
        if type(mod) is not cls._FLOAT_MODULE:
            raise TypeError(
                f"{cls.__name__}.from_float expects a {cls._FLOAT_MODULE.__name__}, got "
                f"{type(mod).__name__} (subclasses may override forward and are not converted)"
            )
        _check_quantizer(f"{cls.__name__}.from_float", weight_fake_quant)
        new = rebind_module(mod, cls)
        new.register_module("weight_fake_quant", weight_fake_quant)
        return new

    def to_float(self) -> nn.Module:
        """The plain torch module, sharing this module's (unquantized) parameters."""
        return rebind_module(self, self._FLOAT_MODULE, drop=("weight_fake_quant",))

    def fake_quantized_weight(self) -> Tensor:
        """``weight_fake_quant(weight)``, or the float weight when there is no quantizer."""
        quantizer = self.weight_fake_quant  # type: ignore[attr-defined]
        return self.weight if quantizer is None else quantizer(self.weight)

    def forward(self, input: Tensor) -> Tensor:
        return self._forward_with_weight(input, self.fake_quantized_weight())

    def _forward_with_weight(self, input: Tensor, weight: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _forward_with_weight")


class _QuantConvNd(QuantWeightMixin):
    def _forward_with_weight(self, input: Tensor, weight: Tensor) -> Tensor:
        return conv_forward(self, input, weight, self.bias)


class _QuantConvTransposeNd(QuantWeightMixin):
    def forward(self, input: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        weight = self.fake_quantized_weight()
        return conv_transpose_forward(self, input, weight, self.bias, output_size)


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """``nn.Conv1d`` with a fake-quantized weight (per-channel axis 0)."""

    _FLOAT_MODULE = nn.Conv1d


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """``nn.Conv2d`` with a fake-quantized weight (per-channel axis 0)."""

    _FLOAT_MODULE = nn.Conv2d


class QuantConv3d(_QuantConvNd, nn.Conv3d):
    """``nn.Conv3d`` with a fake-quantized weight (per-channel axis 0)."""

    _FLOAT_MODULE = nn.Conv3d


class QuantConvTranspose1d(_QuantConvTransposeNd, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` with a fake-quantized weight (per-channel axis 1)."""

    _FLOAT_MODULE = nn.ConvTranspose1d


class QuantConvTranspose2d(_QuantConvTransposeNd, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with a fake-quantized weight (per-channel axis 1)."""

    _FLOAT_MODULE = nn.ConvTranspose2d


class QuantConvTranspose3d(_QuantConvTransposeNd, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` with a fake-quantized weight (per-channel axis 1)."""

    _FLOAT_MODULE = nn.ConvTranspose3d


class QuantLinear(QuantWeightMixin, nn.Linear):
    """``nn.Linear`` with a fake-quantized weight (per-channel axis 0)."""

    _FLOAT_MODULE = nn.Linear

    def _forward_with_weight(self, input: Tensor, weight: Tensor) -> Tensor:
        return F.linear(input, weight, self.bias)


class QuantEmbedding(QuantWeightMixin, nn.Embedding):
    """``nn.Embedding`` with a fake-quantized table (per-channel axis 0: one scale per row).

    ``max_norm`` renormalises the looked-up rows of the float table in place, as torch does,
    before the table is fake-quantized.  ``sparse=True`` gives a sparse gradient only without a
    quantizer: the fake-quantized table is a dense tensor, so its gradient is dense.
    """

    _FLOAT_MODULE = nn.Embedding

    def forward(self, input: Tensor) -> Tensor:
        if self.max_norm is not None:
            with torch.no_grad():
                rows = input.contiguous()
                torch.embedding_renorm_(self.weight, rows, self.max_norm, self.norm_type)
        return F.embedding(
            input,
            self.fake_quantized_weight(),
            self.padding_idx,
            None,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse and self.weight_fake_quant is None,
        )
