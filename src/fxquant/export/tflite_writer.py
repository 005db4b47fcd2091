"""A TFLite model as plain data, serialised through the ``tflite`` package's schema bindings.

:class:`TFLModel` holds tensors (shape, type, constant data, quantization) and operators
(builtin operator name, inputs, outputs, builtin options as ``{field: value}``) of one
subgraph.  :func:`serialize` writes it with the builder functions the ``tflite`` package
generated from LiteRT's ``schema.fbs`` (``tflite.Conv2DOptions.Conv2DOptionsStart`` ...) and the
``flatbuffers`` builder: every table, vector and union goes through the schema's own accessors,
so field ids and defaults are the schema's, never hand-packed bytes.

>>> import numpy as np
>>> m = TFLModel()
>>> x = m.tensor("x", (1, 4), "FLOAT32")
>>> y = m.tensor("y", (1, 4), "FLOAT32")
>>> m.op("RELU", [x], [y])
>>> m.inputs, m.outputs = [x], [y]
>>> data = serialize(m)
>>> data[4:8]
b'TFL3'
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import require

__all__ = ["TFLQuant", "TFLTensor", "TFLOp", "TFLModel", "serialize", "NUMPY_TYPES"]

NUMPY_TYPES: dict[str, np.dtype] = {
    "FLOAT32": np.dtype(np.float32),
    "INT32": np.dtype(np.int32),
    "UINT8": np.dtype(np.uint8),
    "INT64": np.dtype(np.int64),
    "INT16": np.dtype(np.int16),
    "INT8": np.dtype(np.int8),
    "BOOL": np.dtype(np.bool_),
}
"""TFLite tensor type name -> numpy dtype of its buffer."""

_SCHEMA_VERSION = 3
_BUFFER_ALIGNMENT = 16


@dataclass(frozen=True)
class TFLQuant:
    """Affine quantization of a tensor: ``real = scale * (q - zero_point)``.

    ``axis`` is the ``quantized_dimension`` of a per-channel tensor (``None``: per tensor).
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None

    def __post_init__(self) -> None:
        if len(self.scale) != len(self.zero_point) or not self.scale:
            raise ValueError("TFLQuant: scale and zero_point must be non-empty and equally long")


