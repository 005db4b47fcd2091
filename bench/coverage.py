"""Deployment coverage: does every model family prepare, export and run in the runtimes?

The zoo (:mod:`bench.coverage_zoo`): torchvision classification and detection backbones, timm,
tiny transformers configs, torch.nn library modules in user models and models with
data-dependent control flow.  All weights are random (fixed seed); BatchNorm statistics are
first settled on random inputs (train-mode passes with ``momentum=None``, i.e. a cumulative
average, then ``eval()``); all-zero Linear weights (classifier heads torchvision and timm
zero-initialise) are redrawn, since an identically zero output has no SQNR.

Per model, on the same random data (calibration batches, a held-out evaluation batch of the same
size):

* **fxquant, onnxruntime profile**: ``prepare(model, x, default_calibration_qconfig_setter,
  backend="onnxruntime")``, ``calibrate``; how the model was captured (``fx``, ``eager``,
  untraceable submodules run eagerly), the ops left in float (``fxquant.summary``), the output
  SQNR of the simulation vs the float model; ``export_onnx`` and ``verify`` in ONNX Runtime:
  codes identical with the simulation / largest difference in quantization steps over the
  outputs (``ok`` = >= 99% identical and <= 2 steps), and the SQNR of ONNX Runtime's output vs
  float.  The export runs with ``check=False``: ``verify`` is the stricter comparison (ORT's
  integer kernels emulated), and on random-weight deep networks the self-check's float
  reference amplifies one flipped code with depth (design note in docs/design.md);
* **fxquant, openvino profile**: the same prepare / calibrate / export, ``verify`` in OpenVINO;
* **peers**: torch.ao FX (``prepare_fx`` with ``get_default_qconfig_mapping("x86")``,
  ``convert_fx``, torch's x86 int8 kernels), and on the float ONNX export
  (``torch.onnx.export``) ONNX Runtime's ``quantize_static`` and NNCF's ``quantize`` with their
  defaults (:mod:`bench.onnx_peers`); output SQNR vs float or the error.

SQNR = 10 log10(sum(ref^2) / sum((ref - out)^2)) over the model's first output (logits, the last
hidden state, the first FPN level).  Every stage runs in ``try`` under a per-model time limit,
and every model in a process of its own; a failure -- even a runtime crashing the process -- is
a cell with the error, never a crash of the suite.

``python -m bench.coverage [--full] [name ...]`` runs the named models (default: the quick set)
and prints the table.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import multiprocessing
import os
import pathlib
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import fxquant
from bench import onnx_peers
from bench._tv_shim import ensure_torchvision_importable
from bench.common import SuiteResult, markdown_table
from bench.coverage_zoo import QUICK_MODELS, ModelSpec, zoo
from fxquant.modelio import output_tensors

__all__ = [
    "ModelSpec",
    "CoverageConfig",
    "FULL",
    "QUICK",
    "COLUMNS",
    "zoo",
    "run_model",
    "run",
]

COLUMNS = [
    "model", "family", "params (M)", "input", "capture", "float ops", "SQNR (dB)",
    "ORT export", "ORT verify", "ORT SQNR (dB)", "OpenVINO verify", "torch.ao SQNR (dB)",
    "ORT quantize_static SQNR (dB)", "NNCF SQNR (dB)", "s",
]  # fmt: skip
SETTER = fxquant.default_calibration_qconfig_setter


@dataclass(frozen=True)
class CoverageConfig:
    """Sizes of one run.

    Attributes:
        models: names of :func:`zoo` entries to run (``None``: all of them).
        settle_batches: train-mode passes that settle BatchNorm statistics.
        calib_batches / batch_size: random calibration batches (every toolkit); the evaluation
            batch has the same size (the peers' float ONNX export has static shapes).
        time_limit_s: per model limit for all its stages (SIGALRM; main thread only).
        peers: run torch.ao, ONNX Runtime's quantize_static and NNCF too.
        threads: torch threads during the run (restored after).  1 by default: nothing here is
            timed precisely, and on a shared machine 2 threads that other processes preempt ran
            5-15x slower than 1 (OpenMP spinning).
        seed: seed of every model's weights and data.
        jobs: models run at once, each in its own process (default: one per ``threads`` CPU
            cores).
    """

    models: tuple[str, ...] | None = None
    settle_batches: int = 4
    calib_batches: int = 4
    batch_size: int = 8
    time_limit_s: float = 600.0
    peers: bool = True
    threads: int = 1
    seed: int = 0
    jobs: int | None = None


FULL = CoverageConfig()
QUICK = CoverageConfig(models=QUICK_MODELS, settle_batches=2, calib_batches=2, batch_size=4)


class _TimeLimit(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`_TimeLimit` in the block after ``seconds`` (no-op off the main thread)."""
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def _raise(signum, frame):
        raise _TimeLimit(f"time limit {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _sqnr(ref: Tensor, out: Tensor) -> float:
    ref, out = ref.detach().double(), out.detach().double().reshape(ref.shape)
    noise = (ref - out).pow(2).sum()
    return float("inf") if noise == 0 else float(10 * torch.log10(ref.pow(2).sum() / noise))


def _main_output(out: Any) -> Tensor:
    """The first tensor of a model output (:func:`fxquant.modelio.output_tensors` order)."""
    tensors = output_tensors(out)
    if not tensors:
        raise TypeError(f"no tensor in model output of type {type(out).__name__}")
    return tensors[0]


def _short(exc: BaseException, limit: int = 90) -> str:
    msg = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _failure_reason(exc: BaseException) -> str:
    """A short cell text for a failure (the log keeps the full error)."""
    msg = " ".join(str(exc).split())
    if "data-dependent" in msg:
        return "data-dependent Python control flow (torch.export)"
    return _short(exc, 70)


def _redraw_zero_linears(model: nn.Module) -> None:
    """Zero-initialised Linear layers (classifier heads) get N(0, 0.02^2) weights."""
    for m in model.modules():
        if isinstance(m, nn.Linear) and not m.weight.detach().any():
            with torch.no_grad():
                m.weight.normal_(0.0, 0.02)


def _settle_bn(model: nn.Module, spec: ModelSpec, batches: int, batch_size: int) -> None:
    """BatchNorm running statistics = cumulative average over random batches; then eval()."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        with torch.no_grad():
            for _ in range(batches):
                model(*spec.inputs(batch_size))
    model.eval()


def _capture_cell(summary: fxquant.debug.summary.Summary) -> str:
    islands = [r for r in summary.capture if r.name != "<forward>"]
    cell = summary.capture_mode
    return f"{cell} + {len(islands)} eager" if islands else cell


def _float_cell(summary: fxquant.debug.summary.Summary) -> str:
    """``N (kind counts)`` of the ops left in float."""
    kinds: Counter[str] = Counter()
    for r in summary.float_ops:
        if r.name.endswith(".scores") or "float_input_ops" in r.reason:
            kinds["softmax input"] += 1
        elif r.name.endswith(".mask"):
            kinds["attention mask"] += 1
        elif "not called" in r.reason:
            kinds["not reached"] += 1
        elif "Inf / NaN" in r.reason:
            kinds["Inf/NaN"] += 1
        elif "no quantization pattern" in r.reason:
            kinds[r.op_type] += 1
        else:
            kinds[r.reason.split(":")[0][:30]] += 1
    detail = ", ".join(f"{k} {v}" if v > 1 else k for k, v in kinds.most_common())
    return f"{len(summary.float_ops)} ({detail})" if summary.float_ops else "0"


def _verify_cell(report: Any) -> str:
    """``ok|FAIL <min identical>% / <max steps>`` over the outputs."""
    identical = min(d.identical for d in report.outputs)
    steps = [d.max_step_diff for d in report.outputs if d.max_step_diff is not None]
    flag = "ok" if report.ok() else "FAIL"
    return f"{flag} {100 * identical:.1f}% / {max(steps) if steps else '-'}"


def _prepared(model: nn.Module, calib: list[tuple[Tensor, ...]], backend: str) -> nn.Module:
    qmodel = fxquant.prepare(model, calib[0], SETTER, backend=backend)
    fxquant.calibrate(qmodel, calib, progress=False)
    return qmodel


def run_model(spec: ModelSpec, cfg: CoverageConfig, tmp: str,
              progress: Callable[[str, dict[str, Any]], None] | None = None,
              ) -> tuple[dict[str, Any], list]:
    """One table row, and the fxquant failures as ``(model, stage, traceback text)``.

    ``progress(stage, row)`` is called as each stage starts (with the row so far): what the
    parent of :func:`_isolated` reports when a runtime kills the process."""
    t0 = time.perf_counter()
    row: dict[str, Any] = {c: "-" for c in COLUMNS}
    row.update(model=spec.name, family=spec.source, input=spec.input_desc)
    failures: list[tuple[str, str, str]] = []
    stage = "float model"

    def attempt(name: str, fn) -> Any:
        if progress is not None:
            progress(name, row)
        try:
            return fn()
        except _TimeLimit:
            raise
        except Exception as exc:
            failures.append((spec.name, name, traceback.format_exc()))
            return exc

    try:
        with _time_limit(cfg.time_limit_s), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(cfg.seed)
            model = spec.build()
            row["params (M)"] = sum(p.numel() for p in model.parameters()) / 1e6
            _redraw_zero_linears(model)
            _settle_bn(model, spec, cfg.settle_batches, cfg.batch_size)
            calib = [spec.inputs(cfg.batch_size) for _ in range(cfg.calib_batches)]
            x = spec.inputs(cfg.batch_size)
            with torch.no_grad():
                ref = _main_output(model(*x))
            stage = "prepare"
            _fxquant_ort(model, calib, x, ref, tmp, row, attempt)
            stage = "OpenVINO"
            row["OpenVINO verify"] = _fxquant_openvino(model, calib, x, tmp, attempt)
            if cfg.peers:
                stage = "peers"
                if progress is not None:
                    progress(stage, row)
                _peers(model, calib, x, ref, tmp, row)
    except _TimeLimit as exc:
        column = {"prepare": "capture", "OpenVINO": "OpenVINO verify",
                  "peers": "NNCF SQNR (dB)"}.get(stage, "capture")
        row[column] = f"FAIL {exc} (at {stage})"
        failures.append((spec.name, stage, str(exc)))
    except Exception as exc:  # building / running the float model: not fxquant's failure
        row["capture"] = f"n/a: float model failed ({_short(exc, 60)})"
    row["s"] = time.perf_counter() - t0
    return row, failures


def _fxquant_ort(model, calib, x, ref, tmp, row, attempt) -> None:
    """prepare / calibrate / summary / SQNR / export / verify with the onnxruntime profile."""
    qmodel = attempt("prepare", lambda: _prepared(model, calib, "onnxruntime"))
    if isinstance(qmodel, Exception):
        row["capture"] = f"FAIL {_failure_reason(qmodel)}"
        return
    summary = fxquant.summary(qmodel)
    row["capture"], row["float ops"] = _capture_cell(summary), _float_cell(summary)
    with torch.no_grad():
        row["SQNR (dB)"] = _sqnr(ref, _main_output(qmodel(*x)))
    path = str(pathlib.Path(tmp) / "ort.onnx")
    t = time.perf_counter()
    done = attempt("export ORT", lambda: fxquant.export_onnx(qmodel, calib[0], path,
                                                             check=False))
    if isinstance(done, Exception):
        row["ORT export"] = f"FAIL {_failure_reason(done)}"
        return
    row["ORT export"] = f"ok ({time.perf_counter() - t:.1f} s)"
    report = attempt("verify ORT", lambda: fxquant.verify(qmodel, path, x, "onnxruntime",
                                                          tensors=False))
    row["ORT verify"] = (f"FAIL {_failure_reason(report)}" if isinstance(report, Exception)
                         else _verify_cell(report))
    out = attempt("run ORT", lambda: onnx_peers.run_onnx(path, onnx_peers.feeds(path, [x])[0]))
    if not isinstance(out, Exception):
        row["ORT SQNR (dB)"] = _sqnr(ref, out[0])


def _fxquant_openvino(model, calib, x, tmp, attempt) -> str:
    """prepare / calibrate / export / verify with the openvino profile, in OpenVINO."""
    qmodel = attempt("prepare OpenVINO", lambda: _prepared(model, calib, "openvino"))
    if isinstance(qmodel, Exception):
        return f"FAIL prepare: {_failure_reason(qmodel)}"
    path = str(pathlib.Path(tmp) / "ov.onnx")
    done = attempt("export OpenVINO", lambda: fxquant.export_onnx(qmodel, calib[0], path,
                                                                  check=False))
    if isinstance(done, Exception):
        return f"FAIL export: {_failure_reason(done)}"
    report = attempt("verify OpenVINO", lambda: fxquant.verify(qmodel, path, x, "openvino",
                                                               tensors=False))
    return f"FAIL {_failure_reason(report)}" if isinstance(report, Exception) else \
        _verify_cell(report)


def _peers(model, calib, x, ref, tmp, row) -> None:
    row["torch.ao SQNR (dB)"] = _torch_ao(model, calib, x, ref)
    flt = str(pathlib.Path(tmp) / "float.onnx")
    try:
        onnx_peers.export_float_onnx(model, calib[0], flt)
    except _TimeLimit:
        raise
    except Exception as exc:
        cell = f"FAIL float export: {_short(exc, 50)}"
        row["ORT quantize_static SQNR (dB)"] = row["NNCF SQNR (dB)"] = cell
        return
    feeds = onnx_peers.feeds(flt, calib)
    eval_feed = onnx_peers.feeds(flt, [x])[0]
    for column, quantize, name in (
        ("ORT quantize_static SQNR (dB)", onnx_peers.ort_quantize_static, "ort_qs.onnx"),
        ("NNCF SQNR (dB)", onnx_peers.nncf_quantize_onnx, "nncf.onnx"),
    ):
        out = str(pathlib.Path(tmp) / name)
        try:
            quantize(flt, feeds, out)
            row[column] = _sqnr(ref, onnx_peers.run_onnx(out, eval_feed)[0])
        except _TimeLimit:
            raise
        except Exception as exc:
            row[column] = f"FAIL {_short(exc, 60)}"


def _torch_ao(
    model: nn.Module, calib: list[tuple[Tensor, ...]], x: tuple[Tensor, ...], ref: Tensor
) -> float | str:
    """torch.ao FX with its x86 defaults: SQNR or ``FAIL <stage>: <error>``."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    stage = "prepare_fx"
    try:
        prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), calib[0])
        stage = "calibrate"
        with torch.no_grad():
            for batch in calib:
                prepared(*batch)
        stage = "convert_fx"
        converted = convert_fx(prepared)
        stage = "run"
        with torch.no_grad():
            return _sqnr(ref, _main_output(converted(*x)))
    except _TimeLimit:
        raise
    except Exception as exc:
        return f"FAIL {stage}: {_short(exc, 60)}"


