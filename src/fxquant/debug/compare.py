"""``compare``: per-quantizer error of a prepared model against its float computation.

For every quantizer (the names and roles :func:`fxquant.summary` prints) the tensor it produces
is compared with the float tensor at the same place:

* the **float reference** is the quantizer's *input* when the prepared model runs with every
  quantizer in ``FLOAT`` (BN folding etc. included, so the reference is the float function of the
  very graph that is quantized);
* **cumulative** (``mode="cumulative"``): the quantizer's output with every quantizer on
  (their current scales, nothing observed) — all the error accumulated up to that tensor;
* **isolated** (``mode="isolated"``): only that quantizer on — its own rounding and clipping
  error on the float tensor (computed as ``quantizer(float reference)``, which is exactly what a
  run with only that quantizer on feeds it);
* a runtime stage (optional, :class:`Stage`: ``"onnxruntime"`` or ``"openvino"``): the model
  is exported with :func:`fxquant.export_onnx` and every quantized activation
  (``<tensor>_dequantized``, the tensors :func:`fxquant.verify` compares) is read from that
  runtime (:mod:`fxquant.runtimes`); ``max_step_diff`` / ``identical`` are the difference from
  the simulation in quantization steps, counted as :func:`fxquant.verify`
  (``reference="float32"``) counts them.

Metrics per row (all accumulated over every batch, in float64):
``sqnr`` = ``10 log10(sum ref^2 / sum (x - ref)^2)`` dB (``inf`` when equal), ``cosine``,
``l1`` (mean absolute error), ``max_error``, ``saturation`` (fraction of elements whose code
was clipped to ``qmin`` / ``qmax``), ``observed_min/max`` (range of the float reference) and
``chosen_min/max`` (the range the quantizer represents: ``(qmin - zp) * scale .. (qmax - zp) *
scale``; over all channels when per channel).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from .._utils import Choice
from ..backends import Runtime
from ..export import export_onnx
from ..export.atomic import atomic_path
from ..export.naming import dq_output, quantized_tensor_name
from ..fake_quant import FakeQuantize, FakeQuantState, quantizer_states
from ..graph.report import get_report, num_inputs_of
from ..modelio import ModelInputs, call_model, eval_mode, iter_inputs, output_tensors
from ..runtimes import StepCounter, onnx_model, open_session

__all__ = [
    "CompareRow",
    "OutputRow",
    "CompareTable",
    "compare",
    "Stage",
    "STAGES",
    "quantizer_entries",
]


class Stage(Choice):
    """Where :func:`compare` reads each quantized tensor.

    SIM: fxquant's simulation (always included).
    ONNXRUNTIME / OPENVINO: the exported model run in that runtime (:mod:`fxquant.runtimes`).
    """

    SIM = "sim"
    ONNXRUNTIME = Runtime.ONNXRUNTIME.value
    OPENVINO = Runtime.OPENVINO.value


STAGES = tuple(s.value for s in Stage)
"""The stage names :func:`compare` accepts."""
SAMPLE_CAP = 65536
"""At most this many float-reference values per quantizer are kept for histograms."""


# -- shared plumbing (also used by sensitivity) -------------------------------------------------
@dataclass(frozen=True)
class QuantizerEntry:
    """One quantizer of a prepared model: op name, role, op type, module path, module."""

    name: str
    role: str
    op_type: str
    path: str
    fq: FakeQuantize = field(compare=False, repr=False)


def quantizer_entries(qmodel: nn.Module) -> list[QuantizerEntry]:
    """Every distinct quantizer in :func:`fxquant.summary` order (a shared one listed once)."""
    rep = get_report(qmodel)
    out = []
    for path, op, role in rep.quantizers():
        fq = qmodel.get_submodule(path)
        if isinstance(fq, FakeQuantize):
            out.append(QuantizerEntry(op, role, rep.ops[op].op_type, path, fq))
    return out


def run_model(model: nn.Module, inputs: ModelInputs) -> list[torch.Tensor]:
    """The model's output tensors on one batch (no grad, detached)."""
    with torch.no_grad():
        return [o.detach() for o in output_tensors(call_model(model, inputs))]


def _ranges(fq: FakeQuantize) -> tuple[float, float]:
    if not bool(fq.calibrated):
        return (math.nan, math.nan)
    lo, hi = fq.qparams().bounds()
    return float(lo.min()), float(hi.max())


def clipped_fraction(fq: FakeQuantize, x: torch.Tensor) -> tuple[int, int]:
    """(elements whose code saturates at qmin / qmax, elements) for ``x`` under ``fq``."""
    if not bool(fq.calibrated) or not x.is_floating_point():
        return 0, x.numel()
    return int(fq.qparams().saturated(x.detach()).sum()), x.numel()


