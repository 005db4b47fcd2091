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
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .._utils import Choice, as_path
from ..backends import ORT_EXACT_IN_FLOAT, RUNTIME_KERNELS, BackendProfile, Runtime
from ..errors import ConfigError, ExportError, VerifyError, bounded, bounded_list
from ..fake_quant import FakeQuantize, quantizer_states
from ..graph.ops import node_traits
from ..graph.report import get_report
from ..graph.simulate import float_simulation, hidden_quantizers, runtime_simulation
from ..modelio import as_inputs, eval_mode, output_tensors
from ..qconfig import OpKind
from ..runtimes import (
    FLOAT_RTOL,
    HIST_CLIP,
    MOVEMENT_OPS,
    ExecutedOps,
    TensorDiff,
    onnx_model,
    open_session,
    require_runtime,
    runtime_version,
    tensor_diff,
)
from ..runtimes.litert_runtime import LiteRTSession
from ..runtimes.onnx_runtime import INTEGER_OPS
from .captured_simulation import captured_runtime_simulation
from .naming import dq_output, quantized_tensor_name
from .provenance import check_exported_from

__all__ = [
    "TensorDiff",
    "VerifyReport",
    "verify",
    "Reference",
    "RUNTIMES",
    "HIST_CLIP",
    "FLOAT_RTOL",
    "KernelMismatchWarning",
    "kernel_mismatches",
]

RUNTIMES = tuple(r.value for r in Runtime)
"""The runtime names ``verify`` accepts (see :class:`~fxquant.backends.Runtime`)."""


class Reference(Choice):
    """How :func:`verify` evaluates the simulation it compares the runtime with.

    AUTO: RUNTIME for ONNX Runtime with integer kernels, else EXACT.
    RUNTIME: the model in eval mode with the runtime's arithmetic (the runtime simulation).
    INTEGER: the former name of RUNTIME.
    EXACT: the float simulation in float64.
    FLOAT32: the float simulation (:attr:`fxquant.Simulation.FLOAT`).
    """

    AUTO = "auto"
    RUNTIME = "runtime"
    INTEGER = "integer"
    EXACT = "exact"
    FLOAT32 = "float32"


class KernelMismatchWarning(UserWarning):
    """The runtime fused other ops than the backend profile's kernel table says (the simulation
    then computes a different kernel than the runtime at those tensors)."""


FLOAT_OUTPUT_KERNEL = "MatMulIntegerToFloat"
"""The fused kernel whose output is float: its tensor has no quantizer, so the simulation and
the runtime's optimized graph name it independently (a Linear's is matched by its op name)."""


def kernel_mismatches(simulated: dict[str, str], fused: dict[str, str],
                      integer_ops: frozenset[str] = INTEGER_OPS) -> dict[str, str]:
    """Tensor -> how the simulation's integer kernels (``RuntimePlan.kernels``) and the ones the
    runtime fused (read from its optimized graph) differ there.  Kernels whose arithmetic the
    float simulation reproduces exactly (:data:`fxquant.backends.ORT_EXACT_IN_FLOAT`) and float
    ops with the runtime's arithmetic (not in ``integer_ops``) are not differences; a
    ``MatMulIntegerToFloat`` found on one side only is not compared (a float tensor has no
    quantizer to name it by: a library module's projection or an attention-score MatMul is named
    by ``torch.onnx`` in the file, by the graph node in the simulation)."""
    out: dict[str, str] = {}
    simulated = {t: k for t, k in simulated.items() if k in integer_ops}
    for tensor in sorted(set(simulated) | set(fused)):
        sim, rt = simulated.get(tensor), fused.get(tensor)
        if FLOAT_OUTPUT_KERNEL in (sim, rt) and (sim is None or rt is None):
            continue  # a float-output kernel is named by its op, which only ORT's file names
        if sim == rt or (sim is None and rt in ORT_EXACT_IN_FLOAT):
            continue
        if sim is None:
            out[tensor] = f"the runtime runs {rt}; the simulation runs float ops"
        elif rt is None:
            out[tensor] = f"the simulation computes {sim}; the runtime did not fuse it"
        else:
            out[tensor] = f"the runtime runs {rt}; the simulation computes {sim}"
    return out


