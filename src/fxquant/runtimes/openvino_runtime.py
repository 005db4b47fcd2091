"""OpenVINO (CPU plugin, fp32 inference precision) as a :class:`~fxquant.runtimes.base.Session`.

What ran is read from the compiled model's runtime graph: each layer's type and runtime
precision (integer precisions count as integer arithmetic).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, require
from . import onnx_model
from .base import MOVEMENT_OPS, ExecutedOps, Runtime, Session

__all__ = ["OpenVinoSession", "requantized_concat"]

_QUANT_LAYERS = frozenset({"FakeQuantize"})
_INTEGER_PRECISIONS = ("i8", "u8", "i4", "u4", "i16", "u16")
# between a Concat's Q/DQ and the next Q, ops that OpenVINO 2026.4 still crashes on (measured;
# Transpose, Flatten, Unsqueeze, activations and a second reader of the DQ do not crash)
_THROUGH = frozenset({"Identity", "Reshape"})
_THROUGH_WITH_CONSTANT = frozenset({"Add", "Sub", "Mul", "Div"})


def _ov() -> Any:
    return require("openvino", "openvino", "running a model in OpenVINO")


def _rt(info: Any, key: str) -> str:
    """One runtime-info entry of an OpenVINO runtime-model node as a string ("" if absent)."""
    try:
        v = info[key]
    except (KeyError, RuntimeError, IndexError):
        return ""
    try:
        return str(v.astype(str))
    except (RuntimeError, TypeError, AttributeError):
        return str(v)


def requantized_concat(model: Any) -> str | None:
    """The name (or output) of the first Concat of ``model`` (an ``onnx.ModelProto``) whose
    quantized output is quantized again: ``Concat -> Q -> DQ -> [Identity / Reshape / Add, Sub,
    Mul or Div by a constant]* -> Q``, each tensor read once.  OpenVINO 2026.4's CPU plugin
    segfaults in ``compile_model`` on that (``BackendProfile.quantize_concat_inputs``).
    ``None``: no such Concat."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    reads: Counter[str] = Counter(i for n in graph.node for i in set(n.input) if i)
    constants = {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output}

    def single(name: str) -> Any:
        node = producers.get(name)
        return node if node is not None and reads[name] == 1 else None

    for q in graph.node:
        if q.op_type != "QuantizeLinear":
            continue
        node = single(q.input[0])
        while node is not None and (node.op_type in _THROUGH or (
                node.op_type in _THROUGH_WITH_CONSTANT and len(node.input) == 2
                and sum(i in constants for i in node.input) == 1)):
            node = single(next(i for i in node.input if i not in constants))
        if node is None or node.op_type != "DequantizeLinear":
            continue
        q1 = single(node.input[0])
        concat = producers.get(q1.input[0]) if q1 is not None \
            and q1.op_type == "QuantizeLinear" else None
        if concat is not None and concat.op_type == "Concat" and len(concat.input) > 1:
            return concat.name or concat.output[0]
    return None


class OpenVinoSession(Session):
    """A model compiled by OpenVINO for its CPU plugin (see :class:`Session` for the args).

    ``INFERENCE_PRECISION_HINT`` is ``f32`` (the CPU plugin's default is bf16 on CPUs that have
    it).  ``integer_kernels=False`` is not available (OpenVINO has no such switch).
    """

    runtime = Runtime.OPENVINO

    def __init__(self, model_path: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(model_path, **kwargs)
        ov = _ov()
        model = onnx_model.load(self.model_path)
        concat = requantized_concat(model)
        if concat is not None:
            super().close()
            raise ConfigError(
                f"OpenVINO cannot run {self.model_path}: Concat node {concat!r} has a quantized "
                "output that is quantized again (Concat -> QuantizeLinear -> DequantizeLinear -> "
                "... -> QuantizeLinear), which crashes OpenVINO's CPU plugin (the whole process) "
                "in compile_model; export the model prepared with backend='openvino' (it writes "
                "that Q/DQ on the Concat's inputs)")
        self._graph_outputs = onnx_model.graph_output_names(model)
        path = self.model_path
        if self.extra_outputs:
            path = onnx_model.save_with_outputs(
                model, self.extra_outputs, os.path.join(self.workdir, "instrumented.onnx")
            )
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": self.threads}
        self._compiled = core.compile_model(core.read_model(path), "CPU", config)
        self._names = self._output_names()

    def _output_names(self) -> list[str]:
        """The name of each compiled output: the graph outputs by position, the extra outputs
        by the names OpenVINO kept for them."""
        wanted = set(self.extra_outputs)
        names = []
        for i, out in enumerate(self._compiled.outputs):
            have = set(out.get_names())
            if i < len(self._graph_outputs):
                names.append(self._graph_outputs[i])
            else:
                names.append(next(iter(sorted(have & wanted)), next(iter(have), f"output_{i}")))
        return names

    @staticmethod
    def version() -> str:
        return f"openvino {_ov().__version__}"

    @property
    def input_names(self) -> list[str]:
        return [next(iter(i.get_names()), f"input_{k}")
                for k, i in enumerate(self._compiled.inputs)]

    @property
    def output_names(self) -> list[str]:
        return list(self._names)

    def input_types(self) -> list[tuple[str, list[int | None] | None, np.dtype | None]]:
        out = []
        for k, port in enumerate(self._compiled.inputs):
            ps = port.get_partial_shape()
            dims = ([d.get_length() if d.is_static else None for d in ps]
                    if ps.rank.is_static else None)
            try:
                dtype = np.dtype(port.get_element_type().to_dtype())
            except (TypeError, RuntimeError):
                dtype = None
            out.append((self.input_names[k], dims, dtype))
        return out

    def run(self, feeds: Sequence[np.ndarray] | Mapping[str, np.ndarray]
            ) -> dict[str, np.ndarray]:
        req = self._compiled.create_infer_request()
        req.infer(dict(feeds) if isinstance(feeds, Mapping) else dict(enumerate(feeds)))
        return {name: req.get_output_tensor(i).data.copy() for i, name in enumerate(self._names)}

    def executed_ops(self) -> ExecutedOps:
        integer: Counter[str] = Counter()
        floating: Counter[str] = Counter()
        for op in self._compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            layer = _rt(info, "layerType") or op.get_type_name()
            prec = _rt(info, "runtimePrecision").lower()
            if layer in MOVEMENT_OPS or layer in _QUANT_LAYERS:
                continue
            if any(prec.startswith(p) for p in _INTEGER_PRECISIONS):
                integer[layer] += 1
            else:
                floating[layer] += 1
        return ExecutedOps(dict(sorted(integer.items())), dict(sorted(floating.items())))

    def close(self) -> None:
        self._compiled = None
        super().close()
