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

import copy
import dataclasses
import importlib
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..fake_quant import FakeQuantize, FakeQuantState
from ..graph.report import get_report
from ..modelio import ModelInputs, as_inputs, output_tensors
from .integer_sim import integer_simulation
from .naming import dq_output, quantized_tensor_name
from .quantizers import eval_mode as _eval_mode
from .quantizers import frozen_quantizers, quantizer_index

__all__ = ["TensorDiff", "VerifyReport", "verify", "RUNTIMES", "HIST_CLIP", "FLOAT_RTOL"]

RUNTIMES = ("onnxruntime", "openvino")
HIST_CLIP = 5
"""Histogram bins beyond +-HIST_CLIP steps are merged into +-HIST_CLIP."""
FLOAT_RTOL = 1e-5
"""A float (unquantized) output element counts as identical within this fraction of the
output's largest magnitude."""

_ORT_INTEGER = frozenset({
    "QLinearConv", "NhwcQLinearConv", "QLinearConvTranspose", "QGemm", "QLinearMatMul",
    "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
    "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool",
    "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearConcat", "QLinearWhere",
    "QLinearReduceMean", "QAttention", "QEmbedLayerNormalization", "QOrderedMatMul",
})
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
        sqnr_db: ``10 log10(sum(simulation^2) / sum(diff^2))`` (inf when identical, None when
            the runtime returned NaN / Inf).
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
    sqnr_db: float | None = None

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
        runtime_version: the version of the runtime that ran the file (``onnxruntime``'s /
            ``openvino``'s ``__version__``).
        emulated: with ``reference="integer"``: kernel -> number of fused ops computed with the
            runtime's integer arithmetic; ``not_emulated``: quantized tensor -> why its fused
            op was evaluated in float64 instead.
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
        return "\n".join([
            f"fxquant verify ({self.runtime}) with {self.runtime} {self.runtime_version}: "
            f"{len(self.outputs)} output(s), "
            f"{len(self.tensors)} quantized tensor(s) compared with the simulation "
            f"[reference: {ref}]",
            line(head), line(tuple("-" * w for w in widths)), *map(line, rows),
            f"integer ops: {ops}", f"float ops:   {flo}",
        ])


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
    sqnr = _sqnr(sim_np, diff)
    if fq is None:  # float tensor: "identical" up to float32 noise
        tol = FLOAT_RTOL * float(np.abs(sim_np).max()) if sim_np.size else 0.0
        ident = float((np.abs(diff) <= tol).mean()) if diff.size else 1.0
        return TensorDiff(name, None, tuple(rt.shape), None, max_abs, None, ident, {},
                          sqnr_db=sqnr)
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
        sqnr_db=sqnr,
    )


def _sqnr(sim: np.ndarray, diff: np.ndarray) -> float | None:
    noise = float(np.square(diff).sum()) if diff.size else 0.0
    if not np.isfinite(noise):
        return None
    signal = float(np.square(sim.astype(np.float64)).sum())
    if noise == 0.0:
        return float("inf")
    return float(10 * np.log10(signal / noise)) if signal > 0 else float("-inf")


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
        inputs: one batch (:mod:`fxquant.modelio`: a tensor, a tuple of positional inputs, a
            dict of keyword inputs).
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

            * ``"integer"`` (ONNX Runtime): the ops ORT fused into integer kernels (read from
              its optimized graph) compute as those kernels do -- exact int32 accumulation,
              the int32 bias, float32 requantization
              (:func:`fxquant.export.integer_sim.integer_simulation`); everything else in
              float64.  Differences left are the runtime's float ops and kernels not
              emulated (listed in the report);
            * ``"exact"``: the simulation in float64 (exact sums of the integer-valued
              products; requantization without float32 rounding);
            * ``"float32"``: ``qmodel`` as is;
            * ``"auto"`` (default): ``"integer"`` for ONNX Runtime with integer kernels, else
              ``"exact"``.

            ``TensorDiff.float32_identical`` says how often the plain float32 model agrees
            with the chosen reference.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if not integer_kernels and runtime != "onnxruntime":
        raise ValueError("integer_kernels=False is supported with runtime='onnxruntime' only")
    if reference not in ("auto", "integer", "exact", "float32"):
        raise ValueError(
            f"reference must be 'auto', 'integer', 'exact' or 'float32', got {reference!r}"
        )
    if reference == "integer" and (runtime != "onnxruntime" or not integer_kernels):
        raise ValueError("reference='integer' emulates ONNX Runtime's integer kernels: use it "
                         "with runtime='onnxruntime' and integer_kernels=True")
    if reference == "auto":
        reference = "integer" if runtime == "onnxruntime" and integer_kernels else "exact"
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
    args = as_inputs(inputs)
    feeds = [a.detach().cpu().numpy() for a in args.tensors()]
    threads = num_threads or torch.get_num_threads()
    extra = list(watch) if tensors else []
    fused: dict[str, str] = {}
    if runtime == "onnxruntime":
        rt_out, rt_extra, int_ops, float_ops, fused = _run_ort(
            model, onnx_path, feeds, extra, threads, integer_kernels
        )
    else:
        rt_out, rt_extra, int_ops, float_ops = _run_openvino(
            model, onnx_path, feeds, extra, threads
        )
    emulated: dict[str, int] = {}
    not_emulated: dict[str, str] = {}
    if reference == "integer":
        isim = integer_simulation(qmodel, fused)
        ref_model = isim.model
        emulated = dict(sorted(Counter(isim.emulated.values()).items()))
        not_emulated = dict(isim.skipped)
    elif reference == "exact":
        ref_model = copy.deepcopy(qmodel).double()
    else:
        ref_model = qmodel
    captured: dict[str, torch.Tensor] = {}
    ref_watch = {dq: (path, ref_model.get_submodule(path)) for dq, (path, _) in watch.items()}
    sim_out = _simulate(ref_model, args, ref_watch if tensors else {}, captured)
    sim32 = _simulate(qmodel, args, {}, {}) if reference != "float32" else None
    out_q = _output_quantizers(qmodel)
    out_names = [o.name for o in model.graph.output]
    from_graph = _graph_output_quantizers(model, watch)
    outputs = []
    for i, (name, rt, sim) in enumerate(zip(out_names, rt_out, sim_out, strict=False)):
        path = out_q[i] if i < len(out_q) and out_q[i] else from_graph.get(name)
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
    version = getattr(importlib.import_module(runtime), "__version__", "")
    return VerifyReport(runtime, tuple(outputs), tuple(tensor_diffs), int_ops, float_ops,
                        reference, emulated, not_emulated, version)


