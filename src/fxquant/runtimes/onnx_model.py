"""Reading ONNX files for the runtimes (``onnx`` is an optional dependency, loaded here)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .._utils import as_path
from ..errors import ConfigError, FxquantError, bounded, require

__all__ = ["load", "with_outputs", "save_with_outputs", "graph_output_names", "tensor_names",
           "constant_outputs"]


def _onnx(purpose: str) -> Any:
    return require("onnx", "onnx", purpose)


def load(path: str | os.PathLike[str], purpose: str = "running an exported model",
         error: type[FxquantError] = ConfigError) -> Any:
    """The ``onnx.ModelProto`` at ``path``; ``error`` (naming the file and ``purpose``) when it
    cannot be read or is not an ONNX model."""
    onnx = _onnx(purpose)
    path = as_path(path, f"{purpose}: the ONNX path")
    shown = repr(bounded(path, 120))
    try:
        model = onnx.load(os.fspath(path))
    except OSError as err:
        raise error(f"{purpose}: cannot read {shown}: {err.strerror or err}; check the path"
                    ) from None
    except Exception as err:  # protobuf's DecodeError, truncated files ...
        raise error(
            f"{purpose}: cannot load {shown}: it is not an ONNX model ({type(err).__name__}: "
            f"{bounded(err, 100)}); pass the .onnx file fxquant.export_onnx wrote"
        ) from None
    if not model.HasField("graph") or not model.graph.output:
        raise error(f"{purpose}: cannot load {shown}: it is not an ONNX model (it has no graph "
                    "with outputs); pass the .onnx file fxquant.export_onnx wrote")
    return model


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


def constant_outputs(model: Any) -> set[str]:
    """Outputs of the nodes whose every input is an initializer (a ``DequantizeLinear`` of a
    quantized constant: its layout is the file's, e.g. a transpose folded into it)."""
    inits = {t.name for t in model.graph.initializer}
    return {o for n in model.graph.node if n.input and all(i in inits for i in n.input if i)
            for o in n.output}