@dataclass
class TFLTensor:
    """One tensor of the subgraph (``data`` set: a constant in its own buffer)."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    data: np.ndarray | None = None
    quant: TFLQuant | None = None


@dataclass
class TFLOp:
    """One operator: a builtin operator name (``CONV_2D``), its tensors and options.

    ``options`` is ``(options table name, {field: value})``, e.g.
    ``("Conv2DOptions", {"Padding": 1, "StrideW": 1, "StrideH": 1})``; field names are the
    schema's (the generated ``<Table>Add<Field>`` functions).  An input index of -1 is an
    omitted optional input.
    """

    opcode: str
    inputs: list[int]
    outputs: list[int]
    options: tuple[str, dict[str, Any]] | None = None


@dataclass
class TFLModel:
    """One-subgraph TFLite model under construction."""

    tensors: list[TFLTensor] = field(default_factory=list)
    ops: list[TFLOp] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    description: str = "fxquant"
    metadata: dict[str, bytes] = field(default_factory=dict)

    def tensor(self, name: str, shape: tuple[int, ...] | list[int], dtype: str,
               data: np.ndarray | None = None, quant: TFLQuant | None = None) -> int:
        """Add a tensor and return its index (``data`` is cast to ``dtype``'s numpy type)."""
        if dtype not in NUMPY_TYPES:
            raise ValueError(f"unsupported TFLite tensor type {dtype!r}")
        if data is not None:
            data = np.ascontiguousarray(np.asarray(data).astype(NUMPY_TYPES[dtype], copy=False))
            if tuple(data.shape) != tuple(shape):
                data = data.reshape(tuple(shape))
        t = TFLTensor(len(self.tensors), name, tuple(int(s) for s in shape), dtype, data, quant)
        self.tensors.append(t)
        return t.index

    def op(self, opcode: str, inputs: list[int], outputs: list[int],
           options: tuple[str, dict[str, Any]] | None = None) -> None:
        """Append an operator (operators run in the order they are added)."""
        self.ops.append(TFLOp(opcode, list(inputs), list(outputs), options))


class _Schema:
    """The ``tflite`` package's generated modules by table name (``tfl.Conv2DOptions`` is the
    module ``tflite.Conv2DOptions`` with its builder functions)."""

    def __init__(self) -> None:
        require("tflite", "tflite", "writing TFLite flatbuffers")

    def __getattr__(self, name: str) -> Any:
        return importlib.import_module(f"tflite.{name}")


def _schema() -> _Schema:
    return _Schema()


def _flatbuffers() -> Any:
    return require("flatbuffers", "tflite", "writing TFLite flatbuffers")


def _vector(b: Any, mod: Any, table: str, fld: str, values: list[int], kind: str) -> int:
    getattr(mod, f"{table}Start{fld}Vector")(b, len(values))
    prepend = getattr(b, f"Prepend{kind}")
    for v in reversed(values):
        prepend(v)
    return b.EndVector()


def _bytes(b: Any, data: bytes) -> int:
    """A ubyte vector whose first byte is 16-byte aligned (tensor data read in place)."""
    arr = np.frombuffer(data, dtype=np.uint8)
    b.StartVector(1, arr.size, _BUFFER_ALIGNMENT)
    b.head = b.head - arr.size
    b.Bytes[b.head : b.head + arr.size] = arr.tobytes()
    return b.EndVector()


def _quantization(b: Any, tfl: Any, q: TFLQuant) -> int:
    mod = tfl.QuantizationParameters
    scale = b.CreateNumpyVector(np.asarray(q.scale, dtype=np.float32))
    zp = b.CreateNumpyVector(np.asarray(q.zero_point, dtype=np.int64))
    mod.QuantizationParametersStart(b)
    mod.QuantizationParametersAddScale(b, scale)
    mod.QuantizationParametersAddZeroPoint(b, zp)
    if q.axis is not None:
        mod.QuantizationParametersAddQuantizedDimension(b, int(q.axis))
    return mod.QuantizationParametersEnd(b)


def _options(b: Any, tfl: Any, table: str, values: dict[str, Any]) -> int:
    mod = getattr(tfl, table)
    getattr(mod, f"{table}Start")(b)
    for key, value in values.items():
        getattr(mod, f"{table}Add{key}")(b, value)
    return getattr(mod, f"{table}End")(b)


def serialize(model: TFLModel) -> bytes:
    """The model as a TFLite flatbuffer (schema version 3, file identifier ``TFL3``)."""
    tfl = _schema()
    b = _flatbuffers().Builder(1024)
    ops_enum = tfl.BuiltinOperator.BuiltinOperator
    opt_enum = tfl.BuiltinOptions.BuiltinOptions

    # operator codes, in first-use order
    codes: list[str] = []
    for op in model.ops:
        if op.opcode not in codes:
            codes.append(op.opcode)
    code_offsets = []
    for name in codes:
        value = getattr(ops_enum, name)
        m = tfl.OperatorCode
        m.OperatorCodeStart(b)
        m.OperatorCodeAddDeprecatedBuiltinCode(b, min(value, 127))
        m.OperatorCodeAddBuiltinCode(b, value)
        m.OperatorCodeAddVersion(b, 1)
        code_offsets.append(m.OperatorCodeEnd(b))

    # buffers: 0 is the empty sentinel; each constant tensor gets its own
    buffer_of: dict[int, int] = {}
    buffer_offsets = []
    tfl.Buffer.BufferStart(b)
    buffer_offsets.append(tfl.Buffer.BufferEnd(b))
    for t in model.tensors:
        if t.data is None:
            continue
        data = _bytes(b, t.data.tobytes())
        tfl.Buffer.BufferStart(b)
        tfl.Buffer.BufferAddData(b, data)
        buffer_of[t.index] = len(buffer_offsets)
        buffer_offsets.append(tfl.Buffer.BufferEnd(b))

    metadata_buffers = []
    for data_bytes in model.metadata.values():
        data = _bytes(b, data_bytes)
        tfl.Buffer.BufferStart(b)
        tfl.Buffer.BufferAddData(b, data)
        metadata_buffers.append(len(buffer_offsets))
        buffer_offsets.append(tfl.Buffer.BufferEnd(b))

    tensor_offsets = []
    for t in model.tensors:
        name = b.CreateString(t.name)
        shape = _vector(b, tfl.Tensor, "Tensor", "Shape", list(t.shape), "Int32")
        quant = _quantization(b, tfl, t.quant) if t.quant is not None else None
        m = tfl.Tensor
        m.TensorStart(b)
        m.TensorAddShape(b, shape)
        m.TensorAddType(b, getattr(tfl.TensorType.TensorType, t.dtype))
        m.TensorAddBuffer(b, buffer_of.get(t.index, 0))
        m.TensorAddName(b, name)
        if quant is not None:
            m.TensorAddQuantization(b, quant)
        tensor_offsets.append(m.TensorEnd(b))

    op_offsets = []
    for op in model.ops:
        inputs = _vector(b, tfl.Operator, "Operator", "Inputs", op.inputs, "Int32")
        outputs = _vector(b, tfl.Operator, "Operator", "Outputs", op.outputs, "Int32")
        opts = _options(b, tfl, op.options[0], op.options[1]) if op.options else None
        m = tfl.Operator
        m.OperatorStart(b)
        m.OperatorAddOpcodeIndex(b, codes.index(op.opcode))
        m.OperatorAddInputs(b, inputs)
        m.OperatorAddOutputs(b, outputs)
        if op.options is not None:
            m.OperatorAddBuiltinOptionsType(b, getattr(opt_enum, op.options[0]))
            m.OperatorAddBuiltinOptions(b, opts)
        op_offsets.append(m.OperatorEnd(b))

    def offsets_vector(mod: Any, table: str, fld: str, offs: list[int]) -> int:
        getattr(mod, f"{table}Start{fld}Vector")(b, len(offs))
        for o in reversed(offs):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()

    sg = tfl.SubGraph
    tensors_vec = offsets_vector(sg, "SubGraph", "Tensors", tensor_offsets)
    ops_vec = offsets_vector(sg, "SubGraph", "Operators", op_offsets)
    in_vec = _vector(b, sg, "SubGraph", "Inputs", model.inputs, "Int32")
    out_vec = _vector(b, sg, "SubGraph", "Outputs", model.outputs, "Int32")
    sg_name = b.CreateString("main")
    sg.SubGraphStart(b)
    sg.SubGraphAddTensors(b, tensors_vec)
    sg.SubGraphAddInputs(b, in_vec)
    sg.SubGraphAddOutputs(b, out_vec)
    sg.SubGraphAddOperators(b, ops_vec)
    sg.SubGraphAddName(b, sg_name)
    subgraph = sg.SubGraphEnd(b)

    md = tfl.Model
    codes_vec = offsets_vector(md, "Model", "OperatorCodes", code_offsets)
    subgraphs_vec = offsets_vector(md, "Model", "Subgraphs", [subgraph])
    buffers_vec = offsets_vector(md, "Model", "Buffers", buffer_offsets)
    desc = b.CreateString(model.description)
    meta_offsets = []
    for key, buf in zip(model.metadata, metadata_buffers, strict=True):
        key_off = b.CreateString(key)
        tfl.Metadata.MetadataStart(b)
        tfl.Metadata.MetadataAddName(b, key_off)
        tfl.Metadata.MetadataAddBuffer(b, buf)
        meta_offsets.append(tfl.Metadata.MetadataEnd(b))
    meta_vec = offsets_vector(md, "Model", "Metadata", meta_offsets) if meta_offsets else None
    md.ModelStart(b)
    md.ModelAddVersion(b, _SCHEMA_VERSION)
    md.ModelAddOperatorCodes(b, codes_vec)
    md.ModelAddSubgraphs(b, subgraphs_vec)
    md.ModelAddDescription(b, desc)
    md.ModelAddBuffers(b, buffers_vec)
    if meta_vec is not None:
        md.ModelAddMetadata(b, meta_vec)
    b.Finish(md.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())

