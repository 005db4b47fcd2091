"""``export_onnx``: a prepared model -> an ONNX QDQ model, checked in ONNX Runtime before it is
written.

One path for every prepared model, whatever ``prepare`` captured it with (torch.fx, float
islands, eager capture of an untraceable ``forward``):

1. :func:`fxquant.export.program.capture` -- ``torch.export`` of the model in eval mode, each
   quantizer one ``fxquant::quantize_dequantize`` op carrying its module path;
2. :func:`fxquant.export.onnx_lower.lower` -- ``torch.onnx.export(dynamo=True)`` translates the
   ATen ops, each quantizer becomes a private node;
3. :func:`fxquant.export.onnx_passes.finish` -- the quantizers become QuantizeLinear /
   DequantizeLinear with the grids of ``FakeQuantize.qparams()``, weights integer initializers,
   biases int32 where the profile says so, tensors named per :mod:`fxquant.export.naming`;
4. ``onnx.checker`` (full check), then the **self-check** (:mod:`fxquant.export.onnx_check`):
   ONNX Runtime runs the file on the example inputs and it is compared with the simulation;
   only a file that passes is renamed into place (atomically).

The opset is the lowest one the quantized dtypes need, but at least 18 (the lowest
``torch.onnx`` writes): 18 for 8-bit grids, 21 for 16-bit / 4-bit ones.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ExportError, bounded, require
from ..fake_quant import FakeQuantize, FakeQuantState, quantizer_states
from ..graph.report import PrepareReport, get_report
from ..version import __version__
from .arguments import check_export_arguments
from .atomic import atomic_path, check_writable
from .onnx_lower import MIN_TORCH_ONNX_OPSET, lower
from .onnx_types import opset_for_qdtype
from .program import CapturedProgram, capture, constant_biases, constant_inputs
from .verify import VerifyReport

__all__ = [
    "ExportError",
    "ExportWarning",
    "ExportResult",
    "export_onnx",
]

MIN_OPSET = MIN_TORCH_ONNX_OPSET


class ExportWarning(UserWarning):
    """The exported model differs from the simulation in a way the user should know about."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: absolute path of the ONNX file.
        opset: ONNX opset of the default domain.
        input_names / output_names: graph inputs / outputs in positional order (the model's
            argument names; the stable output names of :func:`fxquant.modelio.flatten_outputs`).
        tensor_names: quantizer module path -> the ONNX tensor it quantizes (the float tensor
            before ``QuantizeLinear``; for weights the output of the weight's
            ``DequantizeLinear``), per :mod:`fxquant.export.naming`.
        warnings: everything that made the export differ from the simulation.
        quantized: False for a ``quantize=False`` (float) export.
        specialized: data-dependent conditions exported as the branch the example inputs took
            (``specialize=True``), as ``"file:line: code"``.
        check: the self-check's report (ONNX Runtime vs the simulation on the example inputs);
            None with ``check=False`` or for a float export.
        float_ops: op type -> count of the ops whose result the file leaves in float (ops
            without an integer form, ``keep_float`` ops, quantizers the profile keeps off);
            :func:`fxquant.verify` says what a runtime really ran in integer kernels.
    """

    path: str
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    tensor_names: dict[str, str]
    warnings: tuple[str, ...] = ()
    quantized: bool = True
    specialized: tuple[str, ...] = ()
    check: VerifyReport | None = None
    float_ops: dict[str, int] = field(default_factory=dict)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in patterns)


def export_onnx(
    qmodel: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    quantize: bool = True,
    keep_float: Sequence[str] = (),
    int32_bias: bool | None = None,
    check: bool = True,
    specialize: bool = False,
) -> ExportResult:
    """Write ``qmodel`` (from :func:`fxquant.prepare`, calibrated) as an ONNX QDQ model.

    Args:
        qmodel: a prepared model (any capture path: torch.fx, float islands, eager).
        example_inputs: one batch (:mod:`fxquant.modelio`: a tensor, a tuple of positional
            inputs, a dict of keyword inputs).
        path: the ``.onnx`` file to write (atomically; the folder must exist).
        opset: ONNX opset; ``None`` picks the lowest the quantized dtypes need (18, or 21 for
            16-bit / 4-bit grids).  Below 18 or too low for a dtype -> :class:`ExportError`.
        dynamic_batch: keep the first dimension of inputs and outputs symbolic (``batch``);
            static when the model's code fixes the batch size.
        quantize: ``False`` writes the float model with the same tensor names (for a float ONNX
            plus an encodings file).
        keep_float: op names (or module-path prefixes) to export in float: their quantizers
            (weights included) are left out.
        int32_bias: int32 biases (scale ``input_scale * weight_scale``); ``None``: for the
            profiles whose ``BackendProfile.int32_bias`` is set (ONNX Runtime, x86 / fbgemm /
            qnnpack).
        check: run the written file in ONNX Runtime on ``example_inputs`` and refuse it when it
            does not compute what the simulation computes (beyond quantization noise: see
            :mod:`fxquant.export.onnx_check`); ``False`` skips that (a file is still written
            only when it passes ``onnx.checker``).
        specialize: data-dependent Python conditions (``if x.sum() > 0``) are exported as the
            branch the example inputs take, with an :class:`ExportWarning` naming each (see
            :func:`fxquant.export.program.capture`); ``False`` refuses them.

    Returns:
        :class:`ExportResult`.

    Raises:
        ExportError: uncalibrated quantizer, code ``torch.export`` cannot capture, an op
            ``torch.onnx`` cannot translate, a dtype the opset cannot express, a file that fails
            the self-check, an unwritable path (the message names the op / quantizer / tensor).

    >>> import os, tempfile, torch, fxquant
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    >>> qmodel = fxquant.prepare(model, torch.randn(2, 3, 8, 8), backend="onnxruntime")
    >>> _ = fxquant.calibrate(qmodel, [torch.randn(8, 3, 8, 8)], progress=False)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.onnx")
    >>> res = export_onnx(qmodel, torch.randn(2, 3, 8, 8), path)
    >>> res.opset, res.input_names, res.output_names
    (18, ('input',), ('output',))
    """
    check_export_arguments(qmodel, example_inputs, path, keep_float)  # before any work
    require("onnx", "onnx", "export_onnx")
    require("onnxscript", "onnx", "export_onnx")
    # the onnx_ir-based passes load with the optional onnx packages, on the first export
    from .onnx_check import check_float, check_quantized
    from .onnx_passes import FinishOptions, finish
    try:
        report = get_report(qmodel)
    except TypeError as err:
        raise ExportError(str(err)) from None
    try:
        path = check_writable(path)
    except OSError as err:
        raise ExportError(f"cannot write the ONNX file: {err}") from err
    keep_float = tuple(keep_float)
    _check_keep_float(report, keep_float)
    if int32_bias is None:
        int32_bias = report.profile.int32_bias
    max_bits = report.profile.max_qdq_bits
    index = {path: (op, role) for path, op, role in report.quantizers()}
    quantizers = {p: m for p, m in qmodel.named_modules() if isinstance(m, FakeQuantize)}
    float_ops = frozenset(p for p in quantizers if _matches(index.get(p, (p, ""))[0], keep_float))
    used = {p: m for p, m in quantizers.items()
            if p not in float_ops and m.state is not FakeQuantState.FLOAT}
    chosen = _choose_opset(opset, _dtype_opsets(used, max_bits) if quantize else {})
    cp = _capture(qmodel, example_inputs, report, dynamic_batch, specialize, quantize)
    model = lower(cp, chosen, lambda base: [
        name for name, rec in report.ops.items() if rec.op_type.lower().lstrip("_") == base
    ])
    done = finish(model, FinishOptions(
        qmodel=qmodel, index=index, constants=constant_inputs(cp),
        input_names=cp.input_names, output_names=cp.output_names, quantize=quantize,
        float_ops=float_ops, int32_bias=int32_bias, max_qdq_bits=max_bits, opset=chosen,
        quantize_concat_inputs=report.profile.quantize_concat_inputs,
        biases=constant_biases(cp),
    ))
    proto = _to_proto(done.model)
    notes = list(done.warnings) + [
        f"data-dependent condition specialised to the branch the example inputs take: {w}"
        for w in cp.specialized
    ]
    check_report = None
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(proto.SerializeToString())
            if check and quantize:
                off = {p: FakeQuantState.FLOAT for p in float_ops}  # keep_float: as written
                with quantizer_states(qmodel, None, off), torch.no_grad():
                    check_report = check_quantized(qmodel, tmp, cp.inputs)
            elif check:
                check_float(qmodel, tmp, cp.inputs)
    except OSError as err:
        raise ExportError(f"cannot write the ONNX file {path!r}: {err}") from err
    for msg in notes:
        warnings.warn(msg, ExportWarning, stacklevel=2)
    return ExportResult(
        path=path,
        opset=chosen,
        input_names=tuple(v.name for v in done.model.graph.inputs),
        output_names=tuple(v.name for v in done.model.graph.outputs),
        tensor_names=dict(done.tensor_names),
        warnings=tuple(notes),
        quantized=quantize,
        specialized=cp.specialized,
        check=check_report,
        float_ops=dict(done.float_ops),
    )


def _capture(qmodel: nn.Module, example_inputs: Any, report: PrepareReport,
             dynamic_batch: bool, specialize: bool, quantize: bool) -> CapturedProgram:
    """:func:`capture`, with the error naming the float island the failure is in."""
    try:
        return capture(qmodel, example_inputs, dynamic_batch=dynamic_batch,
                       specialize=specialize, require_scales=quantize)
    except ExportError as err:
        if "data-dependent" not in str(err) or not report.islands:
            raise
        name, isl = next(iter(report.islands.items()))
        raise ExportError(
            f"op {name!r} is a float island (tracing failed at {bounded(isl.source, 120)}) and "
            f"torch.export cannot capture it either: {err}"
        ) from err


def _to_proto(model: Any) -> Any:
    import onnx
    import onnx_ir as ir

    proto = ir.serde.serialize_model(model)
    proto.producer_name, proto.producer_version = "fxquant", __version__
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as err:  # a bug in a pass: say which check failed
        raise ExportError(
            f"internal: the exported graph does not pass onnx.checker: {bounded(err, 300)}"
        ) from err
    return proto


def _choose_opset(requested: int | None, needs: dict[str, tuple[int, str]]) -> int:
    import onnx

    top = onnx.defs.onnx_opset_version()
    need_path, (need, what) = max(needs.items(), key=lambda kv: kv[1][0], default=("", (0, "")))
    if requested is None:
        return max(MIN_OPSET, need)
    if not isinstance(requested, int) or requested > top:
        raise ExportError(f"opset={requested!r} is not supported: fxquant exports opset "
                          f"{MIN_OPSET}..{top}")
    if requested < need:
        raise ExportError(
            f"opset={requested} is too low: quantizer {need_path!r} ({what}) needs opset >= "
            f"{need} (QuantizeLinear supports int16 / uint16 / int4 / uint4 from opset 21); "
            "pass opset=None to choose automatically"
        )
    if requested < MIN_OPSET:  # after the dtype check: that message says more
        raise ExportError(
            f"opset={requested} is too low: fxquant exports through torch.onnx, which writes "
            f"opset >= {MIN_OPSET}; pass opset=None (or {MIN_OPSET}..{top})"
        )
    return requested


def _check_keep_float(report: PrepareReport, keep_float: tuple[str, ...]) -> None:
    names = list(report.ops)
    for k in keep_float:
        if not isinstance(k, str):
            raise ExportError(f"keep_float entries are op names (str), got {k!r}")
        if not any(_matches(n, (k,)) for n in names):
            close = difflib.get_close_matches(k, names, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ExportError(f"keep_float: no op named {k!r} in the prepared model{hint}")


def _dtype_opsets(fqs: dict[str, nn.Module], max_bits: int) -> dict[str, tuple[int, str]]:
    needs: dict[str, tuple[int, str]] = {}
    for path, fq in fqs.items():
        if not isinstance(fq, FakeQuantize) or fq.dtype.bits > max_bits:
            continue  # written as float arithmetic / fake-quantized float constants
        need = opset_for_qdtype(fq.dtype)
        if need is None:
            raise ExportError(
                f"quantizer {path!r} uses {fq.dtype!r}, which ONNX QuantizeLinear cannot express "
                "(it has int4 / uint4 / int8 / uint8 / int16 / uint16); use a dtype of at most "
                "16 bits, or keep that op in float with keep_float=(...)"
            )
        needs[path] = (need, repr(fq.dtype))
    return needs
