"""Running a TFLite file in the LiteRT interpreter (``ai-edge-litert``), in torch's layout.

:class:`LiteRTSession` feeds torch tensors (NCHW) to a file written by
:func:`fxquant.export_tflite`, using the file's ``fxquant`` metadata for each input's and output's
layout and type: float inputs as they are, integer inputs quantized on the input tensor's grid;
outputs come back in torch's layout (integer outputs dequantized).  ``tensors()`` reads every
intermediate tensor with its quantization (the interpreter's ``get_tensor_details()``: the
ground truth of what LiteRT computes).

Kernels: ``kernels="builtin"`` (default) runs LiteRT's builtin integer kernels, whose arithmetic
is TFLite's reference arithmetic (fixed-point requantization); ``"xnnpack"`` applies the default
XNNPACK delegate (what a deployment on CPU runs; its requantization is float-based);
``"reference"`` the reference kernels.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, require
from ..modelio import ModelInputs, as_inputs, flatten_outputs
from .tflite_writer import read_metadata, read_ops

__all__ = ["LiteRTSession", "LiteRTTensor", "KERNELS", "litert_version", "tflite_op_counts"]

KERNELS = ("builtin", "xnnpack", "reference")


def _litert() -> Any:
    return require("ai_edge_litert.interpreter", "tflite", "running TFLite files in LiteRT")


def litert_version() -> str:
    """The installed ``ai-edge-litert`` version."""
    from importlib.metadata import version

    return version("ai-edge-litert")


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


class LiteRTSession:
    """A TFLite model in the LiteRT interpreter.

    Args:
        model: file path or flatbuffer bytes.
        kernels: ``"builtin"``, ``"xnnpack"`` or ``"reference"`` (see the module docstring).
        threads: interpreter threads (``None``: LiteRT's default).
        preserve_all_tensors: keep intermediate tensors readable (:meth:`tensors`).
    """

    def __init__(self, model: str | os.PathLike[str] | bytes, *, kernels: str = "builtin",
                 threads: int | None = None, preserve_all_tensors: bool = False) -> None:
        if kernels not in KERNELS:
            raise ConfigError(f"LiteRTSession: kernels must be one of {KERNELS}, got {kernels!r}")
        mod = _litert()
        data = model if isinstance(model, bytes) else open(model, "rb").read()
        self.data = data
        resolver = {
            "builtin": mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            "xnnpack": mod.OpResolverType.AUTO,
            "reference": mod.OpResolverType.BUILTIN_REF,
        }[kernels]
        self.kernels = kernels
        self.interpreter = mod.Interpreter(
            model_content=data, num_threads=threads, experimental_op_resolver_type=resolver,
            experimental_preserve_all_tensors=preserve_all_tensors,
        )
        self.interpreter.allocate_tensors()
        meta = read_metadata(data, "fxquant")
        self.meta: dict[str, Any] = json.loads(meta) if meta else {}
        self.input_details = self.interpreter.get_input_details()
        self.output_details = self.interpreter.get_output_details()

    def _perm(self, kind: str, i: int, rank: int) -> tuple[int, ...]:
        entries = self.meta.get(kind, [])
        if i < len(entries) and len(entries[i]["perm"]) == rank:
            return tuple(entries[i]["perm"])
        return tuple(range(rank))

    def feed(self, inputs: Any) -> None:
        """Set the inputs (torch layout) without running."""
        mi: ModelInputs = as_inputs(inputs)
        flat = [t for _, t in flatten_outputs((mi.args, mi.kwargs))
                if isinstance(t, torch.Tensor)]
        if len(flat) != len(self.input_details):
            raise ConfigError(f"the TFLite model takes {len(self.input_details)} input(s), got "
                              f"{len(flat)}")
        for i, (d, t) in enumerate(zip(self.input_details, flat, strict=True)):
            x = t.detach().cpu()
            perm = self._perm("inputs", i, x.dim())
            x = x.permute(perm).contiguous()
            if tuple(d["shape"]) != tuple(x.shape):
                self.interpreter.resize_tensor_input(d["index"], list(x.shape))
                self.interpreter.allocate_tensors()
                self.input_details = self.interpreter.get_input_details()
                d = self.input_details[i]
            dtype = np.dtype(d["dtype"])
            if dtype.kind in "iu" and x.is_floating_point():
                scale, zp = d["quantization"]
                q = torch.round(x.double() / scale) + zp
                info = np.iinfo(dtype)
                arr = q.clamp(info.min, info.max).numpy().astype(dtype)
            else:
                arr = x.numpy().astype(dtype)
            self.interpreter.set_tensor(d["index"], arr)

    def run(self, inputs: Any, *, raw: bool = False) -> list[torch.Tensor]:
        """Run once; outputs in torch's layout (``raw``: integer codes, not dequantized)."""
        self.feed(inputs)
        self.interpreter.invoke()
        outs = []
        for i, d in enumerate(self.output_details):
            arr = self.interpreter.get_tensor(d["index"])
            t = torch.from_numpy(np.array(arr))
            perm = self._perm("outputs", i, t.dim())
            inv = [0] * len(perm)
            for j, p in enumerate(perm):
                inv[p] = j
            t = t.permute(inv).contiguous()
            if not raw and np.dtype(d["dtype"]).kind in "iu" and d["quantization"][0] != 0:
                scale, zp = d["quantization"]
                t = (t.double() - zp) * scale
                t = t.float()
            outs.append(t)
        return outs

    def tensors(self) -> dict[str, LiteRTTensor]:
        """Every readable tensor after :meth:`run` (``preserve_all_tensors=True`` keeps the
        intermediate ones), by name, in TFLite's layout."""
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


_MOVES = frozenset({"QUANTIZE", "DEQUANTIZE", "RESHAPE", "TRANSPOSE", "STRIDED_SLICE", "SLICE",
                    "PAD", "CONCATENATION", "MAX_POOL_2D", "SQUEEZE", "EXPAND_DIMS",
                    "RESIZE_NEAREST_NEIGHBOR"})


def tflite_op_counts(data: bytes) -> tuple[dict[str, int], dict[str, int]]:
    """``(integer ops, float ops)`` of a TFLite flatbuffer: operator name -> count, by the
    type of each operator's first output (QUANTIZE / DEQUANTIZE and pure data movement are
    not counted)."""
    ints: dict[str, int] = {}
    floats: dict[str, int] = {}
    for name, out_type in read_ops(data):
        if name in _MOVES:
            continue
        bucket = floats if out_type == "FLOAT32" else ints
        bucket[name] = bucket.get(name, 0) + 1
    return dict(sorted(ints.items())), dict(sorted(floats.items()))
