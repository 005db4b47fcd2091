"""Running an ONNX file in ONNX Runtime or OpenVINO (CPU) for ``fxquant run``.

The one place the command line opens runtime sessions: when ``fxquant.runtimes`` lands, this
module becomes a thin adapter over it.  OpenVINO runs with ``INFERENCE_PRECISION_HINT=f32``
(its CPU default is bf16).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, bounded, bounded_list, require
from .common import one_line
from .rawdata import InputSpec

__all__ = ["RUNTIMES", "Session", "open_session"]

RUNTIMES = ("onnxruntime", "openvino")

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


@dataclass
class Session:
    """An opened model: its inputs (:class:`InputSpec`, shape ``None`` when not fixed), output
    names, and :meth:`run`."""

    path: str
    runtime: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    _run: Any

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None
            ) -> dict[str, np.ndarray]:
        """Run one call; returns ``{output name: array}`` for ``outputs`` (default: all)."""
        names = tuple(outputs) if outputs is not None else self.outputs
        try:
            return dict(zip(names, self._run(feeds, names), strict=True))
        except Exception as exc:  # the runtime's own message says which node / shape
            shapes = ", ".join(f"{k}: {'x'.join(map(str, v.shape))}" for k, v in feeds.items())
            raise DataError(
                f"{self.runtime} could not run {bounded(self.path)!r} on inputs of shape "
                f"{shapes}: {bounded(one_line(str(exc)), 240)}; check the shapes "
                "(--input-shape) and the raw files"
            ) from None


def _spec(name: str, dims: Sequence[Any] | None, dtype: Any) -> InputSpec:
    """An input of the model: all dimensions fixed -> an exact shape; a symbolic first (batch)
    dimension -> free; any other symbolic dimension (or unknown rank) -> shape unknown."""
    if dims is None:
        return InputSpec(name, None, np.dtype(dtype))
    fixed = [d if isinstance(d, int) and d > 0 else None for d in dims]
    if any(d is None for d in fixed[1:]):
        return InputSpec(name, None, np.dtype(dtype))
    exact = not fixed or fixed[0] is not None
    return InputSpec(name, (fixed[0] or 1, *fixed[1:]), np.dtype(dtype), exact=exact)


def _open_ort(path: str, threads: int) -> Session:
    ort = require("onnxruntime", "onnx", "fxquant run --runtime onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inputs = []
    for i in sess.get_inputs():
        if i.type not in _ORT_TYPES:
            raise ConfigError(f"input {bounded(i.name)!r} of {bounded(path)!r} has type {i.type},"
                              " which raw float32 files cannot feed")
        inputs.append(_spec(i.name, i.shape, _ORT_TYPES[i.type]))
    outputs = tuple(o.name for o in sess.get_outputs())

    def run(feeds: dict[str, np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
        return sess.run(list(names), feeds)

    return Session(path, "onnxruntime", tuple(inputs), outputs, run)


def _open_openvino(path: str, threads: int) -> Session:
    ov = require("openvino", "openvino", "fxquant run --runtime openvino")
    core = ov.Core()
    model = core.read_model(path)
    compiled = core.compile_model(
        model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    )
    inputs = []
    for port in model.inputs:
        ps = port.get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in ps] if ps.rank.is_static else None
        inputs.append(_spec(port.get_any_name(), dims, port.get_element_type().to_dtype()))
    outputs = tuple(o.get_any_name() for o in compiled.outputs)
    index = {n: i for i, n in enumerate(outputs)}
    request = compiled.create_infer_request()

    def run(feeds: dict[str, np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
        request.infer(feeds)
        return [request.get_output_tensor(index[n]).data.copy() for n in names]

    return Session(path, "openvino", tuple(inputs), outputs, run)


def open_session(path: str, runtime: str = "onnxruntime", threads: int | None = None) -> Session:
    """Open ``path`` (an ONNX file) in ``runtime``; a file that is not a valid model is a
    :class:`ConfigError` naming it."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime must be one of {bounded_list(RUNTIMES)}, got {runtime!r}")
    if not os.path.isfile(path):
        raise ConfigError(f"no such model file {bounded(path)!r}")
    threads = threads or min(4, os.cpu_count() or 1)
    try:
        if runtime == "onnxruntime":
            return _open_ort(path, threads)
        return _open_openvino(path, threads)
    except (ConfigError, ImportError):
        raise
    except Exception as exc:
        raise ConfigError(
            f"{runtime} cannot load {bounded(path)!r} ({type(exc).__name__}: "
            f"{bounded(one_line(str(exc)), 200)}); give an ONNX model file"
        ) from None
