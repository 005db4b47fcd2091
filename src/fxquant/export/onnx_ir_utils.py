"""Small helpers over ``onnx_ir`` for the export post-passes: unique names, initializers, nodes.

Nothing here knows about quantization; :mod:`fxquant.export.onnx_quantizers` and
:mod:`fxquant.export.onnx_passes` build on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

__all__ = ["Names", "GraphEdit", "to_numpy", "producer_op", "consumers", "attr", "is_constant"]


def to_numpy(value: Any, dtype: Any = None) -> np.ndarray:
    """A C-contiguous numpy array of a tensor / array / number (bfloat16 as float32)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        value = value.numpy()
    arr = np.asarray(value)
    if dtype is not None:
        arr = arr.astype(dtype)
    return np.array(arr, order="C", copy=None)  # keeps 0-d (ascontiguousarray makes 1-d)


class Names:
    """Every value name of a graph, so new ones are unique and contract names can be claimed."""

    def __init__(self, graph: ir.Graph) -> None:
        self.used: set[str] = set()
        for v in graph.inputs:
            self.used.add(v.name or "")
        self.used.update(graph.initializers)
        for node in graph.all_nodes():
            self.used.update(o.name or "" for o in node.outputs)
        self._counters: dict[str, int] = {}

    def fresh(self, base: str) -> str:
        """``base`` itself when free, else ``base_<k>``; reserved on return."""
        name = base
        while name in self.used:
            k = self._counters.get(base, 0) + 1
            self._counters[base] = k
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def rename(self, value: ir.Value, name: str) -> str:
        """Give ``value`` exactly ``name`` when free (else a fresh variant); returns its name."""
        if value.name == name:
            return name
        new = self.fresh(name)
        self.used.discard(value.name or "")
        value.name = new
        return new


class GraphEdit:
    """Nodes and initializers added to one graph under unique names."""

    def __init__(self, graph: ir.Graph, names: Names | None = None) -> None:
        self.graph = graph
        self.names = names or Names(graph)

    def init(self, base: str, value: Any, dtype: ir.DataType | None = None,
             exact: bool = False) -> ir.Value:
        """A new initializer named ``base`` (or a fresh variant unless ``exact``)."""
        name = base if exact and base not in self.names.used else self.names.fresh(base)
        self.names.used.add(name)
        arr = to_numpy(value)
        if dtype is not None:
            arr = arr.astype(dtype.numpy())
        tensor = ir.tensor(arr, dtype=dtype, name=name)
        v = ir.Value(name=name, shape=ir.Shape(arr.shape), type=ir.TensorType(tensor.dtype),
                     const_value=tensor)
        self.graph.register_initializer(v)
        return v

    def node(self, op_type: str, inputs: Sequence[ir.Value | None], outputs: Sequence[str],
             *, before: ir.Node, attrs: dict[str, Any] | None = None, domain: str = "",
             like: ir.Value | None = None) -> list[ir.Value]:
        """Insert ``op_type(inputs)`` before ``before``; output names are claimed fresh.

        ``like``: copy its type and shape to the (first) output.
        """
        attributes = [_attr(k, v) for k, v in (attrs or {}).items() if v is not None]
        n = ir.Node(domain, op_type, list(inputs), attributes, num_outputs=len(outputs))
        for out, base in zip(n.outputs, outputs, strict=True):
            out.name = self.names.fresh(base)
        if like is not None:
            n.outputs[0].type = like.type
            n.outputs[0].shape = like.shape
        self.graph.insert_before(before, n)
        return list(n.outputs)


def _attr(name: str, value: Any) -> ir.Attr:
    if isinstance(value, bool):
        return ir.AttrInt64(name, int(value))
    if isinstance(value, (int, np.integer)):
        return ir.AttrInt64(name, int(value))
    if isinstance(value, float):
        return ir.AttrFloat32(name, value)
    if isinstance(value, str):
        return ir.AttrString(name, value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in value):
        return ir.AttrInt64s(name, [int(v) for v in value])
    raise TypeError(f"attribute {name}: unsupported value {value!r}")


def attr(node: ir.Node, name: str, default: Any = None) -> Any:
    """An attribute's Python value (``default`` when absent)."""
    a = node.attributes.get(name)
    return default if a is None else a.value


def producer_op(value: ir.Value | None) -> str | None:
    """Op type of the node producing ``value`` (None for inputs / initializers)."""
    if value is None or value.producer() is None:
        return None
    return value.producer().op_type


def consumers(value: ir.Value) -> list[ir.Node]:
    """Distinct nodes reading ``value``, in graph order of first use."""
    seen: dict[int, ir.Node] = {}
    for use in value.uses():
        seen.setdefault(id(use.node), use.node)
    return list(seen.values())


def is_constant(value: ir.Value | None) -> bool:
    """An initializer (its value is known)."""
    return value is not None and value.const_value is not None and value.producer() is None
