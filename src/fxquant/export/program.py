"""One capture of a prepared model for every exporter: ``torch.export`` with quantizers as one op.

Whatever path ``prepare`` took (torch.fx, float islands, eager capture of an untraceable
``forward``), the prepared model is an ``nn.Module`` whose forward runs fxquant's quantizers.
:func:`capture` runs it through ``torch.export.export(strict=False)`` -- Python control flow is
specialised on the example inputs, ops decompose to ATen, in-place ops are functionalised,
nested outputs are flattened -- while every active quantizer calls the custom op
``fxquant::quantize_dequantize(x, scale, zero_point, quant_min, quant_max, axis, name)``.

The op carries the quantizer's module path as ``name``, so an exporter maps each of its nodes
back to the quantizer (:attr:`CapturedProgram.quantizers`) and reads the grid from
``FakeQuantize.qparams()`` -- the one owner of the applied qparams.  Its scale / zero point
arguments are those same values (graph constants), so the captured program computes exactly
what the simulation computes (``program.module()(*args)``).

Quantizers in ``FLOAT`` state are identities (no op); quantizers in ``CALIBRATION`` or ``QAT``
are captured with their current scales, as in ``VALIDATION``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ExportError, bounded
from ..fake_quant import FakeQuantize, FakeQuantState
from ..modelio import ModelInputs, as_inputs, call_model, flatten_outputs
from ..numerics import QDType, ScaleMath, fake_quantize

__all__ = [
    "QDQ_OP_NAME",
    "CapturedProgram",
    "capture",
    "quantizers_as_ops",
    "quantize_dequantize",
]

QDQ_OP_NAME = "fxquant::quantize_dequantize"
"""The custom op every active quantizer becomes in a captured program."""


@torch.library.custom_op(QDQ_OP_NAME, mutates_args=())
def quantize_dequantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    axis: int,
    name: str,
    reciprocal: bool = False,
) -> torch.Tensor:
    """``dequantize(quantize(x))`` on the grid ``[quant_min, quant_max]`` (ONNX Q/DQ semantics).

    ``axis`` is the channel axis (-1 per tensor: ``scale`` is 0-d); ``name`` is the quantizer's
    module path (data for exporters, no effect on the result); ``reciprocal`` selects
    :attr:`ScaleMath.RECIPROCAL`.
    """
    del name
    dtype = _grid_dtype(quant_min, quant_max)
    math = ScaleMath.RECIPROCAL if reciprocal else ScaleMath.DIVIDE
    return fake_quantize(x, scale, zero_point, dtype, None if axis < 0 else axis, math)


@quantize_dequantize.register_fake
def _(x, scale, zero_point, quant_min, quant_max, axis, name, reciprocal=False):
    return torch.empty_like(x)


def _grid_dtype(quant_min: int, quant_max: int) -> QDType:
    """The :class:`QDType` whose range is exactly ``[quant_min, quant_max]``."""
    signed = quant_min < 0
    bits = max(2, (quant_max - quant_min).bit_length())
    dtype = QDType(bits, signed)
    if (dtype.qmin, dtype.qmax) != (quant_min, quant_max):
        dtype = dtype.narrow()
    if (dtype.qmin, dtype.qmax) != (quant_min, quant_max):
        raise ValueError(f"no quantized dtype has the range [{quant_min}, {quant_max}]")
    return dtype


def _qdq_forward(fq: FakeQuantize, path: str):
    """``fq``'s forward as one op; state and grid are read now, not while tracing."""
    if fq.state is FakeQuantState.FLOAT:
        return lambda x: x
    if not bool(fq.calibrated):

        def uncalibrated(x: torch.Tensor) -> torch.Tensor:
            if not x.is_floating_point():
                return x
            raise ExportError(
                f"quantizer {bounded(path)!r} has no scale yet: run fxquant.calibrate(model, "
                "data) (or QAT) on data that reaches it before exporting"
            )

        return uncalibrated
    qp = fq.qparams()
    reciprocal = qp.scale_math is ScaleMath.RECIPROCAL
    zero_point = qp.zero_point.to(torch.int32)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            return x
        axis = -1 if qp.axis is None else qp.axis % max(1, x.dim())
        return quantize_dequantize(
            x, qp.scale.to(x.dtype), zero_point, qp.dtype.qmin, qp.dtype.qmax, axis, path,
            reciprocal,
        )

    return forward


@contextlib.contextmanager
def quantizers_as_ops(model: nn.Module) -> Iterator[dict[str, FakeQuantize]]:
    """Inside the block every quantizer of ``model`` calls :func:`quantize_dequantize`.

    Yields ``{module path: quantizer}``.  A quantizer without a scale that is reached by a
    float tensor raises :class:`~fxquant.errors.ExportError` naming it (calibrate first).  The
    model is restored afterwards (instance-level ``forward`` overrides only).
    """
    quantizers = {p: m for p, m in model.named_modules() if isinstance(m, FakeQuantize)}
    for path, m in quantizers.items():
        m.forward = _qdq_forward(m, path)  # type: ignore[method-assign]
    try:
        yield quantizers
    finally:
        for m in quantizers.values():
            del m.forward


