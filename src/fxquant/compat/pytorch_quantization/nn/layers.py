"""NVIDIA's quantized layers (its ``nn.modules.quant_*``): the torch layer with a
``TensorQuantizer`` on its input (and weight).  Each class keeps torch's constructor (plus
``quant_desc_input=`` / ``quant_desc_weight=``) and class-level defaults set by
``set_default_quant_desc_input`` / ``set_default_quant_desc_weight``."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ....errors import ConfigError
from ....nn import conv_forward, conv_transpose_forward
from .. import tensor_quant as tq
from .tensor_quantizer import TensorQuantizer

__all__ = [
    "QuantMixin",
    "QuantInputMixin",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose1d",
    "QuantConvTranspose2d",
    "QuantConvTranspose3d",
    "QuantLinear",
    "QuantAvgPool1d",
    "QuantAvgPool2d",
    "QuantAvgPool3d",
    "QuantAdaptiveAvgPool1d",
    "QuantAdaptiveAvgPool2d",
    "QuantAdaptiveAvgPool3d",
    "QuantMaxPool1d",
    "QuantMaxPool2d",
    "QuantMaxPool3d",
    "QuantLSTMCell",
    "QuantLSTM",
    "QUANT_MODULES",
]


def _check_desc(value: Any) -> tq.QuantDescriptor:
    if not isinstance(value, tq.QuantDescriptor):
        raise ConfigError(f"expected a QuantDescriptor, got {type(value).__name__}")
    return copy.deepcopy(value)


def _pop_descs(cls: type, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    desc_in = kwargs.pop("quant_desc_input", None) or cls.default_quant_desc_input
    desc_w = kwargs.pop("quant_desc_weight", None) or getattr(cls, "default_quant_desc_weight",
                                                              None)
    return desc_in, desc_w


class QuantInputMixin:
    """A layer whose input passes through ``_input_quantizer``."""

    default_quant_desc_input: ClassVar[tq.QuantDescriptor] = tq.QUANT_DESC_8BIT_PER_TENSOR

    @classmethod
    def set_default_quant_desc_input(cls, value: tq.QuantDescriptor) -> None:
        """Descriptor of the input quantizer of layers built afterwards."""
        cls.default_quant_desc_input = _check_desc(value)

    def init_quantizer(self, quant_desc_input: tq.QuantDescriptor) -> None:
        self._input_quantizer = TensorQuantizer(quant_desc_input)

    @property
    def input_quantizer(self) -> TensorQuantizer:
        return self._input_quantizer


class QuantMixin(QuantInputMixin):
    """A weighted layer whose input and weight pass through ``_input_quantizer`` /
    ``_weight_quantizer``."""

    default_quant_desc_weight: ClassVar[tq.QuantDescriptor] = tq.QUANT_DESC_8BIT_PER_TENSOR

    @classmethod
    def set_default_quant_desc_weight(cls, value: tq.QuantDescriptor) -> None:
        """Descriptor of the weight quantizer of layers built afterwards."""
        cls.default_quant_desc_weight = _check_desc(value)

    def init_quantizer(self, quant_desc_input: tq.QuantDescriptor,  # type: ignore[override]
                       quant_desc_weight: tq.QuantDescriptor | None = None) -> None:
        self._input_quantizer = TensorQuantizer(quant_desc_input)
        self._weight_quantizer = TensorQuantizer(quant_desc_weight
                                                 or self.default_quant_desc_weight)

    @property
    def weight_quantizer(self) -> TensorQuantizer:
        return self._weight_quantizer


def _weighted(base: type, desc_w: tq.QuantDescriptor, transpose: bool = False) -> type:
    class _Quant(QuantMixin, base):  # type: ignore[misc, valid-type]
        default_quant_desc_weight = desc_w

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            desc_in, desc_weight = _pop_descs(type(self), kwargs)
            base.__init__(self, *args, **kwargs)
            self.init_quantizer(desc_in, desc_weight)

        def forward(self, input: Tensor, output_size: Any = None) -> Tensor:
            x = self._input_quantizer(input)
            w = self._weight_quantizer(self.weight)
            if base is nn.Linear:
                return F.linear(x, w, self.bias)
            if transpose:
                return conv_transpose_forward(self, x, w, self.bias, output_size)
            return conv_forward(self, x, w, self.bias)

    return _Quant


def _named(cls: type, name: str, doc: str) -> type:
    cls.__name__ = cls.__qualname__ = name
    cls.__doc__ = doc
    return cls


QuantConv1d = _named(_weighted(nn.Conv1d, tq.QUANT_DESC_8BIT_CONV1D_WEIGHT_PER_CHANNEL),
                     "QuantConv1d", "``nn.Conv1d`` with input and per-channel weight quantizers.")
QuantConv2d = _named(_weighted(nn.Conv2d, tq.QUANT_DESC_8BIT_CONV2D_WEIGHT_PER_CHANNEL),
                     "QuantConv2d", "``nn.Conv2d`` with input and per-channel weight quantizers.")
QuantConv3d = _named(_weighted(nn.Conv3d, tq.QUANT_DESC_8BIT_CONV3D_WEIGHT_PER_CHANNEL),
                     "QuantConv3d", "``nn.Conv3d`` with input and per-channel weight quantizers.")
QuantConvTranspose1d = _named(
    _weighted(nn.ConvTranspose1d, tq.QUANT_DESC_8BIT_CONVTRANSPOSE1D_WEIGHT_PER_CHANNEL, True),
    "QuantConvTranspose1d", "``nn.ConvTranspose1d`` with input and weight quantizers.")
QuantConvTranspose2d = _named(
    _weighted(nn.ConvTranspose2d, tq.QUANT_DESC_8BIT_CONVTRANSPOSE2D_WEIGHT_PER_CHANNEL, True),
    "QuantConvTranspose2d", "``nn.ConvTranspose2d`` with input and weight quantizers.")
QuantConvTranspose3d = _named(
    _weighted(nn.ConvTranspose3d, tq.QUANT_DESC_8BIT_CONVTRANSPOSE3D_WEIGHT_PER_CHANNEL, True),
    "QuantConvTranspose3d", "``nn.ConvTranspose3d`` with input and weight quantizers.")
QuantLinear = _named(_weighted(nn.Linear, tq.QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW),
                     "QuantLinear", "``nn.Linear`` with input and per-row weight quantizers.")


def _input_only(base: type) -> type:
    class _Quant(QuantInputMixin, base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            desc_in, _ = _pop_descs(type(self), kwargs)
            base.__init__(self, *args, **kwargs)
            self.init_quantizer(desc_in)

        def forward(self, input: Tensor) -> Tensor:
            return base.forward(self, self._input_quantizer(input))

    return _named(_Quant, "Quant" + base.__name__,
                  f"``nn.{base.__name__}`` with an input quantizer.")


QuantAvgPool1d = _input_only(nn.AvgPool1d)
QuantAvgPool2d = _input_only(nn.AvgPool2d)
QuantAvgPool3d = _input_only(nn.AvgPool3d)
QuantAdaptiveAvgPool1d = _input_only(nn.AdaptiveAvgPool1d)
QuantAdaptiveAvgPool2d = _input_only(nn.AdaptiveAvgPool2d)
QuantAdaptiveAvgPool3d = _input_only(nn.AdaptiveAvgPool3d)
QuantMaxPool1d = _input_only(nn.MaxPool1d)
QuantMaxPool2d = _input_only(nn.MaxPool2d)
QuantMaxPool3d = _input_only(nn.MaxPool3d)


def _lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
               b_ih: Tensor | None, b_hh: Tensor | None) -> tuple[Tensor, Tensor]:
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class QuantLSTMCell(QuantMixin, nn.LSTMCell):
    """``nn.LSTMCell`` whose input and hidden state share ``_input_quantizer`` and whose two
    weights share ``_weight_quantizer`` (NVIDIA's layout)."""

    default_quant_desc_weight = tq.QUANT_DESC_8BIT_PER_TENSOR

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        desc_in, desc_w = _pop_descs(type(self), kwargs)
        nn.LSTMCell.__init__(self, *args, **kwargs)
        self.init_quantizer(desc_in, desc_w)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, Tensor]:
        if hx is None:
            z = input.new_zeros(*input.shape[:-1], self.hidden_size)
            hx = (z, z)
        q, w = self._input_quantizer, self._weight_quantizer
        return _lstm_cell(q(input), q(hx[0]), hx[1], w(self.weight_ih), w(self.weight_hh),
                          self.bias_ih, self.bias_hh)


