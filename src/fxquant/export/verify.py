"""``verify``: run an exported model in a real runtime and compare it with fxquant's simulation.

Differences are counted in *quantization steps* of the quantizer whose grid a tensor lies on:
``round((runtime - simulation) / scale)``; 0 means the same integer code.  Besides the model
outputs, every quantized activation (the ``<tensor>_dequantized`` values of the QDQ graph, made
extra graph outputs in a temporary copy) is compared with what the simulation's quantizer
produced (captured with forward hooks).  The report also says which ops the runtime really runs
in integer arithmetic: ONNX Runtime's optimized graph (``optimized_model_filepath``) or
OpenVINO's runtime model (each layer's runtime precision).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.metadata
import os
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..backends import RUNTIME_KERNELS
from ..errors import bounded, bounded_list
from ..fake_quant import FakeQuantize, FakeQuantState
from ..graph.report import get_report
from ..graph.simulation import float_simulation, runtime_simulation
from .litert import LiteRTSession, tflite_op_counts
from .naming import dq_output, quantized_tensor_name
from .onnx_export import _eval_mode, frozen_quantizers, quantizer_index
from .ort_fusion import ORT_INTEGER_OPS, fused_kernels, kernel_mismatches

__all__ = ["TensorDiff", "VerifyReport", "verify", "RUNTIMES", "HIST_CLIP", "FLOAT_RTOL",
           "KernelMismatchWarning"]

RUNTIMES = ("onnxruntime", "openvino", "litert")
HIST_CLIP = 5
"""Histogram bins beyond +-HIST_CLIP steps are merged into +-HIST_CLIP."""
FLOAT_RTOL = 1e-5
"""A float (unquantized) output element counts as identical within this fraction of the
output's largest magnitude."""

_QDQ = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
_MOVEMENT = frozenset({
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Slice",
    "Split", "Concat", "Gather", "Constant", "Cast", "Expand", "Tile", "MaxPool",
    "GlobalMaxPool", "ReorderInput", "ReorderOutput", "DepthToSpace", "SpaceToDepth", "Resize",
    "Parameter", "Result", "Const", "Input", "Output", "Reorder", "Convert", "StridedSlice",
    "Concatenation", "ShapeOf", "Broadcast",
})
_OV_QUANT = frozenset({"FakeQuantize"})
_OV_INT = ("i8", "u8", "i4", "u4", "i16", "u16")


class KernelMismatchWarning(UserWarning):
    """The runtime fused other ops than the backend profile's kernel table says (the simulation
    then computes a different kernel than the runtime at those tensors)."""


@dataclass(frozen=True)
class TensorDiff:
    """Runtime vs simulation for one tensor.

    Attributes:
        name: ONNX tensor name (a graph output, or ``<tensor>_dequantized``).
        quantizer: module path of the quantizer whose grid the tensor lies on (None: float).
        shape: shape of the compared tensor.
        step: that quantizer's scale (the largest one when per channel); None when float.
        max_abs_diff: ``max |runtime - simulation|``.
        max_step_diff: ``max |diff| / step`` rounded (None when float).
        identical: fraction of elements with the same code (0 steps); for a float tensor, the
            fraction within ``FLOAT_RTOL`` of the tensor's largest magnitude.
        histogram: step difference (clipped to +-HIST_CLIP) -> number of elements.
        float32_identical: fraction of elements on which the float32 fake-quant model agrees
            with the reference (outputs only).  Deep models amplify rounding noise into 1-step
            flips: this says how far the plain float32 evaluation of the same simulation is
            from the reference the runtime was compared with.
    """

    name: str
    quantizer: str | None
    shape: tuple[int, ...]
    step: float | None
    max_abs_diff: float
    max_step_diff: int | None
    identical: float
    histogram: dict[int, int] = field(default_factory=dict)
    float32_identical: float | None = None

    def ok(self, max_steps: int = 2, min_identical: float = 0.99) -> bool:
        """Within ``max_steps`` everywhere (quantized tensors) and identical on at least
        ``min_identical`` of the elements."""
        if self.max_step_diff is not None and self.max_step_diff > max_steps:
            return False
        return self.identical >= min_identical - 1e-12


