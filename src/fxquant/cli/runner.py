"""Running an ONNX file in ONNX Runtime or OpenVINO (CPU) for ``fxquant run``: a thin adapter
over :mod:`fxquant.runtimes` (which opens the sessions) that adds the command line's view of the
inputs (:class:`InputSpec`) and one-line errors.  OpenVINO runs with
``INFERENCE_PRECISION_HINT=f32`` (its CPU default is bf16).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends import Runtime
from ..errors import ConfigError, DataError, bounded, bounded_list
from ..runtimes import open_session as open_runtime_session
from .common import one_line
from .rawdata import InputSpec

__all__ = ["RUNTIMES", "Session", "open_session"]

RUNTIMES = tuple(r.value for r in Runtime)


@dataclass
class Session:
    """An opened model: its inputs (:class:`InputSpec`, shape ``None`` when not fixed), output
    names, and :meth:`run`."""

    path: str
    runtime: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    _session: Any

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None
            ) -> dict[str, np.ndarray]:
        """Run one call; returns ``{output name: array}`` for ``outputs`` (default: all)."""
        names = tuple(outputs) if outputs is not None else self.outputs
        try:
            result = self._session.run(feeds)
            return {n: result[n] for n in names}
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


def open_session(path: str, runtime: str = "onnxruntime", threads: int | None = None) -> Session:
    """Open ``path`` (an ONNX file) in ``runtime``; a file that is not a valid model is a
    :class:`ConfigError` naming it."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime must be one of {bounded_list(RUNTIMES)}, got {runtime!r}")
    if not os.path.isfile(path):
        raise ConfigError(f"no such model file {bounded(path)!r}")
    threads = threads or min(4, os.cpu_count() or 1)
    try:
        session = open_runtime_session(runtime, path, threads=threads)
        inputs = []
        for name, dims, dtype in session.input_types():
            if dtype is None:
                raise ConfigError(f"input {bounded(name)!r} of {bounded(path)!r} has a type "
                                  "that raw float32 files cannot feed")
            inputs.append(_spec(name, dims, dtype))
        return Session(path, runtime, tuple(inputs), tuple(session.output_names), session)
    except (ConfigError, ImportError):
        raise
    except Exception as exc:
        raise ConfigError(
            f"{runtime} cannot load {bounded(path)!r} ({type(exc).__name__}: "
            f"{bounded(one_line(str(exc)), 200)}); give an ONNX model file"
        ) from None
