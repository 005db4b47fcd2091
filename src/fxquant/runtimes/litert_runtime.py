"""LiteRT (TFLite) as a :class:`~fxquant.runtimes.base.Session`: files written by
:func:`fxquant.export_tflite`, fed and read in torch's layout.

The file's ``fxquant`` metadata gives each input's and output's layout (4-D tensors are NHWC in
the file): feeds are permuted on the way in, outputs on the way out; float feeds of an integer
input are quantized on its grid and integer outputs dequantized.  :meth:`LiteRTSession.tensors`
reads every tensor of the last run with its quantization (the interpreter's
``get_tensor_details()``: the ground truth of what LiteRT computed); extra outputs are
intermediate tensors by name, read the same way.

Kernels (``kernels=``): ``"xnnpack"`` (default: LiteRT's default CPU path, the XNNPACK
delegate, what a deployment runs), ``"builtin"`` (LiteRT's own integer kernels; every
intermediate tensor readable) or ``"reference"`` (the reference kernels).  A delegate's
intermediate tensors are not readable: a session with extra outputs runs the builtin kernels.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version as _dist_version
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError, require
from .base import ExecutedOps, Runtime, Session

__all__ = ["LiteRTSession", "LiteRTTensor", "KERNELS", "tflite_op_counts", "read_metadata",
           "read_ops"]

KERNELS = ("xnnpack", "builtin", "reference")

_MOVES = frozenset({"QUANTIZE", "DEQUANTIZE", "RESHAPE", "TRANSPOSE", "STRIDED_SLICE", "SLICE",
                    "PAD", "PADV2", "CONCATENATION", "MAX_POOL_2D", "SQUEEZE", "EXPAND_DIMS",
                    "RESIZE_NEAREST_NEIGHBOR", "GATHER"})


def _litert() -> Any:
    return require("ai_edge_litert.interpreter", "tflite", "running TFLite files in LiteRT")


def _schema(table: str) -> Any:
    """The ``tflite`` schema package's module for ``table`` (its reader classes)."""
    require("tflite", "tflite", "reading TFLite flatbuffers")
    return importlib.import_module(f"tflite.{table}")