@dataclass(frozen=True)
class VerifyReport:
    """Result of :func:`verify`; ``str(report)`` is a table.

    Attributes:
        runtime: ``onnxruntime`` or ``openvino``.
        outputs: one :class:`TensorDiff` per model output.
        tensors: one per quantized activation found in the graph (``tensors=True``).
        integer_ops: op / layer type -> count of those the runtime runs in integer arithmetic
            (ORT: QLinearConv, QLinearAdd, QGemm, ...; OpenVINO: layers with an integer
            runtime precision).
        float_ops: compute op / layer types still running in float (Q/DQ and pure data
            movement such as Reshape / Transpose / MaxPool are not counted).
        reference: how the simulation was evaluated (see :func:`verify`'s ``reference``).
        emulated: with ``reference="runtime"``: kernel -> number of ops the simulation computed
            with the runtime's integer arithmetic; ``not_emulated``: op -> why an op the
            runtime might fuse ran as float ops in the simulation.
        runtime_version: version of the runtime that ran the file (``onnxruntime 1.32.0``).
        kernel_mismatch: tensor -> how the kernels the simulation computes differ from the
            ones ONNX Runtime fused (read from its optimized graph); empty when they agree.
            Also reported as a :class:`KernelMismatchWarning`.
    """

    runtime: str
    outputs: tuple[TensorDiff, ...]
    tensors: tuple[TensorDiff, ...]
    integer_ops: dict[str, int]
    float_ops: dict[str, int]
    reference: str = "exact"
    emulated: dict[str, int] = field(default_factory=dict)
    not_emulated: dict[str, str] = field(default_factory=dict)
    runtime_version: str = ""
    kernel_mismatch: dict[str, str] = field(default_factory=dict)

    def ok(self, max_steps: int = 2, min_identical: float = 0.99) -> bool:
        """Every output passes :meth:`TensorDiff.ok`."""
        return all(d.ok(max_steps, min_identical) for d in self.outputs)

    def __str__(self) -> str:
        head = ("tensor", "quantizer", "shape", "step", "max|diff|", "max steps", "identical",
                "f32 sim", "histogram (steps: count)")
        rows = []
        for kind, diffs in (("output", self.outputs), ("tensor", self.tensors)):
            for d in diffs:
                hist = " ".join(f"{k:+d}:{v}" for k, v in sorted(d.histogram.items()))
                rows.append((
                    f"[{kind}] {d.name}", d.quantizer or "-", "x".join(map(str, d.shape)),
                    f"{d.step:.4g}" if d.step is not None else "-", f"{d.max_abs_diff:.4g}",
                    str(d.max_step_diff) if d.max_step_diff is not None else "-",
                    f"{100 * d.identical:.2f}%",
                    "-" if d.float32_identical is None else f"{100 * d.float32_identical:.2f}%",
                    hist,
                ))
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

        def line(r):
            return "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()

        ops = ", ".join(f"{k} x{v}" for k, v in sorted(self.integer_ops.items())) or "none"
        flo = ", ".join(f"{k} x{v}" for k, v in sorted(self.float_ops.items())) or "none"
        ref = self.reference
        if self.emulated or self.not_emulated:
            emu = ", ".join(f"{k} x{v}" for k, v in sorted(self.emulated.items())) or "none"
            ref += f" (runtime arithmetic emulated for {emu}"
            ref += f"; {len(self.not_emulated)} fused op(s) not emulated)" \
                if self.not_emulated else ")"
        mismatch = [f"kernel mismatch: {t}: {why}" for t, why in self.kernel_mismatch.items()]
        return "\n".join([
            f"fxquant verify ({self.runtime}): {len(self.outputs)} output(s), "
            f"{len(self.tensors)} quantized tensor(s) compared with the simulation "
            f"[reference: {ref}]",
            line(head), line(tuple("-" * w for w in widths)), *map(line, rows),
            f"integer ops: {ops}", f"float ops:   {flo}", *mismatch,
            f"runtime: {self.runtime_version or self.runtime}",
        ])


