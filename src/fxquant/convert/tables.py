"""The op tables of the lowering, as data (checked against torch in ``tests/convert``).

Which ops run natively on ``torch.quint8`` tensors, which are identities at inference, which
activations fuse, which binary ops have quantized kernels, and the known engine quirks.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..graph.patterns import FUNCTION_KINDS, METHOD_KINDS
from ..qconfig import OpKind

__all__ = [
    "NATIVE_FUNCTIONS",
    "NATIVE_METHODS",
    "METHOD_REWRITES",
    "NATIVE_MODULES",
    "NATIVE_MISSING",
    "CLAMP_NEEDS_CONTIGUOUS",
    "IDENTITY_MODULES",
    "IDENTITY_FUNCTIONS",
    "METADATA_METHODS",
    "RELU",
    "RELU6",
    "ACTIVATIONS",
    "BINARY_KERNELS",
    "BINARY_TARGETS",
    "CAT_TARGETS",
    "hashable",
    "is_metadata",
    "is_sequence_op",
]

# ``view`` fails on the channels-last tensors quantized convs return: use ``reshape`` (same
# values; inference does not rely on aliasing).
METHOD_REWRITES = {"view": "reshape", "view_as": "reshape_as"}
NATIVE_MODULES: tuple[type, ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.Flatten,
    nn.Unflatten,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ChannelShuffle,
    nn.UpsamplingNearest2d,
    nn.Upsample,  # nearest only (other modes are COMPUTE)
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
)
# engine -> native ops it lacks (run in float there, exactly)
NATIVE_MISSING: dict[str, frozenset[Any]] = {
    "qnnpack": frozenset({F.max_pool3d, nn.MaxPool3d}),
}
# engines whose quantized clamp / hardtanh / relu6 misread channels-last tensors (torch 2.13
# qnnpack returns a contiguous tensor filled in channels-last order): clamp a contiguous copy
CLAMP_NEEDS_CONTIGUOUS = frozenset({"qnnpack"})
IDENTITY_MODULES: tuple[type, ...] = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
IDENTITY_FUNCTIONS = frozenset({F.dropout, F.dropout1d, F.dropout2d, F.dropout3d})

# The ops that only move or select values (SHARE in fxquant.graph.patterns) run natively on
# torch.quint8 tensors, except those without a quantized kernel; nearest interpolation too.
# Verified to give the same values on quantized tensors as on their dequantized floats
# (tests/convert/test_convert.py::test_native_ops_on_quantized_tensors).
_NO_QUANTIZED_KERNEL = frozenset({torch.roll, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                                  F.adaptive_max_pool3d, "roll"})
NATIVE_FUNCTIONS = frozenset(
    f for f, kind in FUNCTION_KINDS.items()
    if kind is OpKind.SHARE and f not in IDENTITY_FUNCTIONS and f not in _NO_QUANTIZED_KERNEL
) | {F.interpolate}  # only mode="nearest" is SHARE; other modes are COMPUTE (float)
NATIVE_METHODS = frozenset(
    m for m, kind in METHOD_KINDS.items()
    if kind is OpKind.SHARE and m not in METHOD_REWRITES and m not in _NO_QUANTIZED_KERNEL
)
# ops on tensors that only read metadata: fine on quantized tensors
METADATA_METHODS = frozenset({"size", "dim", "numel"})

RELU = (0.0, None)
RELU6 = (0.0, 6.0)
ACTIVATIONS: dict[Any, tuple[float, float | None]] = {
    nn.ReLU: RELU,
    nn.ReLU6: RELU6,
    F.relu: RELU,
    F.relu_: RELU,
    torch.relu: RELU,
    torch.relu_: RELU,
    F.relu6: RELU6,
    "relu": RELU,
    "relu_": RELU,
}

# binary ops with a quantized kernel -> (kernel, the kernel fused with relu or None)
BINARY_KERNELS = {
    "add": (torch.ops.quantized.add, torch.ops.quantized.add_relu),
    "mul": (torch.ops.quantized.mul, torch.ops.quantized.mul_relu),
    "matmul": (torch.ops.quantized.matmul, None),
}
BINARY_TARGETS = {
    operator.add: "add",
    operator.iadd: "add",
    torch.add: "add",
    operator.mul: "mul",
    operator.imul: "mul",
    torch.mul: "mul",
    "add": "add",
    "add_": "add",
    "mul": "mul",
    "mul_": "mul",
    operator.matmul: "matmul",
    torch.matmul: "matmul",
    torch.bmm: "matmul",
    "matmul": "matmul",
    "bmm": "matmul",
}
CAT_TARGETS = frozenset({torch.cat, torch.concat})


def hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def is_metadata(n: fx.Node) -> bool:
    if n.op == "call_method":
        return n.target in METADATA_METHODS
    return n.op == "call_function" and n.target is getattr and n.args[1:2] == ("shape",)


_SEQUENCE_OPS = frozenset({torch.chunk, torch.split, torch.unbind, "chunk", "split", "unbind"})


def is_sequence_op(n: fx.Node) -> bool:
    return hashable(n.target) and n.target in _SEQUENCE_OPS