def _ok(cell: Any) -> bool:
    return isinstance(cell, str) and cell.startswith("ok")


def _family_note(rows: list[dict[str, Any]]) -> str:
    """The same counts on the public model families of issue 12 (every row but the control-flow
    models: a data-dependent Python condition has no static graph, the export refuses it naming
    the source line)."""
    fam = [r for r in rows if r["family"] != "control-flow"]
    k = len(fam)
    exported = sum(_ok(r["ORT export"]) for r in fam)
    verified = sum(_ok(r["ORT verify"]) for r in fam)
    return (f"On the public model families ({k} rows: all but the {len(rows) - k} control-flow "
            f"models): exports {exported}/{k} ({100 * exported / max(k, 1):.0f}%), verifies in "
            f"ONNX Runtime {verified}/{k} ({100 * verified / max(k, 1):.0f}%).")


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    n = len(rows)
    prepared = [r for r in rows if not str(r["capture"]).startswith(("FAIL", "n/a", "-"))]
    exported = [r for r in rows if _ok(r["ORT export"])]
    verified = [r for r in rows if _ok(r["ORT verify"])]
    ov = [r for r in rows if _ok(r["OpenVINO verify"])]
    ov_ran = [r for r in rows if re.match(r"(ok|FAIL) \d", str(r["OpenVINO verify"]))]
    zero_float = [r for r in prepared if r["float ops"] == "0"]
    pct = lambda k: f"{k}/{n} ({100 * k / max(n, 1):.0f}%)"  # noqa: E731
    notes = [
        f"fxquant (onnxruntime profile) prepares and calibrates {pct(len(prepared))}, exports "
        f"{pct(len(exported))}, verifies in ONNX Runtime (>= 99% of output codes identical "
        f"with the simulation, <= 2 steps) {pct(len(verified))} (target >= 95%).",
        _family_note(rows),
        f"OpenVINO (openvino profile): runs {pct(len(ov_ran))}, agrees (>= 99%, <= 2 steps) on "
        f"{pct(len(ov))}; random-weight deep networks amplify one flipped code at the first "
        "layer, so its agreement is reported per model.",
        f"0 ops left in float (fxquant.summary, onnxruntime profile) on {len(zero_float)}/"
        f"{len(prepared)} prepared models; the rest are listed per model (the onnxruntime "
        "profile keeps softmax's input float: attention scores count).",
    ]
    not_exported = [r for r in rows if not _ok(r["ORT export"])]
    if not_exported:
        notes.append("not exported: " + "; ".join(
            f"{r['model']}: {r['ORT export'] if r['ORT export'] != '-' else r['capture']}"
            for r in not_exported))
    for column, name in (("torch.ao SQNR (dB)", "torch.ao FX"),
                         ("ORT quantize_static SQNR (dB)", "ORT quantize_static"),
                         ("NNCF SQNR (dB)", "NNCF")):
        ran = [r for r in rows if isinstance(r[column], float)]
        both = [r for r in ran if isinstance(r["SQNR (dB)"], float)]
        wins = [r for r in both if r["SQNR (dB)"] >= r[column]]
        fails = Counter(str(r[column]).split(":")[0] for r in rows
                        if str(r[column]).startswith("FAIL"))
        notes.append(
            f"{name} runs {len(ran)}/{n}; fxquant SQNR >= {name} on {len(wins)}/{len(both)} "
            "both run" + ("; fails: " + ", ".join(f"{k} x{v}" for k, v in fails.items())
                          if fails else "") + ".")
    return notes