def _as_inputs(inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(inputs, tuple):
        return inputs
    if isinstance(inputs, list):
        return tuple(inputs)
    return (inputs,)


def _flatten_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten_outputs(o)]
    raise TypeError(f"model output of type {type(out).__name__} is not supported")


def _output_quantizers(gm: nn.Module) -> list[str | None]:
    """For each model output: the quantizer whose grid it lies on (through pure data moves)."""
    if not isinstance(gm, fx.GraphModule):
        return []
    from ..graph.patterns import classify_function, classify_method, classify_module
    from ..qconfig import OpKind

    def grid_of(n: Any) -> str | None:
        while isinstance(n, fx.Node):
            if n.op == "call_module":
                mod = gm.get_submodule(n.target)
                if isinstance(mod, FakeQuantize):
                    return str(n.target)
                kind = classify_module(mod)
            elif n.op == "call_function":
                kind = classify_function(n)
            elif n.op == "call_method":
                kind = classify_method(n)
            else:
                return None
            ins = n.all_input_nodes
            if kind is not OpKind.SHARE or len(ins) != 1:
                return None
            n = ins[0]
        return None

    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    res = out_node.args[0]
    items = list(res) if isinstance(res, (tuple, list)) else [res]
    return [grid_of(i) for i in items]


def _diff(name: str, rt: np.ndarray, sim: torch.Tensor, fq: FakeQuantize | None,
          path: str | None) -> TensorDiff:
    sim_np = sim.detach().cpu().float().numpy()
    rt = np.asarray(rt, dtype=np.float32)
    if rt.shape != sim_np.shape:
        raise ValueError(f"{name}: runtime shape {rt.shape} != simulation shape {sim_np.shape}")
    diff = rt.astype(np.float64) - sim_np.astype(np.float64)
    max_abs = float(np.abs(diff).max()) if diff.size else 0.0
    if fq is None:  # float tensor: "identical" up to float32 noise
        tol = FLOAT_RTOL * float(np.abs(sim_np).max()) if sim_np.size else 0.0
        ident = float((np.abs(diff) <= tol).mean()) if diff.size else 1.0
        return TensorDiff(name, None, tuple(rt.shape), None, max_abs, None, ident, {})
    scale = fq.scale.detach().double().cpu().numpy()
    if scale.ndim == 1 and fq.ch_axis is not None and rt.ndim:
        shape = [1] * rt.ndim
        shape[fq.ch_axis % rt.ndim] = -1
        scale = scale.reshape(shape)
    ratio = diff / scale
    finite = np.isfinite(ratio)  # a runtime NaN / Inf is as far off as it gets
    steps = np.where(finite, np.rint(np.where(finite, ratio, 0.0)), 0).astype(np.int64)
    steps[~finite] = np.iinfo(np.int64).max
    hist = Counter(np.clip(steps, -HIST_CLIP, HIST_CLIP).ravel().tolist())
    return TensorDiff(
        name, path, tuple(rt.shape), float(np.max(scale)), max_abs,
        int(np.abs(steps).max()) if steps.size else 0,
        float((steps == 0).mean()) if steps.size else 1.0,
        dict(sorted(hist.items())),
    )


