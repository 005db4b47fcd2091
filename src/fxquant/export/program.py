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

**Data-dependent Python control flow** (``if x.sum() > 0:``) has no graph form: by default
:func:`capture` refuses with an :class:`~fxquant.errors.ExportError` naming the source line.
``specialize=True`` captures it with ``torch.export.draft_export`` instead, which specialises
each such condition to the branch the example inputs take; the program then computes that
branch for every input, and :attr:`CapturedProgram.specialized` lists the conditions (source
lines) so the exporter can say so.

:func:`constant_inputs` evaluates, in torch, what each quantizer on a constant quantizes (a
weight, a conv weight with its BatchNorm folded in): the exporters write those as integer
constants computed from exactly the simulation's values; :func:`constant_biases` does the same
for the biases of the convs / linears reading them.

Size (~620 lines): the steps of one capture -- the custom op and quantizers as ops, the
export attempts with their fallbacks (dynamic batch, draft export), the one-line failure report
naming the user's source line, and the constant evaluation the exporters read -- share the
capture's private helpers and its contract; split, that contract would span modules.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import sys
import traceback
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
    "constant_inputs",
    "constant_biases",
    "quantizers_as_ops",
    "quantize_dequantize",
    "user_frame",
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


def _qdq_forward(fq: FakeQuantize, path: str, require_scale: bool = True):
    """``fq``'s forward as one op; state and grid are read now, not while tracing."""
    if fq.state is FakeQuantState.FLOAT:
        return lambda x: x
    if require_scale and not bool(fq.calibrated):

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
def quantizers_as_ops(
    model: nn.Module, require_scales: bool = True
) -> Iterator[dict[str, FakeQuantize]]:
    """Inside the block every quantizer of ``model`` calls :func:`quantize_dequantize`.

    Yields ``{module path: quantizer}``.  A quantizer without a scale that is reached by a
    float tensor raises :class:`~fxquant.errors.ExportError` naming it (calibrate first);
    ``require_scales=False`` lets it run with its initial grid (for exporters that only need to
    know where the quantizers are, e.g. a float export).  The model is restored afterwards
    (instance-level ``forward`` overrides only).
    """
    quantizers = {p: m for p, m in model.named_modules() if isinstance(m, FakeQuantize)}
    for path, m in quantizers.items():
        m.forward = _qdq_forward(m, path, require_scales)  # type: ignore[method-assign]
    try:
        yield quantizers
    finally:
        for m in quantizers.values():
            del m.forward


