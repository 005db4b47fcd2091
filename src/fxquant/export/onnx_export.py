"""``export_onnx``: a prepared model -> an ONNX QDQ model, written by fxquant's own emitter.

The prepared ``GraphModule`` is walked node by node (no ``torch.onnx.export``):

* every op becomes the ONNX nodes its emitter in :mod:`fxquant.export.onnx_ops` writes; its
  output tensor is named after the op (:mod:`fxquant.export.naming` is the naming contract);
* a fake-quantizer call becomes ``QuantizeLinear -> DequantizeLinear`` with the quantizer's exact
  scale / zero point (1-D scale + ``axis`` per channel);
* weights become integer initializers (quantized with :func:`fxquant.numerics.quantize` and the
  quantizer's scale math) + ``DequantizeLinear``; conv / linear biases become int32 initializers
  with scale ``input_scale * weight_scale`` for runtimes that fuse them into integer kernels
  (:mod:`fxquant.export.bias`);
* ops that only move values (reshape, transpose, max pool ...) of a quantized tensor get a
  ``Q -> DQ`` pair with the same parameters after them: the layout ONNX Runtime turns into
  integer data movement, and the one TensorRT wants right before a weighted op.

The opset is the lowest one the quantized dtypes need (13 for 8-bit, 21 for 16-bit / 4-bit),
raised to 17 when the model has a LayerNorm (``LayerNormalization``).  The file is checked with
``onnx.checker.check_model(full_check=True)`` and written atomically.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import ExportError
from ..fake_quant import FakeQuantize, FakeQuantState
from ..graph.meta import op_name
from ..graph.patterns import classify_function, classify_method, classify_module
from ..graph.report import PrepareReport, get_report
from ..qconfig import OpKind
from .atomic import check_writable, write_bytes_atomic

__all__ = [
    "ExportError",
    "ExportWarning",
    "ExportResult",
    "export_onnx",
    "quantizer_index",
    "frozen_quantizers",
]

MIN_OPSET = 13
"""Per-axis (per-channel) QuantizeLinear / DequantizeLinear need opset 13."""

"""Backend profiles whose runtimes fuse ``DQ(int32 bias)`` into integer conv / gemm kernels."""

_PREFERRED_OPSET = {nn.LayerNorm: 17, torch.nn.functional.layer_norm: 17}


class ExportWarning(UserWarning):
    """The exported model differs from the simulation in a way the user should know about."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: absolute path of the ONNX file.
        opset: ONNX opset of the default domain.
        input_names / output_names: graph inputs / outputs in positional order.
        tensor_names: quantizer module path -> the ONNX tensor it quantizes (the float tensor
            before ``QuantizeLinear``; for weights the output of the weight's
            ``DequantizeLinear``), per :mod:`fxquant.export.naming`.
        warnings: everything that made the export differ from the simulation.
        quantized: False for a ``quantize=False`` (float) export.
    """

    path: str
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    tensor_names: dict[str, str]
    warnings: tuple[str, ...] = ()
    quantized: bool = True


@dataclass(frozen=True)
class _Meta:
    shape: tuple[int, ...]
    dtype: torch.dtype


def quantizer_index(report: PrepareReport) -> dict[str, tuple[str, str]]:
    """Quantizer module path -> (op name, role); a shared quantizer keeps its first op."""
    index: dict[str, tuple[str, str]] = {}
    for rec in report.ops.values():
        for role, path in rec.quantizers.items():
            index.setdefault(path, (rec.name, role))
    return index


@contextlib.contextmanager
def frozen_quantizers(model: nn.Module, mapping: dict[FakeQuantState, FakeQuantState]):
    """Temporarily switch quantizer states *without* recomputing scales; restore afterwards.

    Unlike :func:`fxquant.fake_quantize_state` nothing is observed or updated: e.g.
    ``{QAT: VALIDATION}`` runs a QAT-state model with its scales exactly as they are.
    """
    saved = []
    for m in model.modules():
        if isinstance(m, FakeQuantize):
            saved.append((m, m.state))
            new = mapping.get(m.state)
            if new is not None:
                m.set_state_code(new)
    try:
        yield model
    finally:
        for m, code in saved:
            m.set_state_code(code)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t


def _active(fq: FakeQuantize | None) -> bool:
    return fq is not None and fq.state is not FakeQuantState.FLOAT


def _record_values(gm: fx.GraphModule, inputs: tuple[Any, ...], keep: set[fx.Node]):
    """Run ``gm`` once in float; shapes of every tensor, Python values, and the tensors of
    nodes without a graph-input ancestor (foldable constants) or listed in ``keep``."""
    dynamic: set[fx.Node] = set()
    for n in gm.graph.nodes:
        if n.op == "placeholder" or any(a in dynamic for a in n.all_input_nodes):
            dynamic.add(n)
    record: dict[fx.Node, Any] = {}

    def meta(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return _Meta(tuple(v.shape), v.dtype)
        if isinstance(v, (tuple, list)) and any(isinstance(t, torch.Tensor) for t in v):
            return tuple(meta(t) for t in v)
        return v

    class _Rec(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if isinstance(out, torch.Tensor) and (n not in dynamic or n in keep):
                record[n] = out.detach()
            elif n in keep:
                record[n] = out
            else:
                record[n] = meta(out)
            return out

    float_state = {s: FakeQuantState.FLOAT for s in FakeQuantState}
    with torch.no_grad(), _eval_mode(gm), frozen_quantizers(gm, float_state):
        _Rec(gm).run(*inputs)
    return record


def _shape_of(v: Any) -> tuple[int, ...] | None:
    if isinstance(v, torch.Tensor):
        return tuple(v.shape)
    if isinstance(v, _Meta):
        return v.shape
    return None


def _dtype_of(v: Any) -> torch.dtype | None:
    if isinstance(v, (torch.Tensor, _Meta)):
        return v.dtype
    return None


def _is_tensorish(v: Any) -> bool:
    if isinstance(v, (torch.Tensor, _Meta)):
        return True
    return isinstance(v, tuple) and any(isinstance(t, (torch.Tensor, _Meta)) for t in v)


def _node_kind(gm: fx.GraphModule, node: fx.Node) -> OpKind:
    if node.op == "call_module":
        return classify_module(gm.get_submodule(node.target))
    if node.op == "call_function":
        return classify_function(node)
    if node.op == "call_method":
        return classify_method(node)
    return OpKind.FLOAT


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in patterns)


def _choose_opset(
    requested: int | None, needs: dict[str, tuple[int, str]], preferred: int
) -> int:
    import onnx

    top = onnx.defs.onnx_opset_version()
    need_path, (need, what) = max(needs.items(), key=lambda kv: kv[1][0], default=("", (0, "")))
    if requested is None:
        return max(MIN_OPSET, need, preferred)
    if not isinstance(requested, int) or requested < MIN_OPSET or requested > top:
        raise ExportError(
            f"opset={requested!r} is not supported: fxquant exports opset {MIN_OPSET}..{top} "
            "(per-channel QuantizeLinear needs opset 13)"
        )
    if requested < need:
        raise ExportError(
            f"opset={requested} is too low: quantizer {need_path!r} ({what}) needs opset >= "
            f"{need} (QuantizeLinear supports int16 / uint16 / int4 / uint4 from opset 21); "
            "pass opset=None to choose automatically"
        )
    return requested


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
) -> ExportResult:
    """Write ``qmodel`` (from :func:`fxquant.prepare`, calibrated) as an ONNX QDQ model.

    Args:
        qmodel: a prepared model captured with torch.fx (not an eager-captured one).
        example_inputs: a tensor or a tuple of positional inputs (one batch).
        path: the ``.onnx`` file to write (atomically; the folder must exist).
        opset: ONNX opset; ``None`` picks the lowest the quantized dtypes need (>= 13, 17 with
            LayerNorm, 21 for 16-bit / 4-bit).  Too low for a dtype -> :class:`ExportError`.
        dynamic_batch: make the first dimension of inputs and outputs symbolic (``batch``).
        quantize: ``False`` writes the float model with the same tensor names (for a float ONNX
            plus an encodings file).
        keep_float: op names (or module-path prefixes) to export in float: their weights and
            output quantizers are dropped, and ops without an emitter (or float islands) are
            exported through ``torch.onnx.export`` as a float subgraph.
        int32_bias: int32 biases (scale ``input_scale * weight_scale``); ``None``: for the
            profiles whose ``BackendProfile.int32_bias`` is set (ONNX Runtime, x86 / fbgemm /
            qnnpack).

    Returns:
        :class:`ExportResult`.

    Raises:
        ExportError: uncalibrated quantizer, op without an emitter, float island, dtype the
            opset cannot express, unwritable path (the message names the op / quantizer).
    """
    try:
        report = get_report(qmodel)
    except TypeError as err:
        raise ExportError(str(err)) from None
    if report.capture_mode != "fx" or not isinstance(qmodel, fx.GraphModule):
        raise ExportError(
            "export_onnx needs a model whose forward fxquant captured with torch.fx; this one "
            f"was captured eagerly because its forward could not be traced ({report.root_failure}"
            "). Make the forward traceable (or move the untraceable part into a submodule)"
        )
    try:
        path = check_writable(path)
    except OSError as err:
        raise ExportError(f"cannot write the ONNX file: {err}") from err
    from .onnx_writer import OnnxWriter

    inputs = example_inputs if isinstance(example_inputs, tuple) else (
        tuple(example_inputs) if isinstance(example_inputs, list) else (example_inputs,)
    )
    keep_float = tuple(keep_float)
    _check_keep_float(report, keep_float)
    if int32_bias is None:
        int32_bias = report.profile.int32_bias
    fqs = _used_quantizers(qmodel, report, keep_float)
    if quantize:
        _check_calibrated(fqs)
    needs = _dtype_opsets(fqs) if quantize else {}
    preferred = max(
        (
            _PREFERRED_OPSET.get(
                type(qmodel.get_submodule(n.target)) if n.op == "call_module" else n.target, 0
            )
            for n in qmodel.graph.nodes
            if n.op in ("call_module", "call_function")
        ),
        default=0,
    )
    chosen = _choose_opset(opset, needs, preferred)
    keep_nodes = {
        a
        for n in qmodel.graph.nodes
        if op_name(n) is not None and _matches(op_name(n), keep_float)
        for a in n.all_input_nodes
    }
    values = _record_values(qmodel, inputs, keep_nodes)
    writer = OnnxWriter(
        qmodel,
        report,
        values,
        opset=chosen,
        dynamic_batch=dynamic_batch,
        quantize=quantize,
        keep_float=keep_float,
        int32_bias=int32_bias,
        max_qdq_bits=report.profile.max_qdq_bits,
    )
    model = writer.build()
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:  # a bug in an emitter: say which model part failed
        raise ExportError(f"the exported graph does not pass onnx.checker: {err}") from err
    data = model.SerializeToString()
    try:
        write_bytes_atomic(path, data)
    except OSError as err:
        raise ExportError(f"cannot write the ONNX file {path!r}: {err}") from err
    for msg in writer.warnings:
        warnings.warn(msg, ExportWarning, stacklevel=2)
    return ExportResult(
        path=path,
        opset=chosen,
        input_names=tuple(writer.input_names),
        output_names=tuple(writer.output_names),
        tensor_names=dict(writer.tensor_names),
        warnings=tuple(writer.warnings),
        quantized=quantize,
    )


def _check_keep_float(report: PrepareReport, keep_float: tuple[str, ...]) -> None:
    names = list(report.ops)
    for k in keep_float:
        if not isinstance(k, str):
            raise ExportError(f"keep_float entries are op names (str), got {k!r}")
        if not any(_matches(n, (k,)) for n in names):
            close = difflib.get_close_matches(k, names, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ExportError(f"keep_float: no op named {k!r} in the prepared model{hint}")


def _used_quantizers(
    gm: fx.GraphModule, report: PrepareReport, keep_float: tuple[str, ...]
) -> dict[str, FakeQuantize]:
    """Quantizers the top-level graph runs (activation calls and weighted modules' weights)."""
    index = quantizer_index(report)
    out: dict[str, FakeQuantize] = {}
    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        mod = gm.get_submodule(n.target)
        name = op_name(n)
        if isinstance(mod, FakeQuantize):
            owner = index.get(n.target, (n.target, ""))[0]
            if not _matches(owner, keep_float) and _active(mod):
                out[n.target] = mod
        elif name is not None and not _matches(name, keep_float) and n.target not in report.islands:
            wfq = getattr(mod, "weight_fake_quant", None)
            if isinstance(wfq, FakeQuantize) and _active(wfq):
                out[f"{n.target}.weight_fake_quant"] = wfq
    return out


def _check_calibrated(fqs: dict[str, FakeQuantize]) -> None:
    missing = [p for p, fq in fqs.items() if not bool(fq.calibrated)]
    if missing:
        shown = ", ".join(repr(p) for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ExportError(
            f"{len(missing)} quantizer(s) have no scale yet: {shown}. Run "
            "fxquant.calibrate(qmodel, data) (or train in FakeQuantState.QAT) before exporting, "
            "or export the float model with quantize=False"
        )


def _dtype_opsets(fqs: dict[str, FakeQuantize]) -> dict[str, tuple[int, str]]:
    from .onnx_graph import opset_for_qdtype

    needs: dict[str, tuple[int, str]] = {}
    for path, fq in fqs.items():
        need = opset_for_qdtype(fq.dtype)
        if need is None:
            raise ExportError(
                f"quantizer {path!r} uses {fq.dtype!r}, which ONNX QuantizeLinear cannot express "
                "(it has int4 / uint4 / int8 / uint8 / int16 / uint16); use a dtype of at most "
                "16 bits, or keep that op in float with keep_float=(...)"
            )
        needs[path] = (need, repr(fq.dtype))
    return needs

