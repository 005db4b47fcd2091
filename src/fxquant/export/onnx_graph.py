"""A small ONNX graph builder: unique names, nodes, initializers, dtype tables.

Used by :mod:`fxquant.export.onnx_export` (the fx walk) and :mod:`fxquant.export.onnx_ops`
(the op emitters); it knows nothing about quantization policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..numerics import QDType

__all__ = [
    "QParams",
    "TensorRef",
    "GraphBuilder",
    "onnx_type_of_torch",
    "onnx_type_of_qdtype",
    "storage_range",
    "opset_for_qdtype",
]

_TORCH_TO_ONNX = {
    torch.float32: TensorProto.FLOAT,
    torch.float16: TensorProto.FLOAT16,
    torch.bfloat16: TensorProto.BFLOAT16,
    torch.float64: TensorProto.DOUBLE,
    torch.int64: TensorProto.INT64,
    torch.int32: TensorProto.INT32,
    torch.int16: TensorProto.INT16,
    torch.int8: TensorProto.INT8,
    torch.uint8: TensorProto.UINT8,
    torch.bool: TensorProto.BOOL,
}

# ONNX storage type of a quantized dtype: (signed, max bits) -> (type, opset that introduced it)
_Q_TYPES = (
    (True, 4, TensorProto.INT4, 21),
    (True, 8, TensorProto.INT8, 13),
    (True, 16, TensorProto.INT16, 21),
    (False, 4, TensorProto.UINT4, 21),
    (False, 8, TensorProto.UINT8, 13),
    (False, 16, TensorProto.UINT16, 21),
)
_RANGES = {
    TensorProto.INT4: (-8, 7),
    TensorProto.UINT4: (0, 15),
    TensorProto.INT8: (-128, 127),
    TensorProto.UINT8: (0, 255),
    TensorProto.INT16: (-32768, 32767),
    TensorProto.UINT16: (0, 65535),
}


def onnx_type_of_torch(dtype: torch.dtype) -> int:
    try:
        return _TORCH_TO_ONNX[dtype]
    except KeyError:
        raise TypeError(f"no ONNX element type for torch dtype {dtype}") from None


def onnx_type_of_qdtype(dtype: QDType) -> int | None:
    """The smallest ONNX integer type that holds ``dtype``'s codes (None: none can)."""
    for signed, bits, t, _ in _Q_TYPES:
        if signed == dtype.signed and dtype.bits <= bits:
            return t
    return None


def opset_for_qdtype(dtype: QDType) -> int | None:
    """Lowest opset whose QuantizeLinear / DequantizeLinear support ``dtype`` (None: none)."""
    for signed, bits, _, opset in _Q_TYPES:
        if signed == dtype.signed and dtype.bits <= bits:
            return opset
    return None


def storage_range(elem_type: int) -> tuple[int, int]:
    """Saturation range of an ONNX integer type, as ``QuantizeLinear`` applies it."""
    return _RANGES[elem_type]


@dataclass(frozen=True, eq=False)
class QParams:
    """Quantization parameters of a tensor in the graph (names of their initializers, values)."""

    scale_name: str
    zero_point_name: str
    scale: torch.Tensor
    zero_point: torch.Tensor
    dtype: QDType
    axis: int | None

    @property
    def per_tensor(self) -> bool:
        return self.axis is None


@dataclass(frozen=True)
class TensorRef:
    """A tensor of the ONNX graph as the emitters see it.

    Attributes:
        name: ONNX value name.
        shape: shape seen with the example inputs (None if unknown).
        elem_type: ONNX element type.
        q: set when the value is the output of a DequantizeLinear (or of an op that only moves
            values of one), i.e. it lies on that quantization grid.
    """

    name: str
    shape: tuple[int, ...] | None
    elem_type: int = TensorProto.FLOAT
    q: QParams | None = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


def _np(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.numpy()
    return np.asarray(value)


class GraphBuilder:
    """Collects nodes and initializers under unique names."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()
        self._node_names: set[str] = set()
        self._counters: dict[str, int] = {}

    # -- names ---------------------------------------------------------------------------------
    def taken(self, name: str) -> bool:
        return name in self._names

    def fresh(self, base: str) -> str:
        """An unused value name derived from ``base`` (``base`` itself when free)."""
        name = base
        while name in self._names:
            k = self._counters.get(base, 0) + 1
            self._counters[base] = k
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def claim(self, name: str) -> str:
        """Reserve exactly ``name``; raises if it is taken (naming contract violation)."""
        if name in self._names:
            raise ValueError(f"ONNX tensor name {name!r} is already used")
        self._names.add(name)
        return name

    def _node_name(self, base: str) -> str:
        name, k = base, 0
        while name in self._node_names:
            k += 1
            name = f"{base}_{k}"
        self._node_names.add(name)
        return name

    # -- nodes ---------------------------------------------------------------------------------
    def node(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str] | str | None = None,
        *,
        name: str | None = None,
        domain: str = "",
        **attrs: Any,
    ) -> list[str]:
        """Add a node; ``outputs``: claimed names, a base for one fresh name, or None."""
        if outputs is None:
            outs = [self.fresh(f"{op_type}_out")]
        elif isinstance(outputs, str):
            outs = [self.fresh(outputs)]
        else:
            outs = list(outputs)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        base = name or f"{outs[0]}/{op_type}"
        self.nodes.append(
            helper.make_node(
                op_type, list(inputs), outs, name=self._node_name(base), domain=domain, **attrs
            )
        )
        return outs

    def one(self, op_type: str, inputs: Sequence[str], out: str | None = None, **attrs) -> str:
        """Add a single-output node; ``out`` is a base name for a fresh output."""
        return self.node(op_type, inputs, out or f"{op_type}_out", **attrs)[0]

    # -- initializers --------------------------------------------------------------------------
    def initializer(self, name: str, value: Any, elem_type: int | None = None) -> str:
        """Add an initializer under exactly ``name`` (claimed)."""
        self.claim(name)
        self.initializers[name] = make_tensor(name, value, elem_type)
        return name

    def const(self, base: str, value: Any, elem_type: int | None = None) -> str:
        """Add an initializer under a fresh name derived from ``base``."""
        name = self.fresh(base)
        self.initializers[name] = make_tensor(name, value, elem_type)
        return name

    def int64s(self, base: str, values: Sequence[int]) -> str:
        return self.const(base, np.asarray(list(values), dtype=np.int64))

    # -- graph I/O -----------------------------------------------------------------------------
    def add_input(self, name: str, elem_type: int, shape: Sequence[int | str] | None) -> None:
        self.claim(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def add_output(self, name: str, elem_type: int, shape: Sequence[int | str] | None) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))


_NP_OF_ONNX = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.FLOAT16: np.float16,
    TensorProto.INT64: np.int64,
    TensorProto.INT32: np.int32,
    TensorProto.INT16: np.int16,
    TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8,
    TensorProto.UINT16: np.uint16,
    TensorProto.BOOL: np.bool_,
}


def make_tensor(name: str, value: Any, elem_type: int | None = None) -> onnx.TensorProto:
    """A TensorProto from a tensor / array / number, cast to ``elem_type`` if given."""
    arr = _np(value)
    if elem_type in (TensorProto.INT4, TensorProto.UINT4):  # packed two per byte by onnx
        return helper.make_tensor(name, elem_type, arr.shape, arr.astype(np.int32).flatten())
    if elem_type is not None:
        arr = arr.astype(_NP_OF_ONNX[elem_type])
    return numpy_helper.from_array(np.array(arr, order="C"), name)  # keeps 0-d