class ErrorStats:
    """Streaming error statistics of ``x`` against a reference ``ref`` (float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.ref2 = self.x2 = self.err2 = self.abs = self.dot = 0.0
        self.max = 0.0
        self.clipped = 0
        self.lo, self.hi = math.inf, -math.inf

    def add(self, x: torch.Tensor, ref: torch.Tensor, clipped: int = 0) -> None:
        x, ref = x.detach().double().reshape(-1), ref.detach().double().reshape(-1)
        if x.shape != ref.shape:
            raise ValueError(f"compare: shapes differ ({tuple(x.shape)} vs {tuple(ref.shape)})")
        e = x - ref
        self.n += x.numel()
        self.ref2 += float(ref.square().sum())
        self.x2 += float(x.square().sum())
        self.err2 += float(e.square().sum())
        self.abs += float(e.abs().sum())
        self.dot += float((x * ref).sum())
        if x.numel():
            self.max = max(self.max, float(e.abs().max()))
            self.lo, self.hi = min(self.lo, float(ref.min())), max(self.hi, float(ref.max()))
        self.clipped += clipped

    @property
    def sqnr(self) -> float:
        if self.err2 == 0:
            return math.inf
        if self.ref2 == 0:
            return -math.inf
        return 10.0 * math.log10(self.ref2 / self.err2)

    @property
    def cosine(self) -> float:
        d = math.sqrt(self.x2) * math.sqrt(self.ref2)
        return self.dot / d if d > 0 else (1.0 if self.err2 == 0 else 0.0)

    @property
    def l1(self) -> float:
        return self.abs / self.n if self.n else 0.0

    @property
    def mse(self) -> float:
        return self.err2 / self.n if self.n else 0.0

    @property
    def saturation(self) -> float:
        return self.clipped / self.n if self.n else 0.0


def sqnr_db(x: torch.Tensor, ref: torch.Tensor) -> float:
    """SQNR of ``x`` against ``ref`` in dB, exactly as :func:`compare` computes it."""
    s = ErrorStats()
    s.add(x, ref)
    return s.sqnr


# -- the table ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompareRow:
    """One quantizer at one stage and mode (see the module docstring for every metric)."""

    name: str
    role: str
    op_type: str
    dtype: str
    stage: str
    mode: str
    sqnr: float
    cosine: float
    l1: float
    max_error: float
    saturation: float
    observed_min: float
    observed_max: float
    chosen_min: float
    chosen_max: float
    numel: int
    path: str
    max_step_diff: int | None = None
    identical: float | None = None


@dataclass(frozen=True)
class OutputRow:
    """A model output: the quantized model (simulation) against the float model."""

    index: int
    reference: str  # "float_model" or "qmodel_float"
    sqnr: float
    cosine: float
    l1: float
    max_error: float
    numel: int


@dataclass(frozen=True)
class CompareTable:
    """Result of :func:`compare`: ``rows`` (one per quantizer, stage and mode), ``outputs``,
    ``samples`` (``(name, role)`` -> up to :data:`SAMPLE_CAP` float-reference values, for
    histograms).  ``str()`` is a table with one line per quantizer."""

    rows: tuple[CompareRow, ...]
    outputs: tuple[OutputRow, ...]
    stages: tuple[str, ...]
    samples: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, compare=False,
                                                        repr=False)

    def get(self, name: str, role: str = "output", stage: str = "sim",
            mode: str = "cumulative") -> CompareRow:
        for r in self.rows:
            if (r.name, r.role, r.stage, r.mode) == (name, role, stage, mode):
                return r
        raise KeyError(f"no row {name!r} / {role!r} / {stage!r} / {mode!r}")

    def select(self, stage: str = "sim", mode: str = "cumulative") -> list[CompareRow]:
        return [r for r in self.rows if r.stage == stage and r.mode == mode]

    def worst(self, n: int = 5, stage: str = "sim", mode: str = "isolated") -> list[CompareRow]:
        """The ``n`` rows with the lowest SQNR (ties keep table order)."""
        return sorted(self.select(stage, mode), key=lambda r: r.sqnr)[:n]

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """All rows as CSV (returned; also written atomically to ``path`` when given)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        names = [f.name for f in fields(CompareRow)]
        w.writerow(names)
        for r in self.rows:
            d = asdict(r)
            w.writerow(["" if d[k] is None else d[k] for k in names])
        text = buf.getvalue()
        if path is not None:
            write_text_atomic(path, text)
        return text

    def __str__(self) -> str:
        runtimes = [st for st in self.stages if st != Stage.SIM]
        short = {Stage.ONNXRUNTIME: "ort", Stage.OPENVINO: "ov"}
        head = ["name", "role", "dtype", "SQNR cum (dB)", "SQNR iso (dB)", "cosine", "L1",
                "max err", "sat %", "observed", "chosen"]
        for st in runtimes:
            tag = short.get(Stage.parse(st), str(st))
            head += [f"SQNR {tag} (dB)", f"{tag} steps"]
        lines = []
        for c in self.select("sim", "cumulative"):
            i = self.get(c.name, c.role, "sim", "isolated")
            line = [c.name, c.role, c.dtype, _f(c.sqnr), _f(i.sqnr), f"{c.cosine:.5f}",
                    f"{c.l1:.4g}", f"{c.max_error:.4g}", f"{100 * c.saturation:.3f}",
                    f"[{c.observed_min:.4g}, {c.observed_max:.4g}]",
                    f"[{c.chosen_min:.4g}, {c.chosen_max:.4g}]"]
            for st in runtimes:
                try:
                    o = self.get(c.name, c.role, st)
                    line += [_f(o.sqnr), str(o.max_step_diff)]
                except KeyError:
                    line += ["-", "-"]
            lines.append(line)
        widths = [max(len(str(r[k])) for r in [head, *lines]) for k in range(len(head))]
        fmt = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
        out = [f"fxquant compare ({', '.join(map(str, self.stages))}): {len(lines)} quantizers",
               fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)]
        for o in self.outputs:
            out.append(f"output {o.index} vs {o.reference}: SQNR {_f(o.sqnr)} dB, cosine "
                       f"{o.cosine:.5f}, L1 {o.l1:.4g}, max err {o.max_error:.4g}")
        return "\n".join(out)