def read_metadata(data: bytes, key: str) -> bytes | None:
    """The bytes of metadata entry ``key`` of a TFLite flatbuffer (``None`` if absent)."""
    model = _schema("Model").Model.GetRootAsModel(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() is not None and entry.Name().decode() == key:
            buf = model.Buffers(entry.Buffer())
            return bytes(buf.DataAsNumpy().tobytes()) if buf.DataLength() else b""
    return None


def read_ops(data: bytes) -> list[tuple[str, str]]:
    """``(builtin operator name, type of its first output)`` for every operator of subgraph 0."""
    model = _schema("Model").Model.GetRootAsModel(data, 0)
    ops_enum = _schema("BuiltinOperator").BuiltinOperator
    types_enum = _schema("TensorType").TensorType
    names = {v: k for k, v in vars(ops_enum).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(types_enum).items() if not k.startswith("_")}
    sg = model.Subgraphs(0)
    out = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        value = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        first = sg.Tensors(op.Outputs(0)) if op.OutputsLength() else None
        out.append((names.get(value, str(value)),
                    types.get(first.Type(), "?") if first is not None else "?"))
    return out


def tflite_op_counts(data: bytes) -> tuple[dict[str, int], dict[str, int]]:
    """``(integer ops, float ops)`` of a TFLite flatbuffer: operator name -> count, by the type
    of each operator's first output (QUANTIZE / DEQUANTIZE and data movement not counted)."""
    ints: dict[str, int] = {}
    floats: dict[str, int] = {}
    for name, out_type in read_ops(data):
        if name in _MOVES:
            continue
        bucket = floats if out_type == "FLOAT32" else ints
        bucket[name] = bucket.get(name, 0) + 1
    return dict(sorted(ints.items())), dict(sorted(floats.items()))


@dataclass(frozen=True)
class LiteRTTensor:
    """One tensor of a LiteRT run: raw values (TFLite layout) and quantization."""

    name: str
    value: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int

    @property
    def quantized(self) -> bool:
        return self.scale.size > 0 and self.value.dtype.kind in "iu"


class LiteRTSession(Session):
    """A TFLite file (or its bytes) in the LiteRT interpreter.

    Args (besides :class:`Session`'s ``threads`` / ``extra_outputs``):
        kernels: ``"xnnpack"``, ``"builtin"`` or ``"reference"`` (module docstring).
        preserve_all_tensors: keep every intermediate tensor readable (:meth:`tensors`).
    """

    runtime = Runtime.LITERT

    def __init__(self, model_path: str | os.PathLike[str] | bytes, *, kernels: str = "xnnpack",
                 preserve_all_tensors: bool = False, **kwargs: Any) -> None:
        if kernels not in KERNELS:
            raise ConfigError(f"LiteRTSession: kernels must be one of {KERNELS}, got {kernels!r}")
        data = model_path if isinstance(model_path, bytes) else None
        super().__init__("<bytes>" if data is not None else model_path, **kwargs)
        if data is None:
            with open(self.model_path, "rb") as f:
                data = f.read()
        self.data = data
        if self.extra_outputs:  # a delegate's inner tensors are not readable
            kernels, preserve_all_tensors = "builtin", True
        mod = _litert()
        resolver = {
            "builtin": mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            "xnnpack": mod.OpResolverType.AUTO,
            "reference": mod.OpResolverType.BUILTIN_REF,
        }[kernels]
        self.kernels = kernels
        self.interpreter = mod.Interpreter(
            model_content=data, num_threads=self.threads, experimental_op_resolver_type=resolver,
            experimental_preserve_all_tensors=preserve_all_tensors,
        )
        self.interpreter.allocate_tensors()
        meta = read_metadata(data, "fxquant")
        self.meta: dict[str, Any] = json.loads(meta) if meta else {}
        self.input_details = self.interpreter.get_input_details()
        self.output_details = self.interpreter.get_output_details()

    @staticmethod
    def version() -> str:
        return f"ai-edge-litert {_dist_version('ai-edge-litert')}"

    def _entries(self, kind: str) -> list[dict[str, Any]]:
        return list(self.meta.get(kind, []))

    @property
    def input_names(self) -> list[str]:
        entries = self._entries("inputs")
        return [entries[i]["name"] if i < len(entries) else d["name"]
                for i, d in enumerate(self.input_details)]

    @property
    def output_names(self) -> list[str]:
        entries = self._entries("outputs")
        return [entries[i]["name"] if i < len(entries) else d["name"]
                for i, d in enumerate(self.output_details)] + self.extra_outputs

    def _perm(self, kind: str, i: int, rank: int) -> tuple[int, ...]:
        entries = self._entries(kind)
        if i < len(entries) and len(entries[i]["perm"]) == rank:
            return tuple(entries[i]["perm"])
        return tuple(range(rank))

    def input_types(self) -> list[tuple[str, list[int | None] | None, np.dtype | None]]:
        out = []
        for i, (name, d) in enumerate(zip(self.input_names, self.input_details, strict=True)):
            perm = self._perm("inputs", i, len(d["shape"]))
            dims = [0] * len(perm)
            for j, p in enumerate(perm):
                dims[p] = int(d["shape"][j])
            out.append((name, list(dims), np.dtype(d["dtype"])))
        return out

    def _accepts(self, given: np.dtype, expected: np.dtype) -> bool:
        # float feeds of an integer (quantized) input are quantized on its grid by feed()
        return given == expected or (given.kind == "f" and expected.kind in "iu")

    def feed(self, feeds: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> None:
        """Set the inputs (torch layout) without running."""
        if isinstance(feeds, Mapping):
            feeds = [feeds[n] for n in self.input_names]
        if len(feeds) != len(self.input_details):
            raise DataError(f"the TFLite model takes {len(self.input_details)} input(s), got "
                            f"{len(feeds)}")
        for i, x in enumerate(feeds):
            x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
            d = self.input_details[i]
            arr = np.ascontiguousarray(np.transpose(x, self._perm("inputs", i, x.ndim)))
            if tuple(d["shape"]) != arr.shape:
                self.interpreter.resize_tensor_input(d["index"], list(arr.shape))
                self.interpreter.allocate_tensors()
                self.input_details = self.interpreter.get_input_details()
                self.output_details = self.interpreter.get_output_details()
                d = self.input_details[i]
            dtype = np.dtype(d["dtype"])
            if dtype.kind in "iu" and arr.dtype.kind == "f":
                scale, zp = d["quantization"]
                info = np.iinfo(dtype)
                arr = np.clip(np.rint(arr.astype(np.float64) / scale) + zp, info.min, info.max)
            self.interpreter.set_tensor(d["index"], arr.astype(dtype))

    def run(self, feeds: Sequence[np.ndarray] | Mapping[str, np.ndarray], *,
            raw: bool = False) -> dict[str, np.ndarray]:
        """Run once; outputs (and extra outputs) by name, in torch's layout (``raw``: integer
        codes, not dequantized)."""
        self.feed(feeds)
        self.interpreter.invoke()
        names = self.output_names
        out: dict[str, np.ndarray] = {}
        for i, d in enumerate(self.output_details):
            arr = np.array(self.interpreter.get_tensor(d["index"]))
            arr = np.transpose(arr, np.argsort(self._perm("outputs", i, arr.ndim)))
            if not raw and np.dtype(d["dtype"]).kind in "iu" and d["quantization"][0] != 0:
                scale, zp = d["quantization"]
                arr = ((arr.astype(np.float64) - zp) * scale).astype(np.float32)
            out[names[i]] = np.ascontiguousarray(arr)
        if self.extra_outputs:
            values = self.tensors()
            perms = {e["tensor"]: e["perm"] for e in self.meta.get("tensors", [])}
            for name in self.extra_outputs:
                t = values.get(name)
                if t is None:
                    continue
                arr = t.value.astype(np.float64)
                if t.quantized and not raw:
                    arr = (arr - float(t.zero_point[0])) * float(t.scale[0])
                perm = perms.get(name)
                if perm is not None and len(perm) == arr.ndim:
                    arr = np.transpose(arr, np.argsort(perm))
                out[name] = arr
        return out

    def run_tensors(self, *feeds: Any) -> list[Any]:
        """Run on torch tensors (positional inputs, torch layout); the model outputs as torch
        tensors (dequantized)."""
        res = self.run(list(feeds))
        return [torch.from_numpy(np.array(res[n])) for n in self.output_names[
            : len(self.output_details)]]

    def tensors(self) -> dict[str, LiteRTTensor]:
        """Every readable tensor after :meth:`run` (in TFLite's layout), by name."""
        out: dict[str, LiteRTTensor] = {}
        for d in self.interpreter.get_tensor_details():
            try:
                value = np.array(self.interpreter.get_tensor(d["index"]))
            except ValueError:
                continue
            q = d.get("quantization_parameters", {})
            out[d["name"]] = LiteRTTensor(
                d["name"], value, np.asarray(q.get("scales", [])),
                np.asarray(q.get("zero_points", [])), int(q.get("quantized_dimension", 0)),
            )
        return out

    def executed_ops(self) -> ExecutedOps:
        ints, floats = tflite_op_counts(self.data)
        return ExecutedOps(ints, floats)

    def close(self) -> None:
        self.interpreter = None
        super().close()

