"""Running exported models in real runtimes: one :class:`Session` per runtime, shared by
:func:`fxquant.verify`, :func:`fxquant.compare` and the benchmarks.

Each runtime is one module with a :class:`Session` subclass, listed in :data:`SESSIONS`; adding a
runtime means adding such a module and one entry (and a :class:`Runtime` member).  Sessions open
an ONNX file with the runtime's threads, optionally return intermediate tensors as extra
outputs, run positional feeds, and say what ran (:class:`ExecutedOps`: node / layer types in
integer and in float arithmetic).  Differences from the simulation are counted in quantization
steps by :func:`tensor_diff` / :class:`StepCounter`.  Importing this package imports no runtime.

>>> Runtime.parse("onnxruntime") is Runtime.ONNXRUNTIME
True
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import require
from .base import MOVEMENT_OPS, QDQ_OPS, ExecutedOps, Runtime, Session
from .diff import FLOAT_RTOL, HIST_CLIP, StepCounter, TensorDiff, step_counts, tensor_diff
from .litert_runtime import LiteRTSession
from .onnx_runtime import OrtSession
from .openvino_runtime import OpenVinoSession

__all__ = [
    "Runtime",
    "Session",
    "ExecutedOps",
    "SESSIONS",
    "open_session",
    "require_runtime",
    "runtime_version",
    "TensorDiff",
    "StepCounter",
    "tensor_diff",
    "step_counts",
    "HIST_CLIP",
    "FLOAT_RTOL",
    "QDQ_OPS",
    "MOVEMENT_OPS",
    "OrtSession",
    "OpenVinoSession",
    "LiteRTSession",
]

SESSIONS: dict[Runtime, type[Session]] = {
    Runtime.ONNXRUNTIME: OrtSession,
    Runtime.OPENVINO: OpenVinoSession,
    Runtime.LITERT: LiteRTSession,
}
"""Runtime -> its :class:`Session` class."""


_PACKAGES: dict[Runtime, tuple[tuple[str, str], ...]] = {
    Runtime.ONNXRUNTIME: (("onnx", "onnx"), ("onnxruntime", "onnx")),
    Runtime.OPENVINO: (("onnx", "onnx"), ("openvino", "openvino")),
    Runtime.LITERT: (("ai_edge_litert", "tflite"), ("tflite", "tflite")),
}
"""Runtime -> the optional packages (module, fxquant extra) a session of it imports."""


def require_runtime(runtime: Runtime | str, purpose: str) -> Runtime:
    """``runtime`` as a :class:`Runtime` after checking that its packages import; call it up
    front, before any work (:class:`~fxquant.MissingDependencyError` names the extra)."""
    rt = Runtime.parse(runtime, "runtime")
    for module, extra in _PACKAGES[rt]:
        require(module, extra, purpose)
    return rt


def open_session(
    runtime: Runtime | str, model_path: str | os.PathLike[str], **options: Any
) -> Session:
    """Open ``model_path`` in ``runtime`` (a :class:`Runtime` or its name); ``options`` are
    :class:`Session`'s (``threads``, ``extra_outputs``, ``integer_kernels``)."""
    return SESSIONS[Runtime.parse(runtime, "runtime")](model_path, **options)


def runtime_version(runtime: Runtime | str) -> str:
    """``"<runtime> <version>"`` of the installed runtime, e.g. ``"onnxruntime 1.32.0"``."""
    return SESSIONS[Runtime.parse(runtime, "runtime")].version()