class QuantLSTM(QuantMixin, nn.LSTM):
    """``nn.LSTM`` (layers, bidirectional, batch_first) computed cell by cell with quantized
    inputs / hidden states and weights; no ``proj_size``; dropout between layers in training."""

    default_quant_desc_weight = tq.QUANT_DESC_8BIT_PER_TENSOR

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        desc_in, desc_w = _pop_descs(type(self), kwargs)
        nn.LSTM.__init__(self, *args, **kwargs)
        if self.proj_size:
            raise ConfigError("QuantLSTM: proj_size is not supported")
        self.init_quantizer(desc_in, desc_w)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        x = input.transpose(0, 1) if self.batch_first else input
        batched = x.dim() == 3
        if not batched:
            x = x.unsqueeze(1)
        dirs = 2 if self.bidirectional else 1
        n = self.num_layers * dirs
        if hx is None:
            z = x.new_zeros(n, x.shape[1], self.hidden_size)
            hx = (z, z)
        elif not batched:
            hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        q, wq = self._input_quantizer, self._weight_quantizer
        hs, cs = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                k = layer * dirs + d
                h, c = hx[0][k], hx[1][k]
                w_ih, w_hh = wq(getattr(self, "weight_ih" + sfx)), wq(getattr(self,
                                                                          "weight_hh" + sfx))
                b_ih = getattr(self, "bias_ih" + sfx) if self.bias else None
                b_hh = getattr(self, "bias_hh" + sfx) if self.bias else None
                steps = range(x.shape[0] - 1, -1, -1) if d else range(x.shape[0])
                ys = [None] * x.shape[0]
                for t in steps:
                    h, c = _lstm_cell(q(x[t]), q(h), c, w_ih, w_hh, b_ih, b_hh)
                    ys[t] = h
                outs.append(torch.stack(ys))  # type: ignore[arg-type]
                hs.append(h)
                cs.append(c)
            x = torch.cat(outs, dim=-1) if dirs == 2 else outs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        h_n, c_n = torch.stack(hs), torch.stack(cs)
        if not batched:
            x, h_n, c_n = x.squeeze(1), h_n.squeeze(1), c_n.squeeze(1)
        return (x.transpose(0, 1) if self.batch_first and batched else x), (h_n, c_n)


QUANT_MODULES: dict[str, type] = {
    "Conv1d": QuantConv1d,
    "Conv2d": QuantConv2d,
    "Conv3d": QuantConv3d,
    "ConvTranspose1d": QuantConvTranspose1d,
    "ConvTranspose2d": QuantConvTranspose2d,
    "ConvTranspose3d": QuantConvTranspose3d,
    "Linear": QuantLinear,
    "LSTM": QuantLSTM,
    "LSTMCell": QuantLSTMCell,
    "AvgPool1d": QuantAvgPool1d,
    "AvgPool2d": QuantAvgPool2d,
    "AvgPool3d": QuantAvgPool3d,
    "AdaptiveAvgPool1d": QuantAdaptiveAvgPool1d,
    "AdaptiveAvgPool2d": QuantAdaptiveAvgPool2d,
    "AdaptiveAvgPool3d": QuantAdaptiveAvgPool3d,
}
"""``torch.nn`` class name -> quantized class (what ``quant_modules.initialize`` patches)."""
