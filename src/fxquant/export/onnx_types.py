"""Which ONNX integer type stores a quantized dtype, and from which opset (no onnx import).

QuantizeLinear / DequantizeLinear have int8 / uint8 since opset 10 (per axis since 13) and
int16 / uint16 / int4 / uint4 since opset 21.
"""

from __future__ import annotations

from ..numerics import QDType

__all__ = ["storage_type_name", "opset_for_qdtype", "storage_range"]

# (signed, max bits) -> (ONNX type name, opset that has it in QuantizeLinear)
_Q_TYPES = (
    (True, 4, "INT4", 21),
    (True, 8, "INT8", 13),
    (True, 16, "INT16", 21),
    (False, 4, "UINT4", 21),
    (False, 8, "UINT8", 13),
    (False, 16, "UINT16", 21),
)
_RANGES = {"INT4": (-8, 7), "UINT4": (0, 15), "INT8": (-128, 127), "UINT8": (0, 255),
           "INT16": (-32768, 32767), "UINT16": (0, 65535)}


def storage_type_name(dtype: QDType) -> str | None:
    """The smallest ONNX integer type (``"INT8"`` ...) that holds ``dtype``'s codes."""
    for signed, bits, name, _ in _Q_TYPES:
        if signed == dtype.signed and dtype.bits <= bits:
            return name
    return None


def opset_for_qdtype(dtype: QDType) -> int | None:
    """Lowest opset whose QuantizeLinear / DequantizeLinear support ``dtype`` (None: none)."""
    for signed, bits, _, opset in _Q_TYPES:
        if signed == dtype.signed and dtype.bits <= bits:
            return opset
    return None


def storage_range(name: str) -> tuple[int, int]:
    """The saturation range QuantizeLinear applies for ONNX type ``name``."""
    return _RANGES[name]