@contextlib.contextmanager
def _stateless(model: nn.Module) -> Iterator[None]:
    """The quantizers' buffers and parameters (scale, zero point, observer statistics ...) are
    hidden inside the block.  Their forward, replaced by :func:`quantizers_as_ops`, reads none
    of them, and torch.export would lift every one as a program input: thousands in a large
    model, which its decomposition pass handles in quadratic time (densenet121: minutes)."""
    saved = []
    for m in model.modules():
        if isinstance(m, FakeQuantize):
            for sub in m.modules():
                saved.append((sub, sub._buffers, sub._parameters))
                sub._buffers, sub._parameters = {}, {}
    try:
        yield
    finally:
        for sub, buffers, params in saved:
            sub._buffers, sub._parameters = buffers, params


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
        specialized: data-dependent conditions fixed to the branch the example inputs took
            (``capture(..., specialize=True)``), as ``"file:line: code"``; empty otherwise.
    """

    program: torch.export.ExportedProgram
    quantizers: dict[str, str]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_batch: bool
    inputs: ModelInputs
    specialized: tuple[str, ...] = ()


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


_QUIET_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch._export", "torch.export",
                  "torch._dynamo")
"""torch loggers that print a whole graph when a capture attempt fails; fxquant tries several
captures and reports the failure itself (one line, naming the user's code)."""


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export(model: nn.Module, inputs: ModelInputs, dynamic: bool,
            draft: bool = False) -> torch.export.ExportedProgram:
    """One ``torch.export`` attempt.  What torch writes to stderr during a failed attempt (its
    partial graph) is dropped: the caller reports the failure in one line; a successful
    attempt's stderr (warnings) is passed on."""
    buf = io.StringIO()
    with _quiet_torch_logs(), contextlib.redirect_stderr(buf):
        ep = _export_once(model, inputs, dynamic, draft)
    if buf.getvalue().strip():
        sys.stderr.write(buf.getvalue())
    return ep


def _export_once(model: nn.Module, inputs: ModelInputs, dynamic: bool,
                 draft: bool) -> torch.export.ExportedProgram:
    shapes: dict[str, Any] | None = None
    if dynamic:
        args_spec, kwargs_spec = _dynamic_shapes(inputs)
        params = list(inspect.signature(model.forward).parameters.values())
        named = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        shapes = dict(zip(named, args_spec, strict=False))
        if len(args_spec) > len(named):
            shapes[_var_positional(model) or "args"] = args_spec[len(named):]
        shapes.update(kwargs_spec)
    if draft:
        return torch.export.draft_export(
            model, inputs.args, inputs.kwargs, dynamic_shapes=shapes, strict=False
        )
    return torch.export.export(
        model, inputs.args, inputs.kwargs, dynamic_shapes=shapes, strict=False
    )


def _doubled_batch(inputs: ModelInputs) -> ModelInputs | None:
    """``inputs`` with every tensor of first dimension 1 repeated to 2, or None when no tensor
    has a first dimension of 1 (``torch.export`` specializes sizes 0 and 1, so a batch-1 example
    would give a file that only takes batch 1)."""
    found = False

    def wide(v: Any) -> Any:
        nonlocal found
        if isinstance(v, torch.Tensor):
            if v.dim() > 0 and v.shape[0] == 1:
                found = True
                return torch.cat([v, v])
            return v
        if isinstance(v, (tuple, list)):
            return type(v)(wide(x) for x in v)
        if isinstance(v, dict):
            return {k: wide(x) for k, x in v.items()}
        return v

    out = ModelInputs(tuple(wide(a) for a in inputs.args),
                      {k: wide(v) for k, v in inputs.kwargs.items()})
    return out if found else None


def _batch_is_dynamic(ep: torch.export.ExportedProgram) -> bool:
    for node in ep.graph.nodes:
        if node.op != "placeholder" or node.name not in ep.graph_signature.user_inputs:
            continue
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dim() > 0:
            return not isinstance(val.shape[0], int)
    return False


def capture(
    qmodel: nn.Module, example_inputs: Any, *, dynamic_batch: bool = True,
    specialize: bool = False, require_scales: bool = True,
) -> CapturedProgram:
    """Capture a calibrated prepared model with ``torch.export`` (see the module docstring).

    Args:
        qmodel: a model from :func:`fxquant.prepare` (any capture path), calibrated.
        example_inputs: one batch (:mod:`fxquant.modelio`: tensor, tuple, dict).
        dynamic_batch: try to keep dimension 0 of every input symbolic; when the model's code
            fixes the batch size the program is static (``CapturedProgram.dynamic_batch``).
        specialize: capture data-dependent Python conditions as the branch the example inputs
            take (``torch.export.draft_export``), listed in ``CapturedProgram.specialized``;
            False refuses them.
        require_scales: a quantizer without a scale raises (default); False captures it with
            its initial grid (for a float export that only needs the quantizers' places).

    >>> import torch, fxquant
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    >>> qmodel = fxquant.prepare(model, torch.randn(2, 4))
    >>> _ = fxquant.calibrate(qmodel, [torch.randn(8, 4)], progress=False)
    >>> cp = capture(qmodel, torch.randn(2, 4))
    >>> cp.input_names, cp.output_names, cp.dynamic_batch
    (('input',), ('output',), True)

    The model runs in eval mode with the float simulation during the capture; its modes and
    quantizers are restored afterwards.  ``CapturedProgram.inputs`` holds copies of the example
    inputs *before* the model ran (a model that changes its input in place has not touched them).

    Raises:
        ExportError: a quantizer without a scale, or code ``torch.export`` cannot capture
            (data-dependent control flow ...), with the failing source line.
    """
    inputs = _owned(as_inputs(example_inputs))
    modes = [(m, m.training) for m in qmodel.modules()]
    qmodel.eval()
    try:
        with quantizers_as_ops(qmodel, require_scales):  # nothing observes or updates from here
            with torch.no_grad():
                example_out = call_model(qmodel, _owned(inputs))
            output_names = tuple(n for n, _ in flatten_outputs(example_out))
            with _stateless(qmodel):
                ep, dynamic = _export_with_fallback(qmodel, _owned(inputs), dynamic_batch,
                                                    specialize)
    finally:
        for m, t in modes:
            m.training = t
    specialized = _strip_specializations(ep) if specialize else ()
    _check_no_batch_statistics(ep)
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
        specialized=specialized,
    )


