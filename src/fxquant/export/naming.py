"""ONNX tensor names of a prepared model: the one place exporters and encodings agree on them.

* the float tensor an op produces is named after the op (``conv1``, ``_generated_add_0``,
  ``layer1.relu_1``); a model input keeps its argument name;
* an activation quantizer of op ``N`` quantizes tensor ``N`` (role ``output``) or
  ``N.input_<i>`` (role ``input_<i>``); in a QDQ graph the chain is
  ``N -> QuantizeLinear -> N_quantized -> DequantizeLinear -> N_dequantized``;
* the weight of op ``N`` is tensor ``N.weight`` (a float initializer in a float export, the
  output of its DequantizeLinear in a QDQ export, fed by initializer ``N.weight_quantized``);
  the bias is ``N.bias`` (int32 ``N.bias_quantized`` + DequantizeLinear in QDQ exports);
* scale / zero-point initializers of tensor ``T`` are ``T_scale`` / ``T_zero_point``;
* a library module quantized inside (attention, recurrent layers:
  :mod:`fxquant.graph.library_modules`) has more roles, e.g. ``q_weight``, ``scores``,
  ``l0.hidden``: its quantizer of role ``R`` quantizes tensor ``N.R``.
"""

from __future__ import annotations

from ..graph.naming import quantized_tensor_name, weight_name

__all__ = [
    "quantized_tensor_name",
    "weight_name",
    "bias_name",
    "q_output",
    "dq_output",
    "scale_name",
    "zero_point_name",
]


def bias_name(op_name: str) -> str:
    return f"{op_name}.bias"


def q_output(tensor: str) -> str:
    return f"{tensor}_quantized"


def dq_output(tensor: str) -> str:
    return f"{tensor}_dequantized"


def scale_name(tensor: str) -> str:
    return f"{tensor}_scale"


def zero_point_name(tensor: str) -> str:
    return f"{tensor}_zero_point"
