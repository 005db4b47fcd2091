"""The one module that knows the ``node.meta`` keys fxquant uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import Node

__all__ = [
    "ValueInfo",
    "value_info",
    "set_value_info",
    "op_name",
    "set_op_name",
    "name_override",
    "set_name_override",
    "is_float_tensor",
    "carries_float",
]

_VALUE = "fxquant_value"
_NAME = "fxquant_op_name"
_OVERRIDE = "fxquant_name_override"


@dataclass(frozen=True)
class ValueInfo:
    """What flowed through a node when the example inputs ran."""

    is_tensor: bool
    dtype: torch.dtype | None = None
    shape: tuple[int, ...] | None = None
    finite: bool = True
    holds_float: bool = False  # a float tensor, or a tuple / list / dict holding one

    @property
    def is_float(self) -> bool:
        return self.is_tensor and self.dtype is not None and self.dtype.is_floating_point

    @staticmethod
    def of(value: Any) -> ValueInfo:
        if isinstance(value, torch.Tensor):
            finite = not value.is_floating_point() or bool(torch.isfinite(value).all())
            return ValueInfo(True, value.dtype, tuple(value.shape), finite,
                             value.is_floating_point())
        return ValueInfo(False, holds_float=_holds_float(value))


def _holds_float(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point()
    if isinstance(value, (tuple, list)):
        return any(_holds_float(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_float(v) for v in value.values())
    return False


def value_info(node: Node) -> ValueInfo | None:
    return node.meta.get(_VALUE)


def set_value_info(node: Node, info: ValueInfo) -> None:
    node.meta[_VALUE] = info


def is_float_tensor(node: Any) -> bool:
    """True when ``node`` is a graph node that produced a floating-point tensor."""
    if not isinstance(node, Node):
        return False
    info = value_info(node)
    return info is not None and info.is_float


def carries_float(node: Any) -> bool:
    """True when ``node`` produced a float tensor or a tuple / list / dict holding one (an op
    that computes in float even though its result is not a single tensor, e.g. an LSTM)."""
    if not isinstance(node, Node):
        return False
    info = value_info(node)
    return info is not None and info.holds_float


def op_name(node: Node) -> str | None:
    return node.meta.get(_NAME)


def set_op_name(node: Node, name: str) -> None:
    node.meta[_NAME] = name


def name_override(node: Node) -> str | None:
    return node.meta.get(_OVERRIDE)


def set_name_override(node: Node, name: str) -> None:
    node.meta[_OVERRIDE] = name
