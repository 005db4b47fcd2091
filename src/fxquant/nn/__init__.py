"""Quantization-aware modules that replace float leaf modules inside a prepared model.

* ``QuantConv1d/2d/3d``, ``QuantConvTranspose1d/2d/3d``, ``QuantLinear``, ``QuantEmbedding``:
  the torch module with its weight passed through ``weight_fake_quant``.
* ``ConvBn1d/2d/3d``: conv + BatchNorm with the BN folded into the quantized weight.
* :func:`fold_bn_weights`: the folding math as a pure function, for exporters and algorithms.
* ``QuantMultiheadAttention``, ``ScaledDotProductAttention`` (one ``F.scaled_dot_product_attention``
  call site), ``QuantLSTM`` / ``QuantGRU`` / ``QuantRNN`` and their cells: library modules
  quantized inside, bit-exact float forward while their quantizers are off
  (:mod:`fxquant.nn.attention`, :mod:`fxquant.nn.rnn`).

The tables below are plain data, keyed by exact module type (subclasses of torch modules may
override ``forward`` and are not converted):

* :data:`FLOAT_TO_QUANT`: float module type -> weight-quantized module type.
* :data:`CONV_TO_CONV_BN`: float conv type -> the ConvBn type that absorbs a following BN.
* :data:`LIBRARY_TO_QUANT`: torch library module type -> its quantizable-inside version.
* :data:`WEIGHT_AXIS`: module type (float, quantized or ConvBn) -> the output-channel axis of
  its weight, i.e. the axis for per-channel weight quantization.
"""

from torch import nn

from .attention import QuantMultiheadAttention, ScaledDotProductAttention
from .conv_bn import MIN_SCALE, ConvBn1d, ConvBn2d, ConvBn3d, ConvBnNd
from .fold import bn_scale_factor, fold_bn_weights
from .modules import (
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantConvTranspose1d,
    QuantConvTranspose2d,
    QuantConvTranspose3d,
    QuantEmbedding,
    QuantLinear,
    QuantWeightMixin,
    conv_forward,
    conv_transpose_forward,
)
from .rnn import (
    QuantGRU,
    QuantGRUCell,
    QuantLSTM,
    QuantLSTMCell,
    QuantRNN,
    QuantRNNCell,
    RNNQuantizers,
)
from .stubs import DeQuantStub, FloatFunctional, QuantStub

FLOAT_TO_QUANT: dict[type, type] = {
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Conv3d: QuantConv3d,
    nn.ConvTranspose1d: QuantConvTranspose1d,
    nn.ConvTranspose2d: QuantConvTranspose2d,
    nn.ConvTranspose3d: QuantConvTranspose3d,
    nn.Linear: QuantLinear,
    nn.Embedding: QuantEmbedding,
}

LIBRARY_TO_QUANT: dict[type, type] = {
    nn.MultiheadAttention: QuantMultiheadAttention,
    nn.LSTM: QuantLSTM,
    nn.GRU: QuantGRU,
    nn.RNN: QuantRNN,
    nn.LSTMCell: QuantLSTMCell,
    nn.GRUCell: QuantGRUCell,
    nn.RNNCell: QuantRNNCell,
}

CONV_TO_CONV_BN: dict[type, type] = {
    nn.Conv1d: ConvBn1d,
    nn.Conv2d: ConvBn2d,
    nn.Conv3d: ConvBn3d,
}

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

WEIGHT_AXIS: dict[type, int] = {
    **{t: 1 if t in _TRANSPOSED else 0 for t in FLOAT_TO_QUANT},
    **{q: 1 if f in _TRANSPOSED else 0 for f, q in FLOAT_TO_QUANT.items()},
    **{cb: 0 for cb in CONV_TO_CONV_BN.values()},
}

__all__ = [
    "QuantStub",
    "DeQuantStub",
    "FloatFunctional",
    "QuantWeightMixin",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose1d",
    "QuantConvTranspose2d",
    "QuantConvTranspose3d",
    "QuantLinear",
    "QuantEmbedding",
    "ConvBnNd",
    "ConvBn1d",
    "ConvBn2d",
    "ConvBn3d",
    "MIN_SCALE",
    "fold_bn_weights",
    "bn_scale_factor",
    "conv_forward",
    "conv_transpose_forward",
    "FLOAT_TO_QUANT",
    "CONV_TO_CONV_BN",
    "LIBRARY_TO_QUANT",
    "QuantMultiheadAttention",
    "ScaledDotProductAttention",
    "RNNQuantizers",
    "QuantLSTM",
    "QuantGRU",
    "QuantRNN",
    "QuantLSTMCell",
    "QuantGRUCell",
    "QuantRNNCell",
    "WEIGHT_AXIS",
]