def _f(v: float) -> str:
    return f"{v:.2f}" if math.isfinite(v) else str(v)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


# -- compare ------------------------------------------------------------------------------
def running(
    qmodel: nn.Module, default: FakeQuantState | None,
    overrides: dict[str, FakeQuantState] | None = None,
):
    """``qmodel`` in eval mode with its quantizer states set without observing
    (:func:`fxquant.fake_quant.quantizer_states`); everything restored afterwards."""
    stack = contextlib.ExitStack()
    stack.enter_context(eval_mode(qmodel))
    stack.enter_context(quantizer_states(qmodel, default, overrides))
    return stack


def _capture(entries: Sequence[QuantizerEntry], which: str) -> tuple[dict, list]:
    got: dict[str, torch.Tensor] = {}
    hooks = []
    for e in entries:
        if which == "input":
            def hook(_m, inp, _out, _p=e.path):
                got[_p] = inp[0].detach().clone()
        else:
            def hook(_m, _inp, out, _p=e.path):
                got[_p] = out.detach().clone()
        hooks.append(e.fq.register_forward_hook(hook))
    return got, hooks


def _sample(prev: np.ndarray | None, x: torch.Tensor) -> np.ndarray:
    flat = x.detach().float().reshape(-1)
    step = max(1, flat.numel() // (SAMPLE_CAP // 8))
    new = flat[::step].numpy()
    out = new if prev is None else np.concatenate([prev, new])
    return out[:SAMPLE_CAP]


def _stages(stages: Iterable[Stage | str]) -> tuple[Stage, ...]:
    out = tuple(Stage.parse(s, "compare: stage") for s in stages)
    return out if Stage.SIM in out else (Stage.SIM, *out)


def compare(
    float_model: nn.Module | None,
    qmodel: nn.Module,
    inputs: Any,
    stages: Iterable[Stage | str] = (Stage.SIM,),
    *,
    onnx_path: str | os.PathLike[str] | None = None,
) -> CompareTable:
    """Per-quantizer comparison of ``qmodel`` with its float computation (module docstring).

    Args:
        float_model: the original float model; its outputs are the reference of the
            :class:`OutputRow` s (``None``: ``qmodel`` with every quantizer off).
        qmodel: a calibrated model from :func:`fxquant.prepare`; left as it was.
        inputs: one batch (a tensor, a tuple of positional inputs, a dict of keyword inputs)
            or a list of batches, as :mod:`fxquant.modelio` defines them.
        stages: :class:`Stage` s or their names: ``("sim",)``, ``("sim", "onnxruntime")``,
            ``("sim", "openvino")`` ...
        onnx_path: for a runtime stage, an existing export of ``qmodel``; by default the
            model is exported to a temporary folder with :func:`fxquant.export_onnx`.
    """
    stages = _stages(stages)
    batches = list(iter_inputs(inputs, num_inputs_of(qmodel)))
    if not batches:
        raise ValueError("compare: no inputs")
    entries = quantizer_entries(qmodel)
    cum = {e.path: ErrorStats() for e in entries}
    iso = {e.path: ErrorStats() for e in entries}
    samples: dict[str, np.ndarray] = {}
    out_stats: list[ErrorStats] = []
    runtimes = [_RuntimeStage(st, qmodel, entries, batches[0], onnx_path)
                for st in stages if st is not Stage.SIM]
    try:
        for batch in batches:
            got_f, hooks = _capture(entries, "input")
            try:
                with running(qmodel, FakeQuantState.FLOAT):
                    qfloat_out = run_model(qmodel, batch)
            finally:
                for h in hooks:
                    h.remove()
            got_q, hooks = _capture(entries, "output")
            got_qin, hooks_in = _capture(entries, "input")
            with running(qmodel, None):
                try:
                    q_out = run_model(qmodel, batch)
                finally:
                    for h in hooks + hooks_in:
                        h.remove()
                for e in entries:  # isolated: the quantizer alone, on its float input
                    ref = got_f.get(e.path)
                    if ref is None:
                        continue
                    with torch.no_grad():
                        xi = e.fq(ref) if e.fq.state is not FakeQuantState.FLOAT else ref
                    iso[e.path].add(xi, ref, clipped_fraction(e.fq, ref)[0])
            for e in entries:
                ref = got_f.get(e.path)
                if ref is None or e.path not in got_q:
                    continue
                cum[e.path].add(got_q[e.path], ref, clipped_fraction(e.fq, got_qin[e.path])[0])
                samples[e.path] = _sample(samples.get(e.path), ref)
            if float_model is not None:
                with eval_mode(float_model):
                    ref_out = run_model(float_model, batch)
            else:
                ref_out = qfloat_out
            while len(out_stats) < len(q_out):
                out_stats.append(ErrorStats())
            for k, (a, b) in enumerate(zip(q_out, ref_out, strict=True)):
                out_stats[k].add(a, b)
            for rt in runtimes:
                rt.add(batch, got_f, got_q, got_qin)
    finally:
        for rt in runtimes:
            rt.close()
    rows = []
    for e in entries:
        lo, hi = _ranges(e.fq)

        def row(st: ErrorStats, stage: Stage, mode: str, steps=None, e=e, lo=lo, hi=hi):
            return CompareRow(
                e.name, e.role, e.op_type, str(e.fq.dtype), stage, mode, st.sqnr, st.cosine,
                st.l1, st.max, st.saturation, st.lo, st.hi, lo, hi, st.n, e.path,
                None if steps is None else steps.max_step_diff,
                None if steps is None else steps.identical,
            )
        rows.append(row(cum[e.path], Stage.SIM, "cumulative"))
        rows.append(row(iso[e.path], Stage.SIM, "isolated"))
        for rt in runtimes:
            if rt.stats[e.path].n:
                rows.append(row(rt.stats[e.path], rt.stage, "cumulative",
                                rt.steps[e.path].result()))
    outs = tuple(
        OutputRow(k, "float_model" if float_model is not None else "qmodel_float", s.sqnr,
                  s.cosine, s.l1, s.max, s.n)
        for k, s in enumerate(out_stats)
    )
    samp = {(e.name, e.role): samples[e.path] for e in entries if e.path in samples}
    return CompareTable(tuple(rows), outs, stages, samp)


class _RuntimeStage:
    """Export once, run the runtime with every ``<tensor>_dequantized`` as an extra output,
    accumulate SQNR and step statistics per quantizer."""

    def __init__(self, stage: Stage, qmodel: nn.Module, entries: Sequence[QuantizerEntry],
                 example: ModelInputs, onnx_path: Any) -> None:
        self.stage = stage
        self._tmp = tempfile.TemporaryDirectory(prefix="fxquant_compare_")
        path = os.fspath(onnx_path) if onnx_path is not None else os.path.join(
            self._tmp.name, "model.onnx")
        if onnx_path is None:
            args = example.args if len(example.args) > 1 else example.args[0]
            export_onnx(qmodel, args, path)
        produced = onnx_model.tensor_names(onnx_model.load(path, "compare"))
        self.watch: dict[str, QuantizerEntry] = {}
        for e in entries:
            if e.role == "weight":
                continue
            dq = dq_output(quantized_tensor_name(e.name, e.role))
            if dq in produced:
                self.watch[dq] = e
        self.session = open_session(Runtime(stage.value), path, extra_outputs=list(self.watch))
        self.stats = {e.path: ErrorStats() for e in entries}
        self.steps = {e.path: StepCounter(dq, e.fq.qparams(), e.path)
                      for dq, e in self.watch.items()}

    def add(self, batch: ModelInputs, got_f: dict, got_q: dict, got_qin: dict) -> None:
        res = self.session.run(self.session.feeds(batch))
        for dq, e in self.watch.items():
            if dq not in res or e.path not in got_f or e.path not in got_q:
                continue
            rt = np.asarray(res[dq])
            self.stats[e.path].add(torch.from_numpy(rt), got_f[e.path],
                                   clipped_fraction(e.fq, got_qin[e.path])[0])
            self.steps[e.path].add(rt, got_q[e.path])

    def close(self) -> None:
        self.session.close()
        self._tmp.cleanup()
