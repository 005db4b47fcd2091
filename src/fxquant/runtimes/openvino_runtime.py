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

from ..errors import require
from . import onnx_model
from .base import MOVEMENT_OPS, ExecutedOps, Runtime, Session

__all__ = ["OpenVinoSession"]

_QUANT_LAYERS = frozenset({"FakeQuantize"})
_INTEGER_PRECISIONS = ("i8", "u8", "i4", "u4", "i16", "u16")


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
