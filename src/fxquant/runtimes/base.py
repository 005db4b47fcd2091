"""What every runtime offers: a :class:`Session` that runs an exported model and says which of
its ops ran in integer arithmetic.

A runtime is one small module with one :class:`Session` subclass (``onnx_runtime``,
``openvino_runtime``); :data:`fxquant.runtimes.SESSIONS` lists them by :class:`Runtime`.
The runtime's own package is imported when a session opens, never at import time.
"""

from __future__ import annotations

import abc
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..backends import Runtime
from ..errors import DataError, bounded, bounded_list
from ..modelio import ModelInputs

__all__ = ["Runtime", "ExecutedOps", "Session", "QDQ_OPS", "MOVEMENT_OPS"]

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
"""Quantize / dequantize nodes: neither integer compute nor float compute."""
MOVEMENT_OPS = frozenset({
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Slice",
    "Split", "Concat", "Gather", "Constant", "Cast", "Expand", "Tile", "MaxPool",
    "GlobalMaxPool", "ReorderInput", "ReorderOutput", "DepthToSpace", "SpaceToDepth", "Resize",
    "Parameter", "Result", "Const", "Input", "Output", "Reorder", "Convert", "StridedSlice",
    "Concatenation", "ShapeOf", "Broadcast",
})
"""Node / layer types that only move data (not counted as float compute)."""


@dataclass(frozen=True)
class ExecutedOps:
    """What the runtime actually ran (after its own graph optimizations).

    Attributes:
        integer: op / layer type -> count of those running in integer arithmetic.
        floating: compute op / layer types still running in float (Q/DQ and pure data
            movement are not counted).
        fused: quantized tensor name -> the integer kernel that computes it (ONNX Runtime's
            fused QDQ patterns; empty for runtimes that do not say).
    """

    integer: dict[str, int] = field(default_factory=dict)
    floating: dict[str, int] = field(default_factory=dict)
    fused: dict[str, str] = field(default_factory=dict)


class Session(abc.ABC):
    """An exported model loaded in one runtime.

    Args:
        model_path: the ONNX file.
        threads: the runtime's compute threads (default ``torch.get_num_threads()``).
        extra_outputs: intermediate tensors to return too (a copy of the model lists them as
            graph outputs; that can keep the runtime from fusing the ops around them).
        integer_kernels: ``False`` asks the runtime to run every op between DequantizeLinear
            and QuantizeLinear in float (the graph's reference semantics), where it can.
    """

    runtime: ClassVar[Runtime]

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        extra_outputs: Sequence[str] = (),
        integer_kernels: bool = True,
    ) -> None:
        self.model_path = os.fspath(model_path)
        self.threads = int(threads or torch.get_num_threads())
        self.extra_outputs = list(extra_outputs)
        self.integer_kernels = bool(integer_kernels)
        self._tmp = tempfile.TemporaryDirectory(prefix=f"fxquant_{self.runtime.value}_")

    @property
    def workdir(self) -> str:
        """A private temporary folder, removed by :meth:`close`."""
        return self._tmp.name

    @staticmethod
    @abc.abstractmethod
    def version() -> str:
        """``"<runtime> <version>"`` of the installed runtime."""

    @property
    @abc.abstractmethod
    def input_names(self) -> list[str]:
        """The model's inputs, in positional order."""

    @property
    @abc.abstractmethod
    def output_names(self) -> list[str]:
        """The model's graph outputs, then :attr:`extra_outputs`."""

    @abc.abstractmethod
    def input_types(self) -> list[tuple[str, list[int | None] | None, np.dtype | None]]:
        """Each input's ``(name, dims, dtype)``: ``dims`` with ``None`` for a symbolic
        dimension (``None`` for an unknown rank); ``dtype`` ``None`` when numpy has none."""

    @abc.abstractmethod
    def run(self, feeds: Sequence[np.ndarray] | Mapping[str, np.ndarray]
            ) -> dict[str, np.ndarray]:
        """Run on ``feeds`` (positional, or by input name); every output of
        :attr:`output_names` by name."""

    @abc.abstractmethod
    def executed_ops(self) -> ExecutedOps:
        """Which ops the runtime ran, and in which arithmetic."""

    def close(self) -> None:
        """Release the runtime's objects and the temporary folder."""
        self._tmp.cleanup()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def feeds(self, inputs: ModelInputs) -> list[np.ndarray]:
        """The runtime's feeds for one model call: positional tensors in order, then the
        model's remaining inputs by name from the keyword inputs."""
        tensors = [a for a in inputs.args if isinstance(a, torch.Tensor)]
        for name in self.input_names[len(tensors):]:
            value = inputs.kwargs.get(name)
            if not isinstance(value, torch.Tensor):
                raise DataError(
                    f"the exported model takes input {name!r}, which the batch does not give "
                    f"(keyword inputs: {bounded_list(inputs.kwargs)})"
                )
            tensors.append(value)
        arrays = [t.detach().cpu().numpy() for t in tensors]
        self._check_feeds(arrays)
        return arrays

    def _accepts(self, given: np.dtype, expected: np.dtype) -> bool:
        """Whether a feed of dtype ``given`` may be passed for an input of dtype ``expected``
        (the same dtype; a runtime that quantizes float feeds itself also takes float)."""
        return given == expected

    def _check_feeds(self, arrays: list[np.ndarray]) -> None:
        """Each array fits its input's rank, fixed dimensions and dtype (:class:`DataError`
        naming the input otherwise, before the runtime sees it)."""
        types = self.input_types()
        if len(arrays) != len(types):
            raise DataError(
                f"the exported model {bounded(os.path.basename(self.model_path))!r} takes "
                f"{len(types)} input(s) ({bounded_list(n for n, _, _ in types)}), the batch gives "
                f"{len(arrays)} tensor(s)"
            )
        for arr, (name, dims, dtype) in zip(arrays, types, strict=True):
            shape_ok = dims is None or (len(dims) == arr.ndim and all(
                d is None or d == s for d, s in zip(dims, arr.shape, strict=True)))
            if not shape_ok or (dtype is not None and not self._accepts(arr.dtype, dtype)):
                want = "?" if dims is None else "x".join("N" if d is None else str(d) for d in dims)
                raise DataError(
                    f"input {bounded(name)!r} of the exported model "
                    f"{bounded(os.path.basename(self.model_path))!r} is {want} "
                    f"{dtype if dtype is not None else ''}, the batch gives "
                    f"{'x'.join(map(str, arr.shape)) or 'a scalar'} {arr.dtype}; pass inputs "
                    "like the example inputs the file was exported with"
                )
