"""ONNX Runtime (CPU execution provider) as a :class:`~fxquant.runtimes.base.Session`.

What ran is read from the optimized graph ORT writes (``optimized_model_filepath``): its node
types, and which quantized tensors ORT computes with a fused integer kernel (QLinearConv,
QGemm ...; see :func:`fused_outputs`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import require
from . import onnx_model
from .base import MOVEMENT_OPS, QDQ_OPS, ExecutedOps, Runtime, Session

__all__ = ["OrtSession", "INTEGER_OPS", "fused_outputs"]

INTEGER_OPS = frozenset({
    "QLinearConv", "NhwcQLinearConv", "QLinearConvTranspose", "QGemm", "QLinearMatMul",
    "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
    "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool",
    "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearConcat", "QLinearWhere",
    "QLinearReduceMean", "QAttention", "QEmbedLayerNormalization", "QOrderedMatMul",
})
"""ORT node types that compute in integer arithmetic."""
_FUSABLE_CLIPS = frozenset({"Relu", "Clip"})
_NUMPY_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def _ort() -> Any:
    return require("onnxruntime", "onnx", "running a model in ONNX Runtime")


class OrtSession(Session):
    """A model in ONNX Runtime's CPU execution provider (see :class:`Session` for the args)."""

    runtime = Runtime.ONNXRUNTIME

    def __init__(self, model_path: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(model_path, **kwargs)
        ort = _ort()
        self._model = onnx_model.load(self.model_path)
        path = self.model_path
        if self.extra_outputs:
            path = onnx_model.save_with_outputs(
                self._model, self.extra_outputs, os.path.join(self.workdir, "instrumented.onnx")
            )
        self._optimized = os.path.join(self.workdir, "optimized.onnx")
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if not self.integer_kernels:
            so.add_session_config_entry("session.disable_quant_qdq", "1")
        so.optimized_model_filepath = self._optimized
        self._sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    @staticmethod
    def version() -> str:
        return f"onnxruntime {_ort().__version__}"

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self._sess.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._sess.get_outputs()]

    def input_types(self) -> list[tuple[str, list[int | None] | None, np.dtype | None]]:
        out = []
        for i in self._sess.get_inputs():
            dims = None if i.shape is None else [d if isinstance(d, int) and d > 0 else None
                                                  for d in i.shape]
            dtype = _NUMPY_TYPES.get(i.type)
            out.append((i.name, dims, None if dtype is None else np.dtype(dtype)))
        return out

    def run(self, feeds: Sequence[np.ndarray] | Mapping[str, np.ndarray]
            ) -> dict[str, np.ndarray]:
        names = self.output_names
        if not isinstance(feeds, Mapping):
            feeds = dict(zip(self.input_names, feeds, strict=True))
        res = self._sess.run(names, dict(feeds))
        return dict(zip(names, res, strict=True))

    def executed_ops(self) -> ExecutedOps:
        optimized = onnx_model.load(self._optimized).graph.node
        counts = Counter(n.op_type for n in optimized)
        integer = {k: v for k, v in counts.items() if k in INTEGER_OPS}
        floating = {k: v for k, v in counts.items()
                    if k not in INTEGER_OPS and k not in QDQ_OPS and k not in MOVEMENT_OPS}
        return ExecutedOps(dict(sorted(integer.items())), dict(sorted(floating.items())),
                           fused_outputs(optimized, self._model))

    def close(self) -> None:
        self._sess = None
        super().close()


def fused_outputs(nodes: Any, original: Any) -> dict[str, str]:
    """Quantized tensor name -> ORT kernel, for the fused integer kernels of an optimized graph.

    A fused kernel's output keeps either the QuantizeLinear's output name (``<tensor>_quantized``)
    or the name of the op node it replaced (``<op>/<OpType>``); from that node the original graph
    leads, through Relu / Clip nodes ORT dropped, to the QuantizeLinear of the tensor.  A kernel
    whose output ORT reshapes (``MatMulAddFusion``: an N-D MatMul + Add of static shape run as a
    2-D Gemm) is named by the Reshape's output.  (Scale
    names cannot be used: ORT merges identical initializers.)
    """
    by_name = {n.name: n for n in original.graph.node}
    consumers: dict[str, list] = {}
    for n in original.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    suffix = "_quantized"
    fused: dict[str, str] = {}
    reshaped = {n.input[0]: n.output[0] for n in nodes
                if n.op_type == "Reshape" and n.input and n.output}
    moved = _moved_outputs(nodes, suffix)
    for n in nodes:
        if n.op_type not in INTEGER_OPS or not n.output:
            continue
        out = moved.get(n.output[0], n.output[0])
        if not out.endswith(suffix) and out not in by_name and out in reshaped:
            out = reshaped[out]  # MatMul + Add fused into a Gemm between two Reshapes
        if n.op_type == "MatMulIntegerToFloat" and not out.endswith(suffix):
            # a Linear's MatMul (float output), or a MatMul of two activations (named by its op)
            fused[out[: -len("_matmul")] if out.endswith("_matmul") else out] = n.op_type
            continue
        if out.endswith(suffix):
            fused[out[: -len(suffix)]] = n.op_type
            continue
        node = by_name.get(out)
        while node is not None and node.output:
            users = consumers.get(node.output[0], [])
            if len(users) != 1:
                break
            node = users[0]
            if node.op_type == "QuantizeLinear":
                if node.output[0].endswith(suffix):
                    fused[node.output[0][: -len(suffix)]] = n.op_type
                break
            if node.op_type not in _FUSABLE_CLIPS:
                break
    return fused


_Q_PROPAGATING = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze"})


def _moved_outputs(nodes: Any, suffix: str) -> dict[str, str]:
    """Kernel output -> the ``<tensor>_quantized`` name it reaches through the reshapes /
    transposes its only consumers are: ORT's QDQ propagation moves a QuantizeLinear backward
    over them, so the kernel computes that quantized tensor (before the moves)."""
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out: dict[str, str] = {}
    for n in nodes:
        if n.op_type not in INTEGER_OPS or not n.output or n.output[0].endswith(suffix):
            continue
        name = n.output[0]
        for _ in range(8):
            users = consumers.get(name, [])
            if len(users) != 1 or users[0].op_type not in _Q_PROPAGATING:
                break
            name = users[0].output[0]
            if name.endswith(suffix):
                out[n.output[0]] = name
                break
    return out
