"""``export_tflite``: a prepared model as a fully integer TFLite flatbuffer, checked in LiteRT.

One path, shared with the ONNX exporter: :func:`fxquant.export.program.capture` (torch.export,
quantizers as ``fxquant::quantize_dequantize``) -> :mod:`.tflite_lower` / :mod:`.tflite_ops`
(ATen -> TFLite operators, NCHW -> NHWC, int8 / 16x8 integer kernels, float islands where TFLite
has no integer kernel) -> :mod:`.tflite_writer` (the ``tflite`` schema package's builders) ->
LiteRT loads and runs the file once on the example inputs -> atomic rename.

The file carries a metadata entry ``fxquant`` (JSON: the inputs' / outputs' torch names and
layouts, and which TFLite tensor holds which quantizer's values) that
:mod:`fxquant.runtimes.litert_runtime` reads to feed torch-layout tensors and to compare tensors.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import ConfigError, ExportError, bounded, require
from ..modelio import ModelInputs
from ..runtimes.litert_runtime import LiteRTSession
from .atomic import check_writable, write_bytes_atomic
from .program import capture
from .tflite_lower import NHWC, QDQ, Const, Dyn, Lowerer, grid_of, identity, permuted
from .tflite_ops import lower_node
from .tflite_writer import serialize

__all__ = ["export_tflite", "TFLiteExport", "TFLiteExportWarning", "METADATA_KEY"]

METADATA_KEY = "fxquant"
_IO_DTYPES = (None, "int8", "uint8")


class TFLiteExportWarning(UserWarning):
    """Something in the TFLite file differs from a fully integer model (float ops)."""


@dataclass(frozen=True)
class TFLiteExport:
    """What :func:`export_tflite` wrote.

    Attributes:
        path: the file.
        ops: TFLite operator name -> count.
        float_ops: ``(op, reason)`` for every op that runs in float32 in the file.
        inputs / outputs: ``(name, torch shape, TFLite type, layout)`` per tensor; layout
            ``"NHWC"`` means the TFLite tensor is the torch tensor permuted to channels-last.
        warnings: other notes (a bias saturated ...).
    """

    path: str
    ops: dict[str, int]
    float_ops: tuple[tuple[str, str], ...]
    inputs: tuple[tuple[str, tuple[int, ...], str, str], ...]
    outputs: tuple[tuple[str, tuple[int, ...], str, str], ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def fully_integer(self) -> bool:
        """No float op inside the model (float inputs / outputs aside)."""
        return not self.float_ops


def _layout(perm: tuple[int, ...]) -> str:
    return "NHWC" if perm == NHWC else "NCHW" if len(perm) == 4 else "same"


def _signature(ep: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    """Placeholder name -> constant value (parameters, buffers, lifted constants)."""
    out: dict[str, torch.Tensor] = {}
    sig = ep.graph_signature
    state = ep.state_dict
    for spec in sig.input_specs:
        target = spec.target
        if target is None:
            continue
        value = state.get(target)
        if value is None:
            value = ep.constants.get(target)
        if isinstance(value, torch.Tensor):
            out[spec.arg.name] = value.detach()
    return out


def _is_constant(L: Lowerer, v: Any) -> bool:
    if isinstance(v, fx.Node):
        return isinstance(L.values.get(v), Const) or (
            v in L.values and not isinstance(L.values[v], (Dyn, list, tuple)))
    if isinstance(v, (list, tuple)):
        return all(_is_constant(L, x) for x in v)
    return True


def _fold(L: Lowerer, n: fx.Node) -> Any:
    def val(a: Any) -> Any:
        if isinstance(a, fx.Node):
            v = L.values[a]
            return v.float_value() if isinstance(v, Const) and v.qp is not None else (
                v.value if isinstance(v, Const) else v)
        if isinstance(a, (list, tuple)):
            return type(a)(val(x) for x in a)
        return a

    def const(o: Any) -> Any:  # a split of a constant (MHA's in_proj weight) gives a list
        if isinstance(o, torch.Tensor):
            return Const(o)
        return type(o)(const(x) for x in o) if isinstance(o, (list, tuple)) else o

    with torch.no_grad():
        return const(n.target(*val(n.args), **{k: val(v) for k, v in n.kwargs.items()}))


def _input(L: Lowerer, n: fx.Node, name: str) -> Dyn:
    shape = L.shape(n)
    perm = NHWC if (L.nhwc_io and len(shape) == 4) else identity(len(shape))
    users = list(n.users)
    qdq = users[0] if len(users) == 1 and users[0].target is QDQ else None
    if L.io_dtype is not None and qdq is not None and L.quantize:
        qp, path = L.qparams(qdq)
        grid = grid_of(qp, path)
        if grid.dtype != "INT8":
            raise ExportError(f"input {name!r} is {grid.dtype}; io_dtype={L.io_dtype!r} needs "
                              "an 8-bit input quantizer")
        if L.io_dtype == "int8":
            t = L.new(name, permuted(shape, perm), grid)
            L.model.inputs.append(t)
            L.input_perms.append(perm)
            d = Dyn(t, perm, grid, shape)
        else:
            u8 = type(grid)(grid.scale, grid.zero_point + 128, "UINT8", grid.qmin + 128,
                            grid.qmax + 128, grid.source)
            t = L.new(name, permuted(shape, perm), u8, dtype="UINT8")
            L.model.inputs.append(t)
            L.input_perms.append(perm)
            d = L.quantized(Dyn(t, perm, u8, shape), grid, f"{name}_int8")
        L.values[qdq] = d
        L.record(d, path)
        return d
    val = n.meta.get("val")
    dtype = "FLOAT32" if not isinstance(val, torch.Tensor) else _TYPES.get(val.dtype, "FLOAT32")
    t = L.new(name, permuted(shape, perm), None, dtype=dtype)
    L.model.inputs.append(t)
    L.input_perms.append(perm)
    return Dyn(t, perm, None, shape)


def _output(L: Lowerer, v: Any, name: str) -> tuple[int, tuple[int, ...]]:
    if not isinstance(v, Dyn):
        raise ExportError(f"output {name!r} is not computed from the inputs; TFLite outputs must "
                          "be run-time tensors")
    perm = NHWC if (L.nhwc_io and v.rank == 4) else identity(v.rank)
    if v.grid is not None:
        if L.io_dtype is None:
            v = L.dequantized(v)
        elif L.io_dtype == "uint8":
            if v.grid.dtype != "INT8":
                raise ExportError(f"output {name!r} is {v.grid.dtype}; io_dtype='uint8' needs "
                                  "an 8-bit output")
            g = v.grid
            u8 = type(g)(g.scale, g.zero_point + 128, "UINT8", g.qmin + 128, g.qmax + 128)
            t = L.new(f"{name}_uint8", permuted(v.shape, v.perm), u8, dtype="UINT8")
            L.emit("QUANTIZE", [v.tensor], [t])
            v = Dyn(t, v.perm, u8, v.shape)
    t = L.get(v, perm)
    if t in L.model.inputs or L.model.tensors[t].data is not None:
        out = L.new(f"{name}_out", L.model.tensors[t].shape, v.grid,
                    dtype=L.model.tensors[t].dtype)
        L.emit("RESHAPE", [t, L.int_const(f"{name}_shape", L.model.tensors[t].shape)], [out])
        t = out
    return t, perm


_SKIP_PREFIXES = ("_assert", "sym_constrain", "_check")
_TYPES = {torch.float32: "FLOAT32", torch.int64: "INT64", torch.int32: "INT32",
          torch.bool: "BOOL", torch.uint8: "UINT8", torch.int8: "INT8", torch.int16: "INT16"}


def lower(qmodel: nn.Module, example_inputs: Any, *, nhwc_io: bool = True,
          io_dtype: str | None = None, quantize: bool = True) -> tuple[Lowerer, ModelInputs]:
    """Capture ``qmodel`` and lower it (the TFLite model is ``Lowerer.model``)."""
    cp = capture(qmodel, example_inputs, dynamic_batch=False)
    L = Lowerer(cp, qmodel, nhwc_io=nhwc_io, io_dtype=io_dtype, quantize=quantize)
    ep = cp.program
    consts = _signature(ep)
    user_inputs = set(ep.graph_signature.user_inputs)
    names = iter(cp.input_names)
    for n in ep.graph.nodes:
        if n in L.values:
            continue
        if n.op == "placeholder":
            if n.name in user_inputs:
                L.values[n] = _input(L, n, next(names, n.name))
            elif n.name in consts:
                L.values[n] = Const(consts[n.name])
            else:
                L.values[n] = None
        elif n.op == "call_function":
            name = getattr(n.target, "__name__", str(n.target))
            if name.startswith(_SKIP_PREFIXES):
                continue
            if n.target is not QDQ and _is_constant(L, list(n.args)) and _is_constant(
                    L, list(n.kwargs.values())):
                L.values[n] = _fold(L, n)
            else:
                L.values[n] = lower_node(L, n)
        elif n.op == "output":
            outs = n.args[0] if isinstance(n.args[0], (list, tuple)) else [n.args[0]]
            for i, o in enumerate(outs):
                oname = cp.output_names[i] if i < len(cp.output_names) else f"output_{i}"
                t, perm = _output(L, L.value(o), oname)
                L.model.outputs.append(t)
                L.output_perms.append(perm)
        else:
            raise ExportError(f"unexpected node {n.op} {bounded(n.name)} in the captured program")
    return L, cp.inputs


def _io_meta(L: Lowerer, cp_inputs: ModelInputs, names_in: tuple[str, ...],
             names_out: tuple[str, ...]) -> dict[str, Any]:
    def entry(t: int, perm: tuple[int, ...], name: str) -> dict[str, Any]:
        tt = L.model.tensors[t]
        return {"name": name, "tensor": tt.name, "perm": list(perm), "dtype": tt.dtype}

    return {
        "version": 1,
        "inputs": [entry(t, p, nm) for t, p, nm in zip(L.model.inputs, L.input_perms, names_in,
                                                      strict=False)],
        "outputs": [entry(t, p, nm) for t, p, nm in zip(L.model.outputs, L.output_perms,
                                                       names_out, strict=False)],
        "tensors": [{"tensor": L.model.tensors[t].name, "quantizer": q, "perm": list(p)}
                    for t, q, p in L.quantized_tensors],
    }


def export_tflite(
    qmodel: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str],
    *,
    io_dtype: str | None = None,
    nhwc_io: bool = True,
    quantize: bool = True,
    check: bool = True,
) -> TFLiteExport:
    """Write ``qmodel`` as a TFLite flatbuffer with LiteRT's integer kernels.

    Args:
        qmodel: a calibrated prepared model (:func:`fxquant.prepare` with ``backend="tflite"``
            gives TFLite's quantization rules: int8 asymmetric activations, symmetric
            per-channel int8 weights, fixed softmax / logistic / tanh outputs; the 16-bit
            templates give the 16x8 model).
        example_inputs: one batch (its shapes are the model's, batch size included).
        path: where to write; written atomically, after LiteRT has run the file once.
        io_dtype: ``None``: float32 inputs / outputs (QUANTIZE / DEQUANTIZE inside the model);
            ``"int8"`` / ``"uint8"``: quantized inputs and outputs on the model's input /
            output grids (uint8: zero point + 128).
        nhwc_io: 4-D inputs and outputs are NHWC (TFLite's layout; the model inside is NHWC
            either way).  ``False`` keeps them NCHW, with a TRANSPOSE at each end.
        quantize: ``False`` writes the float32 model (quantizers dropped).
        check: load and run the file in LiteRT before renaming it into place.

    Returns:
        :class:`TFLiteExport`; ops TFLite cannot run quantized are kept in float32 (DEQUANTIZE
        -> float op -> QUANTIZE), listed in ``float_ops`` and warned about
        (:class:`TFLiteExportWarning`).

    Raises:
        ExportError: an op with no TFLite form (named), a quantizer TFLite cannot represent
            (per-channel activations, asymmetric int16 ...), or a file LiteRT refuses.
        MissingDependencyError: ``tflite`` / ``flatbuffers`` (``pip install 'fxquant[tflite]'``),
            or ``ai-edge-litert`` when ``check`` is set.

    >>> import torch, fxquant
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    >>> qmodel = fxquant.prepare(model, torch.randn(1, 3, 8, 8), backend="tflite")
    >>> _ = fxquant.calibrate(qmodel, [torch.randn(4, 3, 8, 8)], progress=False)
    >>> result = fxquant.export_tflite(qmodel, torch.randn(1, 3, 8, 8), "/tmp/doc.tflite")
    >>> result.ops
    {'QUANTIZE': 1, 'CONV_2D': 1, 'DEQUANTIZE': 1}
    """
    if io_dtype not in _IO_DTYPES:
        raise ConfigError(f"export_tflite: io_dtype must be one of {_IO_DTYPES}, got "
                          f"{io_dtype!r}")
    require("tflite", "tflite", "export_tflite")
    require("flatbuffers", "tflite", "export_tflite")
    target = check_writable(path)
    L, inputs = lower(qmodel, example_inputs, nhwc_io=nhwc_io, io_dtype=io_dtype,
                      quantize=quantize)
    cp_names = L.cp.input_names
    meta = _io_meta(L, inputs, cp_names, L.cp.output_names)
    L.model.metadata[METADATA_KEY] = json.dumps(meta).encode()
    data = serialize(L.model)
    if check:
        try:
            with LiteRTSession(data, kernels="builtin") as session:
                session.run(session.feeds(inputs))
        except Exception as exc:
            raise ExportError(
                f"LiteRT refused the TFLite file fxquant wrote for {type(qmodel).__name__}: "
                f"{type(exc).__name__}: {bounded(str(exc), 300)}; please report it"
            ) from exc
    write_bytes_atomic(target, data)
    ops = Counter(op.opcode for op in L.model.ops)
    if L.float_ops:
        warnings.warn(
            f"export_tflite: {len(L.float_ops)} op(s) run in float32 in the TFLite file: "
            + ", ".join(f"{name} ({why})" for name, why in L.float_ops[:5])
            + (" ..." if len(L.float_ops) > 5 else ""),
            TFLiteExportWarning, stacklevel=2,
        )
    return TFLiteExport(
        path=target,
        ops=dict(ops),
        float_ops=tuple(L.float_ops),
        inputs=tuple(_describe(L, t, p, nm) for t, p, nm in zip(
            L.model.inputs, L.input_perms, cp_names, strict=False)),
        outputs=tuple(_describe(L, t, p, nm) for t, p, nm in zip(
            L.model.outputs, L.output_perms, L.cp.output_names, strict=False)),
        warnings=tuple(L.warnings),
    )


def _describe(L: Lowerer, t: int, perm: tuple[int, ...], name: str
              ) -> tuple[str, tuple[int, ...], str, str]:
    tt = L.model.tensors[t]
    torch_shape = tuple(tt.shape[i] for i in _inverse(perm))
    return name, torch_shape, tt.dtype, _layout(perm)


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    out = [0] * len(perm)
    for i, p in enumerate(perm):
        out[p] = i
    return tuple(out)