@dataclass(frozen=True)
class CapturedProgram:
    """A prepared model captured by :func:`capture`.

    Attributes:
        program: the ``torch.export.ExportedProgram`` (ATen ops + ``fxquant::quantize_dequantize``).
        quantizers: node name of each quantize-dequantize call -> quantizer module path.
        input_names: the model's inputs, flattened (positional argument names, then keyword
            names; nested inputs get ``_0`` ... suffixes).
        output_names: the flattened outputs' stable names (:func:`fxquant.modelio.flatten_outputs`).
        dynamic_batch: whether dimension 0 of the inputs stayed symbolic.
        inputs: the example inputs it was captured with.
    """

    program: torch.export.ExportedProgram
    quantizers: dict[str, str]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_batch: bool
    inputs: ModelInputs


def _positional_names(model: nn.Module, count: int) -> list[str]:
    """Names of the first ``count`` positional parameters of ``model.forward`` (``input_<i>``
    where the signature does not name them, e.g. ``*args``)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [names[i] if i < len(names) else f"input_{i}" for i in range(count)]


def _var_positional(model: nn.Module) -> str | None:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    return next((p.name for p in params if p.kind is p.VAR_POSITIONAL), None)


def _input_names(model: nn.Module, inputs: ModelInputs) -> tuple[str, ...]:
    named = list(zip(_positional_names(model, len(inputs.args)), inputs.args, strict=True))
    named += list(inputs.kwargs.items())
    return tuple(n for base, v in named for n, _ in flatten_outputs(v, base))


def _dynamic_shapes(inputs: ModelInputs) -> Any:
    def spec(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return {0: torch.export.Dim.AUTO} if v.dim() > 0 else None
        if isinstance(v, (tuple, list)):
            return type(v)(spec(x) for x in v)
        if isinstance(v, dict):
            return {k: spec(x) for k, x in v.items()}
        return None

    return (*[spec(a) for a in inputs.args],), {k: spec(v) for k, v in inputs.kwargs.items()}


def _export(model: nn.Module, inputs: ModelInputs, dynamic: bool) -> torch.export.ExportedProgram:
    shapes: dict[str, Any] | None = None
    if dynamic:
        args_spec, kwargs_spec = _dynamic_shapes(inputs)
        params = list(inspect.signature(model.forward).parameters.values())
        named = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        shapes = dict(zip(named, args_spec, strict=False))
        if len(args_spec) > len(named):
            shapes[_var_positional(model) or "args"] = args_spec[len(named):]
        shapes.update(kwargs_spec)
    return torch.export.export(
        model, inputs.args, inputs.kwargs, dynamic_shapes=shapes, strict=False
    )


def _batch_is_dynamic(ep: torch.export.ExportedProgram) -> bool:
    for node in ep.graph.nodes:
        if node.op != "placeholder" or node.name not in ep.graph_signature.user_inputs:
            continue
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dim() > 0:
            return not isinstance(val.shape[0], int)
    return False


def capture(
    qmodel: nn.Module, example_inputs: Any, *, dynamic_batch: bool = True
) -> CapturedProgram:
    """Capture a calibrated prepared model with ``torch.export`` (see the module docstring).

    Args:
        qmodel: a model from :func:`fxquant.prepare` (any capture path), calibrated.
        example_inputs: one batch (:mod:`fxquant.modelio`: tensor, tuple, dict).
        dynamic_batch: try to keep dimension 0 of every input symbolic; when the model's code
            fixes the batch size the program is static (``CapturedProgram.dynamic_batch``).

    The model runs in eval mode with the float simulation during the capture; its modes and
    quantizers are restored afterwards.

    Raises:
        ExportError: a quantizer without a scale, or code ``torch.export`` cannot capture
            (data-dependent control flow ...), with the failing source line.
    """
    inputs = as_inputs(example_inputs)
    modes = [(m, m.training) for m in qmodel.modules()]
    qmodel.eval()
    try:
        with quantizers_as_ops(qmodel):  # no quantizer observes or updates from here on
            with torch.no_grad():
                example_out = call_model(qmodel, inputs)
            output_names = tuple(n for n, _ in flatten_outputs(example_out))
            ep, dynamic = _export_with_fallback(qmodel, inputs, dynamic_batch)
    finally:
        for m, t in modes:
            m.training = t
    qnodes = {
        n.name: str(n.args[6])
        for n in ep.graph.nodes
        if n.op == "call_function" and n.target is torch.ops.fxquant.quantize_dequantize.default
    }
    return CapturedProgram(
        program=ep,
        quantizers=qnodes,
        input_names=_input_names(qmodel, inputs),
        output_names=output_names,
        dynamic_batch=dynamic,
        inputs=inputs,
    )


def _export_with_fallback(
    model: nn.Module, inputs: ModelInputs, dynamic_batch: bool
) -> tuple[torch.export.ExportedProgram, bool]:
    err: Exception | None = None
    if dynamic_batch:
        try:
            ep = _export(model, inputs, dynamic=True)
            return ep, _batch_is_dynamic(ep)
        except ExportError:
            raise
        except Exception as exc:
            err = exc
    try:
        return _export(model, inputs, dynamic=False), False
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            f"torch.export could not capture {type(model).__name__}: "
            f"{type(exc).__name__}: {bounded(str(exc).splitlines()[0] if str(exc) else '', 300)}"
            " -- data-dependent Python control flow (if on a tensor's value) cannot be "
            "exported; rewrite it with torch.where / torch.cond or keep that module out of "
            "the exported model"
        ) from (err or exc)