def _owned(inputs: ModelInputs) -> ModelInputs:
    """Contiguous copies of the example tensors: a model that changes its input in place does
    not change the caller's, and torch.onnx needs contiguous example inputs."""

    def own(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.detach().clone(memory_format=torch.contiguous_format)
        if isinstance(v, (tuple, list)):
            return type(v)(own(x) for x in v)
        if isinstance(v, dict):
            return {k: own(x) for k, x in v.items()}
        return v

    return ModelInputs(own(inputs.args), own(inputs.kwargs))


def _export_with_fallback(
    model: nn.Module, inputs: ModelInputs, dynamic_batch: bool, specialize: bool = False
) -> tuple[torch.export.ExportedProgram, bool]:
    err: Exception | None = None
    wide = _doubled_batch(inputs) if dynamic_batch else None
    if wide is not None:  # torch.export fixes a size-1 dimension: trace the batch at size 2
        try:
            ep = _export(model, wide, dynamic=True)
            if _batch_is_dynamic(ep):
                return ep, True
        except ExportError:
            raise
        except Exception:
            pass
    for dynamic in (True, False) if dynamic_batch else (False,):
        try:
            ep = _export(model, inputs, dynamic=dynamic)
            return ep, dynamic and _batch_is_dynamic(ep)
        except ExportError:
            raise
        except Exception as exc:
            err = err or exc
    if specialize:
        for dynamic in (True, False) if dynamic_batch else (False,):
            try:
                ep = _export(model, inputs, dynamic=dynamic, draft=True)
                return ep, dynamic and _batch_is_dynamic(ep)
            except ExportError:
                raise
            except Exception as exc:
                err = exc
    assert err is not None
    where = _raising_frame(err) or user_frame(str(err))
    head = str(err).strip().splitlines()[0] if str(err).strip() else ""
    hint = (
        "" if specialize else
        ", or capture with specialize=True to export the branch the example inputs take "
        "(reported as a warning)"
    )
    raise ExportError(
        f"torch.export could not capture {type(model).__name__}"
        f"{f' ({where})' if where else ''}: data-dependent Python control flow (if on a "
        f"tensor's value) cannot be exported; rewrite it with torch.where / torch.cond{hint} "
        f"({type(err).__name__}: {bounded(head, 160)})"
    ) from err


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.+)')
_GRAPH_FRAME = re.compile(r"# File: (\S+):(\d+) in (\S+), code: (.+)")


def user_frame(text: str) -> str:
    """``file:line: code`` of the innermost frame outside torch / fxquant in a traceback or a
    graph dump (``# File: path:line in fn, code: ...``), ``""`` when there is none."""
    frames = [(m.group(1), m.group(2), m.group(4)) for m in _FRAME.finditer(text)]
    frames += [(m.group(1), m.group(2), m.group(4)) for m in _GRAPH_FRAME.finditer(text)]
    frames = [f for f in frames if "/torch/" not in f[0] and "/fxquant/" not in f[0]]
    if not frames:
        return ""
    path, line, code = frames[-1]
    return f"{path.rsplit('/', 1)[-1]}:{line}: {bounded(code.strip(), 100)}"


def _raising_frame(err: BaseException) -> str:
    """``file:line: code`` of the innermost model-code frame on ``err``'s traceback (non-strict
    export runs the model's Python, so the failing condition is on the stack)."""
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        path = frame.filename.replace("\\", "/")
        if "/torch/" in path or "/fxquant/" in path or path.startswith("<"):
            continue
        code = bounded((frame.line or "").strip(), 100)
        return f"{path.rsplit('/', 1)[-1]}:{frame.lineno}: {code}"
    return ""


_ASSERTS = ("_assert_scalar", "_assert_async", "sym_constrain_range")


def _strip_specializations(ep: torch.export.ExportedProgram) -> tuple[str, ...]:
    """Remove the runtime checks ``draft_export`` put on specialised data-dependent values
    (ONNX has no form for them) and say where they were."""
    found: list[str] = []
    doomed = []
    for n in ep.graph.nodes:
        name = getattr(n.target, "__name__", str(n.target))
        if n.op == "call_function" and any(a in name for a in _ASSERTS):
            doomed.append(n)
        if n.op == "call_function" and name in ("item", "_local_scalar_dense", "item.default",
                                                "_local_scalar_dense.default"):
            where = user_frame(n.meta.get("stack_trace") or "")
            if where and where not in found:
                found.append(where)
    for n in doomed:
        ep.graph.erase_node(n)
    ep.graph.eliminate_dead_code()
    ep.graph_module.recompile()
    return tuple(found)


_TRAINING_BN = ("_batch_norm_with_update", "_batch_norm_with_update_functional")


def _from_user_inputs(ep: torch.export.ExportedProgram) -> set[torch.fx.Node]:
    """The nodes whose value depends on a model input (the rest are constants: functions of
    parameters and buffers)."""
    user = set(ep.graph_signature.user_inputs)
    found: set[torch.fx.Node] = set()
    for n in ep.graph.nodes:  # topological order
        if (n.op == "placeholder" and n.name in user) or any(
                a in found for a in n.all_input_nodes):
            found.add(n)
    return found