_CRASH_COLUMN = {
    "prepare": "capture", "export ORT": "ORT export", "verify ORT": "ORT verify",
    "run ORT": "ORT SQNR (dB)", "prepare OpenVINO": "OpenVINO verify",
    "export OpenVINO": "OpenVINO verify", "verify OpenVINO": "OpenVINO verify",
}
"""Stage -> the cell that reports a crash of the process in it (peers: NNCF's column)."""


def _child(name: str, cfg: CoverageConfig, conn: Any) -> None:
    """Body of the per-model process: stage reports, then the row."""
    torch.set_num_threads(cfg.threads)
    with tempfile.TemporaryDirectory(prefix="fxquant_cov_") as tmp:
        row, failures = run_model(zoo()[name], cfg, tmp,
                                  progress=lambda stage, row: conn.send(("stage", stage, row)))
    conn.send(("done", row, failures))
    conn.close()


def _isolated(name: str, cfg: CoverageConfig,
              target: Callable[[str, CoverageConfig, Any], None] = _child,
              ) -> tuple[dict[str, Any], list]:
    """:func:`run_model` in a child process (``target``, :func:`_child`): a runtime that
    crashes the process (OpenVINO's ``compile_model`` segfaulted on one export) costs one cell
    -- the stage it died in, and the row so far -- not the suite."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(name, cfg, child), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    child.close()
    stage, row, result = "float model", None, None
    while True:
        try:
            message = parent.recv()
        except EOFError:
            break
        if message[0] == "stage":
            stage, row = message[1], message[2]
        else:
            result = message[1], message[2]
    proc.join()
    if result is not None:
        return result
    code = proc.exitcode
    why = (f"signal {signal.Signals(-code).name}" if code is not None and code < 0
           else f"exit code {code}")
    row = dict(row) if row is not None else {c: "-" for c in COLUMNS}
    row.update(model=name, s=time.perf_counter() - t0)
    row[_CRASH_COLUMN.get(stage, "NNCF SQNR (dB)")] = f"FAIL process died ({why}) in {stage}"
    return row, [(name, stage, f"process died ({why})")]


def run(quick: bool = False, models: tuple[str, ...] | None = None) -> SuiteResult:
    """The suite entry point for ``bench/run.py`` (``models``: run only these)."""
    cfg = QUICK if quick else FULL
    specs = zoo()
    names = models or cfg.models or tuple(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {sorted(specs)}")
    ensure_torchvision_importable()
    result = SuiteResult(
        "coverage",
        f"Deployment coverage: {len(names)} models, fxquant prepare -> export -> ONNX Runtime / "
        "OpenVINO, vs torch.ao FX, ORT quantize_static, NNCF",
        COLUMNS,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    jobs = cfg.jobs or max(1, (os.cpu_count() or 1) // cfg.threads)
    rows: dict[str, dict[str, Any]] = {}
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_isolated, name, cfg): name for name in names}
            for future in concurrent.futures.as_completed(futures):
                row, failures = future.result()
                rows[futures[future]] = row
                cells = (f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c])
                         for c in COLUMNS)
                print("  " + " | ".join(cells), flush=True)
                for model, stage, tb in failures:  # the full story for whoever fixes it
                    print(f"  -- failure: {model} at {stage}\n{tb}", flush=True)
    finally:
        torch.set_num_threads(threads)
    result.rows = [rows[name] for name in names]
    result.notes = [
        *_notes(result.rows),
        f"data: random N(0,1) inputs / random token ids (seed {cfg.seed}); BN settled on "
        f"{cfg.settle_batches} batches; {cfg.calib_batches} calibration batches of "
        f"{cfg.batch_size}, evaluation on a held-out batch of {cfg.batch_size}; "
        "default_calibration_qconfig_setter; per-model limit "
        f"{cfg.time_limit_s:.0f} s; {cfg.threads} torch thread(s) per model, {jobs} model "
        "process(es) at once (s: wall time of the model's process).",
    ]
    return result


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--full"]
    res = run(quick="--full" not in sys.argv, models=tuple(args) or None)
    print(markdown_table(res))
    print("\n".join(f"- {n}" for n in res.notes))