def _graph_output_quantizers(model, watch: dict[str, tuple[str, Any]]) -> dict[str, str]:
    """Graph output name -> quantizer path, for outputs that are a watched ``_dequantized``
    tensor (directly or through Identity / value-moving nodes)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found = {}
    for out in model.graph.output:
        name = out.name
        for _ in range(64):
            if name in watch:
                found[out.name] = watch[name][0]
                break
            node = producer.get(name)
            if node is None or node.op_type not in _MOVEMENT or not node.input:
                break
            name = node.input[0]
    return found


def _simulate(qmodel: nn.Module, args: ModelInputs, watch: dict[str, Any],
              captured: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Run the simulation (eval, QAT quantizers held frozen); capture ``watch`` quantizers."""
    params = [p for p in qmodel.parameters()] + [b for b in qmodel.buffers()]
    dtype = next((t.dtype for t in params if t.is_floating_point()), torch.float32)

    def cast(a: Any) -> Any:  # copies: a model may change its inputs in place
        if isinstance(a, torch.Tensor):
            return a.to(dtype, copy=True) if a.is_floating_point() else a.clone()
        if isinstance(a, (tuple, list)):
            return type(a)(cast(x) for x in a)
        if isinstance(a, dict):
            return {k: cast(v) for k, v in a.items()}
        return a

    args = ModelInputs(cast(args.args), cast(args.kwargs))
    hooks = []
    for dq, (_path, fq) in watch.items():
        def hook(_m, _i, out, _dq=dq):
            captured[_dq] = out.detach().clone()
        hooks.append(fq.register_forward_hook(hook))
    try:
        with torch.no_grad(), _eval_mode(qmodel), frozen_quantizers(
            qmodel, {FakeQuantState.QAT: FakeQuantState.VALIDATION}
        ):
            return output_tensors(qmodel(*args.args, **args.kwargs))
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
        fused = _fused_outputs(optimized, model)
        rt_extra: dict[str, np.ndarray] = {}
        if extra:
            aug = os.path.join(tmp, "instrumented.onnx")
            onnx.save(_with_outputs(model, extra), aug)
            s2 = ort.InferenceSession(aug, options(), providers=["CPUExecutionProvider"])
            res = s2.run(extra, dict(zip(names, feeds, strict=True)))
            rt_extra = dict(zip(extra, res, strict=True))
    integer = {k: v for k, v in counts.items() if k in _ORT_INTEGER}
    flt = {k: v for k, v in counts.items()
           if k not in _ORT_INTEGER and k not in _QDQ and k not in _MOVEMENT}
    return outs, rt_extra, dict(sorted(integer.items())), dict(sorted(flt.items())), fused


_FUSABLE_CLIPS = frozenset({"Relu", "Clip"})


def _fused_outputs(nodes, original) -> dict[str, str]:
    """Quantized tensor name -> ORT kernel, for the fused integer kernels of an optimized graph.

    A fused kernel's output keeps either the QuantizeLinear's output name (``<tensor>_quantized``)
    or the name of the op node it replaced (``<op>/<OpType>``); from that node the original graph
    leads, through Relu / Clip nodes ORT dropped, to the QuantizeLinear of the tensor.  (Scale
    names cannot be used: ORT merges identical initializers.)
    """
    by_name = {n.name: n for n in original.graph.node}
    consumers: dict[str, list] = {}
    for n in original.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    suffix = "_quantized"
    fused: dict[str, str] = {}
    for n in nodes:
        if n.op_type not in _ORT_INTEGER or not n.output:
            continue
        out = n.output[0]
        if n.op_type == "MatMulIntegerToFloat" and out.endswith("_matmul"):
            fused[out[: -len("_matmul")]] = n.op_type  # a Linear's MatMul (float output)
            continue
        if out.endswith(suffix):
            fused[out[: -len(suffix)]] = n.op_type
            continue
        node = by_name.get(out)
        while node is not None and node.output:
            users = consumers.get(node.output[0], [])
            if len(users) != 1:
                break
            node = users[0]
            if node.op_type == "QuantizeLinear":
                if node.output[0].endswith(suffix):
                    fused[node.output[0][: -len(suffix)]] = n.op_type
                break
            if node.op_type not in _FUSABLE_CLIPS:
                break
    return fused


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
