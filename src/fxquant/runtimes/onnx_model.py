"""Reading ONNX files for the runtimes (``onnx`` is an optional dependency, loaded here)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..errors import require

__all__ = ["load", "with_outputs", "save_with_outputs", "graph_output_names", "tensor_names"]


def _onnx(purpose: str) -> Any:
    return require("onnx", "onnx", purpose)


def load(path: str | os.PathLike[str], purpose: str = "running an exported model") -> Any:
    """The ``onnx.ModelProto`` at ``path``."""
    return _onnx(purpose).load(os.fspath(path))


def with_outputs(model: Any, names: Sequence[str]) -> Any:
    """A copy of ``model`` that also returns the tensors ``names`` as graph outputs."""
    onnx = _onnx("reading intermediate tensors")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(
                onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
            )
    return m


def save_with_outputs(model: Any, names: Sequence[str], path: str) -> str:
    """Write :func:`with_outputs` of ``model`` to ``path``; returns ``path``."""
    _onnx("reading intermediate tensors").save(with_outputs(model, names), path)
    return path


def graph_output_names(model: Any) -> list[str]:
    """The graph outputs of ``model``, in order."""
    return [o.name for o in model.graph.output]


def tensor_names(model: Any) -> set[str]:
    """Every tensor a node of ``model`` produces."""
    return {o for n in model.graph.node for o in n.output}