def _check_no_batch_statistics(ep: torch.export.ExportedProgram) -> None:
    """A batch norm that normalises an activation with the batch's own statistics
    (``training=True`` baked into the prepared graph) has no deployable form.  One of a constant
    -- timm's weight standardisation, ``F.batch_norm(weight, training=True)`` -- is a constant
    too, and is folded like one."""
    dynamic = _from_user_inputs(ep)
    for n in ep.graph.nodes:
        if n.op != "call_function" or "batch_norm" not in str(n.target) or n not in dynamic:
            continue
        name = getattr(n.target, "__name__", str(n.target)).split(".")[0]
        training = name in _TRAINING_BN or (
            "no_training" not in name and len(n.args) > 5 and n.args[5] is True
        )
        if training:
            where = user_frame(n.meta.get("stack_trace") or "")
            raise ExportError(
                f"a batch norm{f' at {where}' if where else ''} normalises with batch "
                "statistics (training=True in the prepared graph); prepare the model in eval "
                "mode (model.eval() before fxquant.prepare) so it uses its running statistics"
            )


def _constant_values(ep: torch.export.ExportedProgram,
                     wanted: list[Any]) -> dict[str, torch.Tensor]:
    """Node name -> its value computed in torch, for the nodes of ``wanted`` (and what they
    read) that depend on no model input."""
    values: dict[str, Any] = {}
    lookup = {**ep.state_dict, **ep.constants}
    for spec in ep.graph_signature.input_specs:
        if spec.target is not None and spec.target in lookup:
            values[spec.arg.name] = lookup[spec.target]
    needed: set[str] = set()
    stack = [n for n in wanted if isinstance(n, torch.fx.Node)]
    while stack:
        n = stack.pop()
        if n.name in needed:
            continue
        needed.add(n.name)
        stack.extend(n.all_input_nodes)
    with torch.no_grad():
        for n in ep.graph.nodes:
            if n.name not in needed or n.name in values:
                continue
            if n.op != "call_function" or any(a.name not in values for a in n.all_input_nodes):
                continue  # depends on a model input
            args, kwargs = torch.fx.node.map_arg((n.args, n.kwargs), lambda a: values[a.name])
            values[n.name] = n.target(*args, **kwargs)
    return values


def constant_inputs(cp: CapturedProgram) -> dict[str, list[torch.Tensor]]:
    """Quantizer path -> the float tensors its calls on constants quantize, in program order.

    A call is on a constant when its input depends on no model input (a weight, a conv weight
    with its BatchNorm folded, a quantized parameter).  The values are computed in torch by the
    program's own ATen ops on its parameters, i.e. exactly what the simulation quantizes.
    """
    qdq = torch.ops.fxquant.quantize_dequantize.default
    calls = [n for n in cp.program.graph.nodes if n.op == "call_function" and n.target is qdq]
    values = _constant_values(cp.program, [c.args[0] for c in calls])
    out: dict[str, list[torch.Tensor]] = {}
    for c in calls:
        src = c.args[0]
        if isinstance(src, torch.fx.Node) and src.name in values:
            out.setdefault(str(c.args[6]), []).append(values[src.name].detach())
    return out


_WEIGHTED_OPS = frozenset({"conv1d", "conv2d", "conv3d", "convolution", "linear",
                           "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"})


def constant_biases(cp: CapturedProgram) -> dict[str, list[torch.Tensor]]:
    """Weight quantizer path -> the constant bias of each conv / linear reading that quantizer's
    output as its weight, in program order, computed in torch like :func:`constant_inputs`.

    A folded BatchNorm's bias (``beta - mean * gamma / sqrt(var + eps)``) is a constant
    subgraph that the ONNX constant folding evaluates with another ``sqrt`` than torch's
    vectorized one (a last-bit difference that can move the int32 bias by one); the exporter
    writes these values instead, the ones the simulation computes with.
    """
    qdq = torch.ops.fxquant.quantize_dequantize.default
    ops = []
    for n in cp.program.graph.nodes:
        name = getattr(n.target, "__name__", "").split(".")[0] if n.op == "call_function" else ""
        if name not in _WEIGHTED_OPS or len(n.args) < 3:
            continue
        w, b = n.args[1], n.args[2]
        if isinstance(w, torch.fx.Node) and w.target is qdq and isinstance(b, torch.fx.Node):
            ops.append((str(w.args[6]), b))
    values = _constant_values(cp.program, [b for _, b in ops])
    out: dict[str, list[torch.Tensor]] = {}
    for path, b in ops:
        if b.name in values:
            out.setdefault(path, []).append(values[b.name].detach())
    return out