def verify(
    qmodel: nn.Module,
    onnx_path: str | os.PathLike[str],
    inputs: Any,
    runtime: str = "onnxruntime",
    *,
    tensors: bool = True,
    num_threads: int | None = None,
    integer_kernels: bool = True,
    reference: str = "auto",
) -> VerifyReport:
    """Run ``onnx_path`` in ``runtime`` and compare with ``qmodel``'s simulation on ``inputs``.

    Args:
        qmodel: the prepared model the file was exported from; run in eval mode with its
            quantizers as they are (QAT-state quantizers are held frozen, nothing is observed).
        onnx_path: a file written by :func:`fxquant.export.export_onnx`.
        inputs: a tensor or a tuple of positional inputs (one batch).
        runtime: ``"onnxruntime"`` (CPU) or ``"openvino"`` (CPU, fp32 inference precision).
        tensors: also compare every quantized activation (runs a second, instrumented copy).
        num_threads: runtime threads (default: ``torch.get_num_threads()``).
        integer_kernels: ``False`` runs ONNX Runtime with its QDQ fusions off
            (``session.disable_quant_qdq``): every op between DequantizeLinear and
            QuantizeLinear runs in float, i.e. the graph's reference semantics.  Tells a
            difference of the graph from a difference of the runtime's integer kernels.
            (OpenVINO has no such switch.)
        reference: how the simulation is evaluated.  Every choice runs the same quantizers,
            scales and weight codes; they differ in arithmetic only:

            * ``"runtime"`` (ONNX Runtime): the model in eval mode with the runtime's integer
              arithmetic (:mod:`fxquant.graph.simulation`) -- exact int32 accumulation, the
              int32 bias, float32 requantization and each fused kernel's own rounding -- at
              every op the runtime's fused-kernel table names (the profile's, or
              :data:`fxquant.backends.RUNTIME_KERNELS` for a model prepared for another
              target); where the table and ORT's optimized graph disagree the report lists it
              (``kernel_mismatch``) and a :class:`KernelMismatchWarning` is issued.
              Differences left are the runtime's float ops (LayerNorm, GELU ...);
              ``"integer"`` is the former name of this reference;
            * ``"exact"``: the float simulation in float64 (exact sums of the integer-valued
              products; requantization without float32 rounding);
            * ``"float32"``: the float simulation (:attr:`fxquant.Simulation.FLOAT`);
            * ``"auto"`` (default): ``"runtime"`` for ONNX Runtime with integer kernels, else
              ``"exact"``.

            ``TensorDiff.float32_identical`` says how often the float32 float simulation
            agrees with the chosen reference.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "litert":
        return _verify_litert(qmodel, onnx_path, inputs, tensors=tensors, reference=reference,
                              num_threads=num_threads)
    if not integer_kernels and runtime != "onnxruntime":
        raise ValueError("integer_kernels=False is supported with runtime='onnxruntime' only")
    if reference not in ("auto", "runtime", "integer", "exact", "float32"):
        raise ValueError(
            "reference must be 'auto', 'runtime', 'exact' or 'float32', got "
            f"{bounded(repr(reference))}"
        )
    reference = "runtime" if reference == "integer" else reference
    if reference == "runtime" and (runtime not in RUNTIME_KERNELS or not integer_kernels):
        raise ValueError("reference='runtime' computes a runtime's integer kernels; fxquant "
                         f"reproduces {sorted(RUNTIME_KERNELS)}' (with integer_kernels=True)")
    if reference == "auto":
        reference = "runtime" if runtime in RUNTIME_KERNELS and integer_kernels else "exact"
    import onnx

    onnx_path = os.fspath(onnx_path)
    model = onnx.load(onnx_path)
    report = get_report(qmodel)
    produced = {o for n in model.graph.node for o in n.output}
    watch: dict[str, tuple[str, FakeQuantize]] = {}  # dq tensor -> (quantizer path, module)
    for path, (op, role) in quantizer_index(report).items():
        if role == "weight":
            continue
        dq = dq_output(quantized_tensor_name(op, role))
        fq = qmodel.get_submodule(path)
        if dq in produced and isinstance(fq, FakeQuantize):
            watch[dq] = (path, fq)
    args = _as_inputs(inputs)
    feeds = [a.detach().cpu().numpy() for a in args if isinstance(a, torch.Tensor)]
    threads = num_threads or torch.get_num_threads()
    extra = list(watch) if tensors else []
    fused: dict[str, str] = {}
    if runtime == "onnxruntime":
        rt_out, rt_extra, int_ops, float_ops, fused = _run_ort(
            model, onnx_path, feeds, extra, threads, integer_kernels
        )
        version = f"onnxruntime {_version('onnxruntime')}"
    else:
        rt_out, rt_extra, int_ops, float_ops = _run_openvino(
            model, onnx_path, feeds, extra, threads
        )
        version = f"openvino {_version('openvino')}"
    emulated: dict[str, int] = {}
    not_emulated: dict[str, str] = {}
    mismatch: dict[str, str] = {}
    ref_model: nn.Module = qmodel
    float_ref = True
    if reference == "runtime":
        module, plan = runtime_simulation(qmodel, runtime)
        emulated = dict(sorted(Counter(plan.kernels.values()).items()))
        not_emulated = dict(plan.skipped)
        mismatch = kernel_mismatches(plan.kernels, fused)
        if mismatch:
            warnings.warn(
                f"the simulation's fused kernels differ from what {runtime} fused at "
                f"{len(mismatch)} tensor(s): {bounded_list(mismatch.items())}",
                KernelMismatchWarning, stacklevel=2,
            )
        if module is not None:
            ref_model, float_ref = module, False
    elif reference == "exact":
        ref_model = copy.deepcopy(qmodel).double()
    captured: dict[str, torch.Tensor] = {}
    ref_watch = {dq: (path, ref_model.get_submodule(path)) for dq, (path, _) in watch.items()}
    sim_out = _simulate(ref_model, args, ref_watch if tensors else {}, captured, float_ref)
    sim32 = _simulate(qmodel, args, {}, {}, True) if reference != "float32" else None
    out_q = _output_quantizers(qmodel)
    out_names = [o.name for o in model.graph.output]
    outputs = []
    for i, (name, rt, sim) in enumerate(zip(out_names, rt_out, sim_out, strict=False)):
        path = out_q[i] if i < len(out_q) else None
        fq = qmodel.get_submodule(path) if path else None
        d = _diff(name, rt, sim, fq, path)
        if sim32 is not None and i < len(sim32) and fq is not None:
            agree = _diff(name, sim32[i].double().numpy(), sim, fq, path).identical
            d = dataclasses.replace(d, float32_identical=agree)
        outputs.append(d)
    tensor_diffs = [
        _diff(dq, rt_extra[dq], captured[dq], watch[dq][1], watch[dq][0])
        for dq in extra if dq in rt_extra and dq in captured
    ]
    return VerifyReport(runtime, tuple(outputs), tuple(tensor_diffs), int_ops, float_ops,
                        reference, emulated, not_emulated, version, mismatch)


def _verify_litert(qmodel: nn.Module, path: str | os.PathLike[str], inputs: Any, *,
                   tensors: bool, reference: str, num_threads: int | None) -> VerifyReport:
    """:func:`verify` for a TFLite file (:func:`fxquant.export_tflite`) in LiteRT.

    Outputs come from LiteRT's default CPU path (the XNNPACK delegate); the quantized tensors
    inside from a second run on LiteRT's builtin kernels with every tensor kept (a delegate's
    intermediate tensors are not readable).  ``reference="auto"`` / ``"runtime"``: the model's
    eval mode with LiteRT's arithmetic (:data:`fxquant.backends.LITERT_KERNELS`).
    """
    if reference not in ("auto", "runtime", "integer", "exact", "float32"):
        raise ValueError(f"reference must be 'auto', 'runtime', 'exact' or 'float32', got "
                         f"{bounded(repr(reference))}")
    reference = "runtime" if reference in ("auto", "integer") else reference
    threads = num_threads or torch.get_num_threads()
    args = _as_inputs(inputs)
    session = LiteRTSession(path, kernels="xnnpack", threads=threads)
    rt_out = [t.numpy() for t in session.run(args)]
    meta = session.meta
    int_ops, float_ops = tflite_op_counts(session.data)
    ref_model: nn.Module = qmodel
    float_ref = True
    emulated: dict[str, int] = {}
    not_emulated: dict[str, str] = {}
    if reference == "runtime":
        module, plan = runtime_simulation(qmodel, "litert")
        emulated = dict(sorted(Counter(plan.kernels.values()).items()))
        not_emulated = dict(plan.skipped)
        if module is not None:
            ref_model, float_ref = module, False
    elif reference == "exact":
        ref_model = copy.deepcopy(qmodel).double()
    entries = meta.get("tensors", []) if tensors else []
    watch = {e["tensor"]: (e["quantizer"], ref_model.get_submodule(e["quantizer"]))
             for e in entries}
    captured: dict[str, torch.Tensor] = {}
    sim_out = _simulate(ref_model, args, watch, captured, float_ref)
    sim32 = _simulate(qmodel, args, {}, {}, True) if reference != "float32" else None
    out_q = _output_quantizers(qmodel)
    outputs = []
    names = [o.get("name", f"output_{i}") for i, o in enumerate(meta.get("outputs", []))]
    for i, (rt, sim) in enumerate(zip(rt_out, sim_out, strict=False)):
        qpath = out_q[i] if i < len(out_q) else None
        fq = qmodel.get_submodule(qpath) if qpath else None
        name = names[i] if i < len(names) else f"output_{i}"
        d = _diff(name, rt, sim, fq, qpath)
        if sim32 is not None and i < len(sim32) and fq is not None:
            agree = _diff(name, sim32[i].double().numpy(), sim, fq, qpath).identical
            d = dataclasses.replace(d, float32_identical=agree)
        outputs.append(d)
    tensor_diffs = []
    if entries:
        inner = LiteRTSession(path, kernels="builtin", threads=threads,
                              preserve_all_tensors=True)
        inner.run(args)
        values = inner.tensors()
        for e in entries:
            t = values.get(e["tensor"])
            if t is None or not t.quantized or e["tensor"] not in captured:
                continue
            perm = e["perm"]
            inv = [perm.index(i) for i in range(len(perm))]
            real = (t.value.astype(np.float64) - float(t.zero_point[0])) * float(t.scale[0])
            rt = np.transpose(real, inv) if len(perm) == real.ndim else real
            tensor_diffs.append(_diff(e["tensor"], rt, captured[e["tensor"]], watch[e["tensor"]][1],
                                      e["quantizer"]))
    version = f"ai-edge-litert {_version('ai-edge-litert')} (XNNPACK outputs, builtin tensors)"
    return VerifyReport("litert", tuple(outputs), tuple(tensor_diffs), int_ops, float_ops,
                        reference, emulated, not_emulated, version, {})


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _simulate(qmodel: nn.Module, args: tuple[Any, ...], watch: dict[str, Any],
              captured: dict[str, torch.Tensor], float_sim: bool) -> list[torch.Tensor]:
    """Run ``qmodel`` (eval, QAT quantizers held frozen; the float simulation if ``float_sim``);
    capture ``watch`` quantizers."""
    params = [p for p in qmodel.parameters()] + [b for b in qmodel.buffers()]
    dtype = next((t.dtype for t in params if t.is_floating_point()), torch.float32)
    args = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args)
    hooks = []
    for dq, (_path, fq) in watch.items():
        def hook(_m, _i, out, _dq=dq):
            captured[_dq] = out.detach().clone()
        hooks.append(fq.register_forward_hook(hook))
    try:
        mode = float_simulation() if float_sim else contextlib.nullcontext()
        with torch.no_grad(), _eval_mode(qmodel), mode, frozen_quantizers(
            qmodel, {FakeQuantState.QAT: FakeQuantState.VALIDATION}
        ):
            return _flatten_outputs(qmodel(*args))
    finally:
        for h in hooks:
            h.remove()


def _with_outputs(model, names: list[str]):
    import onnx
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    return m


def _run_ort(model, path: str, feeds: list[np.ndarray], extra: list[str], threads: int,
             integer_kernels: bool = True):
    import onnx
    import onnxruntime as ort

    def options(opt_path: str | None = None):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if not integer_kernels:
            so.add_session_config_entry("session.disable_quant_qdq", "1")
        if opt_path:
            so.optimized_model_filepath = opt_path
        return so

    with tempfile.TemporaryDirectory(prefix="fxquant_verify_") as tmp:
        opt = os.path.join(tmp, "optimized.onnx")
        sess = ort.InferenceSession(path, options(opt), providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        outs = sess.run(None, dict(zip(names, feeds, strict=True)))
        optimized = onnx.load(opt).graph.node
        counts = Counter(n.op_type for n in optimized)
        fused = fused_kernels(optimized, model)
        rt_extra: dict[str, np.ndarray] = {}
        if extra:
            aug = os.path.join(tmp, "instrumented.onnx")
            onnx.save(_with_outputs(model, extra), aug)
            s2 = ort.InferenceSession(aug, options(), providers=["CPUExecutionProvider"])
            res = s2.run(extra, dict(zip(names, feeds, strict=True)))
            rt_extra = dict(zip(extra, res, strict=True))
    integer = {k: v for k, v in counts.items() if k in ORT_INTEGER_OPS}
    flt = {k: v for k, v in counts.items()
           if k not in ORT_INTEGER_OPS and k not in _QDQ and k not in _MOVEMENT}
    return outs, rt_extra, dict(sorted(integer.items())), dict(sorted(flt.items())), fused


def _rt(info: Any, key: str) -> str:
    """One runtime-info entry of an OpenVINO runtime-model node as a string ("" if absent)."""
    try:
        v = info[key]
    except (KeyError, RuntimeError, IndexError):
        return ""
    try:
        return str(v.astype(str))
    except (RuntimeError, TypeError, AttributeError):
        return str(v)


def _run_openvino(model, path: str, feeds: list[np.ndarray], extra: list[str], threads: int):
    import onnx
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}

    def run(m) -> tuple[Any, list[np.ndarray]]:
        compiled = core.compile_model(m, "CPU", config)
        req = compiled.create_infer_request()
        req.infer({i: f for i, f in enumerate(feeds)})
        return compiled, [req.get_output_tensor(i).data.copy()
                          for i in range(len(compiled.outputs))]

    compiled, outs = run(core.read_model(path))
    integer: Counter[str] = Counter()
    flt: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = _rt(info, "layerType") or op.get_type_name()
        prec = _rt(info, "runtimePrecision").lower()
        if layer in _MOVEMENT or layer in _OV_QUANT:
            continue
        if any(prec.startswith(p) for p in _OV_INT):
            integer[layer] += 1
        else:
            flt[layer] += 1
    rt_extra: dict[str, np.ndarray] = {}
    if extra:
        with tempfile.TemporaryDirectory(prefix="fxquant_verify_") as tmp:
            aug = os.path.join(tmp, "instrumented.onnx")
            onnx.save(_with_outputs(model, extra), aug)
            c2, res = run(core.read_model(aug))
            names = [next(iter(o.get_names())) if o.get_names() else "" for o in c2.outputs]
            by_name = dict(zip(names, res, strict=True))
            rt_extra = {e: by_name[e] for e in extra if e in by_name}
    return outs, rt_extra, dict(sorted(integer.items())), dict(sorted(flt.items()))