@dataclass(frozen=True)
class VerifyReport:
    """Result of :func:`verify`; ``str(report)`` is a table.

    Attributes:
        runtime: the :class:`~fxquant.backends.Runtime` (equal to its name, ``"onnxruntime"``).
        outputs: one :class:`TensorDiff` per model output.
        tensors: one per quantized activation found in the graph (``tensors=True``).
        integer_ops: op / layer type -> count of those the runtime runs in integer arithmetic
            (ORT: QLinearConv, QLinearAdd, QGemm, ...; OpenVINO: layers with an integer
            runtime precision).
        float_ops: compute op / layer types still running in float (Q/DQ and pure data
            movement such as Reshape / Transpose / MaxPool are not counted).
        reference: how the simulation was evaluated (a :class:`Reference`).
        emulated: with ``reference="runtime"``: kernel -> number of ops the simulation computed
            with the runtime's arithmetic; ``not_emulated``: op -> why an op the runtime might
            fuse ran as float ops in the simulation.
        runtime_version: the runtime and its version that ran the file
            (``"onnxruntime 1.32.0"``).
        kernel_mismatch: tensor -> how the kernels the simulation computes differ from the
            ones the runtime fused (ONNX Runtime's optimized graph); empty when they agree.
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
        ref = str(self.reference)
        if self.emulated or self.not_emulated:
            emu = ", ".join(f"{k} x{v}" for k, v in sorted(self.emulated.items())) or "none"
            ref += f" (runtime arithmetic emulated for {emu}"
            ref += f"; {len(self.not_emulated)} fused op(s) not emulated)" \
                if self.not_emulated else ")"
        lines = [
            f"fxquant verify ({self.runtime}): {len(self.outputs)} output(s), "
            f"{len(self.tensors)} quantized tensor(s) compared with the simulation "
            f"[reference: {ref}]",
            line(head), line(tuple("-" * w for w in widths)), *map(line, rows),
            f"integer ops: {ops}", f"float ops:   {flo}",
            *(f"kernel mismatch: {t}: {why}" for t, why in self.kernel_mismatch.items()),
        ]
        if self.runtime_version:
            lines.append(f"ran in:      {self.runtime_version}")
        return "\n".join(lines)


def _output_quantizers(gm: nn.Module) -> list[str | None]:
    """For each model output: the quantizer whose grid it lies on (through pure data moves)."""
    if not isinstance(gm, fx.GraphModule):
        return []

    def grid_of(n: Any) -> str | None:
        while isinstance(n, fx.Node):
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), FakeQuantize):
                return str(n.target)
            if n.op not in ("call_module", "call_function", "call_method"):
                return None
            kind = node_traits(n, gm).kind
            ins = n.all_input_nodes
            if kind is not OpKind.SHARE or len(ins) != 1:
                return None
            n = ins[0]
        return None

    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    res = out_node.args[0]
    items = list(res) if isinstance(res, (tuple, list)) else [res]
    return [grid_of(i) for i in items]


def _runtime_for(runtime: Runtime | str | None, profile: BackendProfile) -> Runtime:
    """The runtime to verify in: the one asked for, else the prepare-time profile's (ONNX
    Runtime for profiles that name none); warns when the profile targets another one."""
    if runtime is None:
        return profile.runtime or Runtime.ONNXRUNTIME
    chosen = Runtime.parse(runtime, "runtime")
    if profile.runtime is not None and chosen is not profile.runtime:
        warnings.warn(
            f"verify: the model was prepared for backend {profile.name!r}, whose runtime is "
            f"{profile.runtime.value}, but is verified in {chosen.value}; prepare with the "
            "backend of the runtime you deploy to for the closest numerics",
            UserWarning,
            stacklevel=3,
        )
    return chosen


def verify(
    qmodel: nn.Module,
    onnx_path: str | os.PathLike[str],
    inputs: Any,
    runtime: Runtime | str | None = None,
    *,
    tensors: bool = True,
    num_threads: int | None = None,
    integer_kernels: bool = True,
    reference: Reference | str = Reference.AUTO,
) -> VerifyReport:
    """Run ``onnx_path`` in ``runtime`` and compare with ``qmodel``'s simulation on ``inputs``.

    Args:
        qmodel: the prepared model the file was exported from; run in eval mode with its
            quantizers as they are (QAT-state quantizers are held frozen, nothing is observed).
        onnx_path: a file written by :func:`fxquant.export.export_onnx`.
        inputs: one batch (:mod:`fxquant.modelio`): a tensor, a tuple / list of positional
            inputs or a dict of keyword inputs.
        runtime: a :class:`~fxquant.backends.Runtime` or its name, ``"onnxruntime"`` (CPU) or
            ``"openvino"`` (CPU, fp32 inference precision) or ``"litert"`` (a TFLite file from
            :func:`fxquant.export_tflite`; outputs from LiteRT's XNNPACK path, tensors from its
            builtin kernels).  Default: the runtime of the
            backend profile ``qmodel`` was prepared for (ONNX Runtime when the profile names
            none); another one than the profile's works, with a warning.
        tensors: also compare every quantized activation (runs a second, instrumented copy).
        num_threads: runtime threads (default: ``torch.get_num_threads()``).
        integer_kernels: ``False`` runs ONNX Runtime with its QDQ fusions off
            (``session.disable_quant_qdq``): every op between DequantizeLinear and
            QuantizeLinear runs in float, i.e. the graph's reference semantics.  Tells a
            difference of the graph from a difference of the runtime's integer kernels.
            (OpenVINO has no such switch.)
        reference: how the simulation is evaluated (a :class:`Reference` or its name).  Every
            choice runs the same quantizers, scales and weight codes; they differ in arithmetic
            only:

            * ``"runtime"`` (ONNX Runtime): the model in eval mode with the runtime's integer
              arithmetic (:mod:`fxquant.graph.simulate`) -- exact int32 accumulation, the
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

    The report names the runtime version that ran the file (``VerifyReport.runtime_version``).
    """
    report = get_report(qmodel)
    rt = require_runtime(_runtime_for(runtime, report.profile), "verify")
    ref = Reference.parse(reference, "reference")
    if not integer_kernels and rt is not Runtime.ONNXRUNTIME:
        raise ConfigError("integer_kernels=False is supported with runtime='onnxruntime' only")
    ref = Reference.RUNTIME if ref is Reference.INTEGER else ref
    if ref is Reference.RUNTIME and (rt not in RUNTIME_KERNELS or not integer_kernels):
        raise ConfigError("reference='runtime' computes a runtime's integer kernels: fxquant "
                          f"reproduces {sorted(RUNTIME_KERNELS)} (with integer_kernels=True)")
    if ref is Reference.AUTO:
        ref = Reference.RUNTIME if rt in RUNTIME_KERNELS and integer_kernels \
            else Reference.EXACT
    onnx_path = as_path(onnx_path, "verify: onnx_path")
    if rt is Runtime.LITERT:
        return _verify_litert(qmodel, onnx_path, inputs, tensors=tensors, reference=ref,
                              num_threads=num_threads)
    proto = onnx_model.load(onnx_path, "verify", VerifyError)
    check_exported_from(qmodel, report, proto, onnx_path)
    produced = onnx_model.tensor_names(proto) - onnx_model.constant_outputs(proto)
    watch: dict[str, tuple[str, FakeQuantize]] = {}  # dq tensor -> (quantizer path, module)
    for path, op, role in report.quantizers():
        if role == "weight":
            continue
        dq = dq_output(quantized_tensor_name(op, role))
        fq = qmodel.get_submodule(path)
        if dq in produced and isinstance(fq, FakeQuantize):  # activations (not constants)
            watch[dq] = (path, fq)
    call = as_inputs(inputs)
    options = {"threads": num_threads, "integer_kernels": integer_kernels}
    extra = list(watch) if tensors else []
    with open_session(rt, onnx_path, **options) as main:
        feeds = main.feeds(call)
        rt_all = main.run(feeds)
        out_names = main.output_names
        executed: ExecutedOps = main.executed_ops()
    rt_extra: dict[str, Any] = {}
    if extra:
        with open_session(rt, onnx_path, extra_outputs=extra, **options) as inst:
            rt_extra = {k: v for k, v in inst.run(feeds).items() if k in extra}
    emulated: dict[str, int] = {}
    not_emulated: dict[str, str] = {}
    mismatch: dict[str, str] = {}
    ref_model: nn.Module = qmodel
    float_ref = True
    if ref is Reference.RUNTIME:
        # the model as it evaluates when it simulates this runtime (its profile's table, checked
        # against what the runtime fused); a model prepared for another target: the kernels the
        # runtime was seen to fuse
        own = report.profile.runtime == rt and bool(report.profile.kernels)
        fused = None if own else executed.fused
        module, plan = None, None
        if hidden_quantizers(qmodel):  # ops the fx graph does not show: the captured program's
            try:
                module, plan = captured_runtime_simulation(qmodel, call, rt, fused)
            except ExportError:  # no graph without specialising (a file exported so): as before
                module = plan = None
        if plan is None:
            module, plan = runtime_simulation(qmodel, rt, fused)
        emulated = dict(sorted(Counter(plan.kernels.values()).items()))
        not_emulated = dict(plan.skipped)
        mismatch = kernel_mismatches(plan.kernels, executed.fused)
        if mismatch and own:
            warnings.warn(
                f"the simulation's fused kernels differ from what {rt} fused at "
                f"{len(mismatch)} tensor(s): {bounded_list(mismatch.items())}",
                KernelMismatchWarning, stacklevel=2,
            )
        if module is not None:
            ref_model, float_ref = module, False
    elif ref is Reference.EXACT:
        ref_model = copy.deepcopy(qmodel).double()
    captured: dict[str, torch.Tensor] = {}
    ref_watch = {dq: (path, ref_model.get_submodule(path)) for dq, (path, _) in watch.items()}
    sim_out = _simulate(ref_model, call, ref_watch if tensors else {}, captured, float_ref)
    sim32 = _simulate(qmodel, call, {}, {}, True) if ref is not Reference.FLOAT32 else None
    if len(out_names) != len(sim_out):
        raise VerifyError(
            f"{bounded(onnx_path, 120)!r} has {len(out_names)} output(s) but the model returns "
            f"{len(sim_out)}: it was not exported from this model"
        )
    out_q = _output_quantizers(qmodel)
    from_graph = _graph_output_quantizers(proto, watch)
    outputs = []
    for i, (name, sim) in enumerate(zip(out_names, sim_out, strict=False)):
        path = out_q[i] if i < len(out_q) and out_q[i] else from_graph.get(name)
        qp = qmodel.get_submodule(path).qparams() if path else None
        d = tensor_diff(name, rt_all[name], sim, qp, path)
        if sim32 is not None and i < len(sim32) and qp is not None:
            agree = tensor_diff(name, sim32[i].double().numpy(), sim, qp, path).identical
            d = dataclasses.replace(d, float32_identical=agree)
        outputs.append(d)
    tensor_diffs = [
        tensor_diff(dq, rt_extra[dq], captured[dq], watch[dq][1].qparams(), watch[dq][0])
        for dq in extra if dq in rt_extra and dq in captured
    ]
    return VerifyReport(rt, tuple(outputs), tuple(tensor_diffs), executed.integer,
                        executed.floating, ref, emulated, not_emulated, runtime_version(rt),
                        mismatch)


def _verify_litert(qmodel: nn.Module, path: str | os.PathLike[str], inputs: Any, *,
                   tensors: bool, reference: Reference, num_threads: int | None) -> VerifyReport:
    """:func:`verify` of a TFLite file (:func:`fxquant.export_tflite`) in LiteRT.

    Outputs come from LiteRT's default CPU path (the XNNPACK delegate); the quantized tensors
    inside from a second run on LiteRT's builtin kernels with every tensor kept (a delegate's
    intermediate tensors are not readable), mapped to their quantizers by the file's metadata.
    ``reference="runtime"`` (the default): the model's eval mode with LiteRT's arithmetic
    (:data:`fxquant.backends.LITERT_KERNELS`).
    """
    call = as_inputs(inputs)
    options = {"threads": num_threads}
    with LiteRTSession(path, **options) as main:
        feeds = main.feeds(call)
        rt_all = main.run(feeds)
        out_names = main.output_names
        executed = main.executed_ops()
        entries = main.meta.get("tensors", []) if tensors else []
    watch = {e["tensor"]: (e["quantizer"], qmodel.get_submodule(e["quantizer"]))
             for e in entries}
    rt_extra: dict[str, Any] = {}
    if watch:
        with LiteRTSession(path, extra_outputs=list(watch), **options) as inner:
            rt_extra = {k: v for k, v in inner.run(feeds).items() if k in watch}
    emulated: dict[str, int] = {}
    not_emulated: dict[str, str] = {}
    ref_model: nn.Module = qmodel
    float_ref = True
    if reference is Reference.RUNTIME:
        module, plan = runtime_simulation(qmodel, Runtime.LITERT)
        emulated = dict(sorted(Counter(plan.kernels.values()).items()))
        not_emulated = dict(plan.skipped)
        if module is not None:
            ref_model, float_ref = module, False
    elif reference is Reference.EXACT:
        ref_model = copy.deepcopy(qmodel).double()
    captured: dict[str, torch.Tensor] = {}
    ref_watch = {t: (p, ref_model.get_submodule(p)) for t, (p, _) in watch.items()}
    sim_out = _simulate(ref_model, call, ref_watch, captured, float_ref)
    sim32 = _simulate(qmodel, call, {}, {}, True) if reference is not Reference.FLOAT32 else None
    out_q = _output_quantizers(qmodel)
    outputs = []
    for i, (name, sim) in enumerate(zip(out_names, sim_out, strict=False)):
        qpath = out_q[i] if i < len(out_q) else None
        qp = qmodel.get_submodule(qpath).qparams() if qpath else None
        d = tensor_diff(name, rt_all[name], sim, qp, qpath)
        if sim32 is not None and i < len(sim32) and qp is not None:
            agree = tensor_diff(name, sim32[i].double().numpy(), sim, qp, qpath).identical
            d = dataclasses.replace(d, float32_identical=agree)
        outputs.append(d)
    tensor_diffs = [
        tensor_diff(t, rt_extra[t], captured[t], watch[t][1].qparams(), watch[t][0])
        for t in watch if t in rt_extra and t in captured
    ]
    version = f"{LiteRTSession.version()} (outputs: XNNPACK; tensors: builtin kernels)"
    return VerifyReport(Runtime.LITERT, tuple(outputs), tuple(tensor_diffs), executed.integer,
                        executed.floating, reference, emulated, not_emulated, version, {})


def _graph_output_quantizers(model: Any, watch: dict[str, tuple[str, Any]]) -> dict[str, str]:
    """Graph output name -> quantizer path, for outputs that are a watched ``_dequantized``
    tensor (directly or through Identity / value-moving nodes): the grid of an output of a
    model without an fx graph (eager capture)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found = {}
    for out in model.graph.output:
        name = out.name
        for _ in range(64):
            if name in watch:
                found[out.name] = watch[name][0]
                break
            node = producer.get(name)
            if node is None or node.op_type not in MOVEMENT_OPS or not node.input:
                break
            name = node.input[0]
    return found


def _simulate(qmodel: nn.Module, inputs: Any, watch: dict[str, Any],
              captured: dict[str, torch.Tensor], float_sim: bool) -> list[torch.Tensor]:
    """Run ``qmodel`` (eval, QAT quantizers held frozen; the float simulation if ``float_sim``);
    capture ``watch`` quantizers."""
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

    args = tuple(cast(a) for a in inputs.args)
    kwargs = {k: cast(v) for k, v in inputs.kwargs.items()}
    hooks = []
    for dq, (_path, fq) in watch.items():
        def hook(_m, _i, out, _dq=dq):
            captured[_dq] = out.detach().clone()
        hooks.append(fq.register_forward_hook(hook))
    try:
        mode = float_simulation() if float_sim else contextlib.nullcontext()
        with torch.no_grad(), eval_mode(qmodel), mode, quantizer_states(qmodel, None):
            return output_tensors(qmodel(*args, **kwargs))
    finally:
        for h in hooks:
            h.remove()
