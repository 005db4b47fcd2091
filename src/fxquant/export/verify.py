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
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .._utils import Choice
from ..backends import BackendProfile, Runtime
from ..errors import ConfigError
from ..fake_quant import FakeQuantize, quantizer_states
from ..graph.ops import node_traits
from ..graph.report import get_report
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
    runtime_version,
    tensor_diff,
)
from .integer_sim import integer_simulation
from .naming import dq_output, quantized_tensor_name

__all__ = [
    "TensorDiff",
    "VerifyReport",
    "verify",
    "Reference",
    "RUNTIMES",
    "HIST_CLIP",
    "FLOAT_RTOL",
]

RUNTIMES = tuple(r.value for r in Runtime)
"""The runtime names ``verify`` accepts (see :class:`~fxquant.backends.Runtime`)."""


class Reference(Choice):
    """How :func:`verify` evaluates the simulation it compares the runtime with.

    AUTO: INTEGER for ONNX Runtime with integer kernels, else EXACT.
    INTEGER: the ops ONNX Runtime fused into integer kernels compute as those kernels do.
    EXACT: the simulation in float64.
    FLOAT32: the prepared model as it is.
    """

    AUTO = "auto"
    INTEGER = "integer"
    EXACT = "exact"
    FLOAT32 = "float32"


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
        emulated: with ``reference="integer"``: kernel -> number of fused ops computed with the
            runtime's integer arithmetic; ``not_emulated``: quantized tensor -> why its fused
            op was evaluated in float64 instead.
        runtime_version: the runtime and its version that ran the file
            (``"onnxruntime 1.32.0"``).
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
            ``"openvino"`` (CPU, fp32 inference precision).  Default: the runtime of the
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

    The report names the runtime version that ran the file (``VerifyReport.runtime_version``).
    """
    report = get_report(qmodel)
    rt = _runtime_for(runtime, report.profile)
    ref = Reference.parse(reference, "reference")
    if not integer_kernels and rt is not Runtime.ONNXRUNTIME:
        raise ConfigError("integer_kernels=False is supported with runtime='onnxruntime' only")
    if ref is Reference.INTEGER and (rt is not Runtime.ONNXRUNTIME or not integer_kernels):
        raise ConfigError("reference='integer' emulates ONNX Runtime's integer kernels: use it "
                          "with runtime='onnxruntime' and integer_kernels=True")
    if ref is Reference.AUTO:
        ref = Reference.INTEGER if rt is Runtime.ONNXRUNTIME and integer_kernels \
            else Reference.EXACT
    onnx_path = os.fspath(onnx_path)
    proto = onnx_model.load(onnx_path, "verify")
    produced = onnx_model.tensor_names(proto)
    watch: dict[str, tuple[str, FakeQuantize]] = {}  # dq tensor -> (quantizer path, module)
    for path, op, role in report.quantizers():
        if role == "weight":
            continue
        dq = dq_output(quantized_tensor_name(op, role))
        fq = qmodel.get_submodule(path)
        if dq in produced and isinstance(fq, FakeQuantize):
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
    if ref is Reference.INTEGER:
        isim = integer_simulation(qmodel, executed.fused)
        ref_model = isim.model
        emulated = dict(sorted(Counter(isim.emulated.values()).items()))
        not_emulated = dict(isim.skipped)
    elif ref is Reference.EXACT:
        ref_model = copy.deepcopy(qmodel).double()
    else:
        ref_model = qmodel
    captured: dict[str, torch.Tensor] = {}
    ref_watch = {dq: (path, ref_model.get_submodule(path)) for dq, (path, _) in watch.items()}
    sim_out = _simulate(ref_model, call, ref_watch if tensors else {}, captured)
    sim32 = _simulate(qmodel, call, {}, {}) if ref is not Reference.FLOAT32 else None
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
                        executed.floating, ref, emulated, not_emulated, runtime_version(rt))


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

    args = tuple(cast(a) for a in inputs.args)
    kwargs = {k: cast(v) for k, v in inputs.kwargs.items()}
    hooks = []
    for dq, (_path, fq) in watch.items():
        def hook(_m, _i, out, _dq=dq):
            captured[_dq] = out.detach().clone()
        hooks.append(fq.register_forward_hook(hook))
    try:
        with torch.no_grad(), eval_mode(qmodel), quantizer_states(qmodel, None):
            return output_tensors(qmodel(*args, **kwargs))
    finally:
        for h in hooks:
            h.remove()
