"""Capture coverage: does W8A8 PTQ work on models as they come, fxquant vs torch.ao FX?

The zoo (:mod:`bench.coverage_zoo`; control flow from :mod:`bench.control_flow`): timm
architectures of every family (ResNets, mobile CNNs with SE / hard-swish, DenseNet, RegNet,
ConvNeXt, ViT / DeiT, Swin, MLP-Mixer, PoolFormer, MobileViT, LeViT ...) at small input sizes, tiny
transformers models (BERT, GPT-2, T5 encoder, ViT) built from their config classes, and small
models with data-dependent control flow.  All weights are random (fixed seed); BatchNorm
statistics are first settled on random inputs (train-mode passes with ``momentum=None``, i.e. a
cumulative average, then ``eval()``).  timm's own initialisation is kept (e.g. ResNets'
zero-initialised last BatchNorm of every block), except that all-zero Linear weights (MLP-Mixer's
head) are redrawn, since an identically zero output has no SQNR.

Per model, on the same random data (calibration batches, a held-out evaluation batch):

* fxquant as an x86 user would call it: ``prepare(model, x, default_calibration_qconfig_setter,
  backend="x86")``, ``calibrate``, run; output SQNR vs the float model; what stayed float and why
  (``fxquant.summary``: untraceable forward run eagerly, untraceable submodules, ops not reached);
  ``export_onnx`` to a temporary file and one run in ONNX Runtime (SQNR of that output too);
* torch.ao FX: ``prepare_fx(model, get_default_qconfig_mapping("x86"), x)``, calibrate,
  ``convert_fx``, run on torch's x86 int8 kernels; output SQNR vs float or the error;
* optional (``int16_sensitive``): for models below :data:`LOW_SQNR_DB`, fxquant's int16
  activations -- everywhere (``calibration_8bit_weight_16bit_act_qconfig_setter``, W8A16) and on
  the 10% most sensitive ops only (``sensitivity``: L1, one quantizer on at a time, two
  examples; then ``sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter(ratio=0.1)``;
  skipped where the sensitivity pass would exceed ``int16_budget_s``).

SQNR = 10 log10(sum(ref^2) / sum((ref - out)^2)) over the whole output (logits, or the last
hidden state for an encoder).  Every stage runs in ``try`` with a per-model time limit; a
failure is a cell with the error, never a crash of the suite.

timm and transformers import torchvision, whose import can fail next to a CPU torch:
:func:`bench._tv_shim.ensure_torchvision_importable` runs first.

``python -m bench.coverage [--full] [name ...]`` runs the named models (default: the quick set)
with the quick (or ``--full``) sizes and prints the table.
"""

from __future__ import annotations

import contextlib
import copy
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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import fxquant
from bench._tv_shim import ensure_torchvision_importable
from bench.common import SuiteResult, markdown_table
from bench.coverage_zoo import HF_MODELS, QUICK_MODELS, TIMM_MODELS, ModelSpec, zoo

__all__ = [
    "ModelSpec",
    "CoverageConfig",
    "FULL",
    "QUICK",
    "COLUMNS",
    "TIMM_MODELS",
    "HF_MODELS",
    "LOW_SQNR_DB",
    "ensure_torchvision_importable",
    "zoo",
    "run_model",
    "run",
]

COLUMNS = [
    "model", "source", "params (M)", "input", "prepare", "calibrate", "run", "export+ORT",
    "float ops (islands)", "fxquant SQNR (dB)", "ORT SQNR (dB)", "W8A16 SQNR (dB)",
    "int16-sensitive SQNR (dB)", "torch.ao", "torch.ao SQNR (dB)", "fxquant >= torch.ao", "s",
]  # fmt: skip
LOW_SQNR_DB = 15.0
"""The issue's threshold for a poor W8A8 output SQNR."""
TIE_DB = 0.5
"""Misses smaller than this are noise-level (named as such in the notes, still misses)."""

@dataclass(frozen=True)
class CoverageConfig:
    """Sizes of one run.

    Attributes:
        models: names of :func:`zoo` entries to run (``None``: all of them).
        settle_batches: train-mode passes that settle BatchNorm statistics.
        calib_batches / batch_size: random calibration batches (both toolkits).
        eval_batch: examples in the held-out evaluation batch.
        time_limit_s: per model limit for all its stages (SIGALRM; main thread only).
        int16_sensitive: run the int16 variants (W8A16, int16 on sensitive ops) below
            :data:`LOW_SQNR_DB`.
        int16_budget_s: skip that variant where its sensitivity table would take longer.
        threads: torch threads during the run (restored after).  1 by default: nothing here is
            timed, and on a shared machine 2 threads that other processes preempt ran 5-15x
            slower than 1 (OpenMP spinning).
        seed: seed of every model's weights and data.
    """

    models: tuple[str, ...] | None = None
    settle_batches: int = 4
    calib_batches: int = 4
    batch_size: int = 8
    eval_batch: int = 16
    time_limit_s: float = 150.0
    int16_sensitive: bool = True
    int16_budget_s: float = 60.0
    threads: int = 1
    seed: int = 0


FULL = CoverageConfig()
QUICK = CoverageConfig(
    models=QUICK_MODELS, settle_batches=2, calib_batches=2, batch_size=4, eval_batch=8,
    int16_sensitive=False,
)  # fmt: skip

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
    """Logits (or the last hidden state) of a model output: tensor, ModelOutput, tuple."""
    if isinstance(out, Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, Tensor):
            return value
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, list | tuple):
        return next(_main_output(o) for o in out if o is not None)
    raise TypeError(f"no tensor in model output of type {type(out).__name__}")


def _short(exc: BaseException, limit: int = 90) -> str:
    msg = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _redraw_zero_linears(model: nn.Module) -> None:
    """Zero-initialised Linear layers (e.g. timm's MLP-Mixer head) get N(0, 0.02^2) weights:
    an identically zero output has no SQNR."""
    for m in model.modules():
        if isinstance(m, nn.Linear) and not m.weight.detach().any():
            with torch.no_grad():
                m.weight.normal_(0.0, 0.02)


def _failure_reason(exc: BaseException) -> str:
    """A short cell text for an fxquant failure (the notes and the log keep the full error)."""
    msg = str(exc)
    if m := re.search(r"op '([^']+)' \((\w+)\) has no ONNX emitter", msg):
        return f"no ONNX emitter for {m[2]} ({m[1]})"
    if "needs a model whose forward fxquant captured with torch.fx" in msg:
        return "forward captured eagerly: no fx graph to export"
    if m := re.search(r"op '([^']+)' is a float island", msg):
        return f"float island {m[1]!r} cannot be exported"
    if "ONNXRuntimeError" in msg:
        node = re.search(r"Name:'([^']+)'", msg)
        detail = msg.rsplit(". ", 1)[-1][-60:].strip()
        return f"ORT run fails at {node[1] if node else '?'}: {detail}"
    return _short(exc, 70)


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


def _float_summary(qmodel: nn.Module) -> str:
    """``N (reason counts)`` of the ops that stayed float."""
    rows = fxquant.summary(qmodel).float_ops
    kinds: Counter[str] = Counter()
    for r in rows:
        if r.name == "<forward>":
            kinds["forward eager"] += 1
        elif "float island" in r.reason:
            kinds["untraceable submodule"] += 1
        elif "not called" in r.reason:
            kinds["not reached"] += 1
        elif "Inf / NaN" in r.reason:
            kinds["Inf/NaN op"] += 1
        else:
            kinds[r.reason.split(":")[0][:30]] += 1
    detail = ", ".join(f"{k} {v}" if v > 1 else k for k, v in kinds.items())
    return f"{len(rows)} ({detail})" if rows else "0"


def _ort_output(path: str, inputs: tuple[Tensor, ...]) -> Tensor:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs, strict=False)}
    return torch.from_numpy(sess.run(None, feed)[0])


def _calibrated(
    model: nn.Module, example: tuple[Tensor, ...], setter: Any, calib: list[tuple[Tensor, ...]]
) -> nn.Module:
    qmodel = fxquant.prepare(model, example, setter, backend="x86")
    fxquant.calibrate(qmodel, calib, progress=False)
    return qmodel


_FX_STAGES = ("prepare", "calibrate", "run", "export+ORT")
_STAGE_COLUMN = {
    **{st: st for st in _FX_STAGES},
    "torch.ao": "torch.ao",
    "int16-sensitive": "int16-sensitive SQNR (dB)",
}


def run_model(spec: ModelSpec, cfg: CoverageConfig, tmp: str) -> tuple[dict[str, Any], list]:
    """One table row, and the fxquant failures as ``(model, stage, traceback text)``."""
    t0 = time.perf_counter()
    row: dict[str, Any] = {c: "-" for c in COLUMNS}
    row.update(model=spec.name, source=spec.source, input=spec.input_desc)
    failures: list[tuple[str, str, str]] = []
    stage = "float model"
    try:
        with _time_limit(cfg.time_limit_s), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(cfg.seed)
            model = spec.build()
            row["params (M)"] = sum(p.numel() for p in model.parameters()) / 1e6
            _redraw_zero_linears(model)
            _settle_bn(model, spec, cfg.settle_batches, cfg.batch_size)
            calib = [spec.inputs(cfg.batch_size) for _ in range(cfg.calib_batches)]
            x = spec.inputs(cfg.eval_batch)
            with torch.no_grad():
                ref = _main_output(model(*x))
            qmodel = None
            for stage in _FX_STAGES:
                try:
                    qmodel = _fxquant_stage(stage, model, qmodel, calib, x, ref, tmp, row)
                    row[stage] = "ok"
                except _TimeLimit:
                    raise
                except Exception as exc:
                    row[stage] = f"FAIL {_failure_reason(exc)}"
                    failures.append((spec.name, stage, traceback.format_exc()))
                    if stage != "export+ORT":
                        break
            stage = "torch.ao"
            row["torch.ao"], row["torch.ao SQNR (dB)"] = _torch_ao(model, calib, x, ref)
            stage = "int16-sensitive"
            fx_sqnr = row["fxquant SQNR (dB)"]
            if cfg.int16_sensitive and isinstance(fx_sqnr, float) and fx_sqnr < LOW_SQNR_DB:
                row["W8A16 SQNR (dB)"] = _w8a16(model, calib, x, ref)
                mixed = _int16_sensitive(model, qmodel, calib, x, ref, cfg.int16_budget_s)
                row["int16-sensitive SQNR (dB)"] = mixed
    except _TimeLimit as exc:
        row[_STAGE_COLUMN.get(stage, "prepare")] = f"FAIL {exc}"
        if stage in _FX_STAGES:
            failures.append((spec.name, stage, str(exc)))
    except Exception as exc:  # building / settling the float model: not fxquant's failure
        row["prepare"] = f"n/a: float model failed ({_short(exc, 60)})"
    row["fxquant >= torch.ao"] = _verdict(row["fxquant SQNR (dB)"], row["torch.ao SQNR (dB)"])
    row["s"] = time.perf_counter() - t0
    return row, failures


def _fxquant_stage(
    stage: str,
    model: nn.Module,
    qmodel: nn.Module | None,
    calib: list[tuple[Tensor, ...]],
    x: tuple[Tensor, ...],
    ref: Tensor,
    tmp: str,
    row: dict[str, Any],
) -> nn.Module | None:
    """Run one fxquant stage (fills its result cells); returns the prepared model."""
    if stage == "prepare":
        qmodel = fxquant.prepare(
            model, calib[0], fxquant.default_calibration_qconfig_setter, backend="x86"
        )
        row["float ops (islands)"] = _float_summary(qmodel)
    elif stage == "calibrate":
        fxquant.calibrate(qmodel, calib, progress=False)
    elif stage == "run":
        with torch.no_grad():
            row["fxquant SQNR (dB)"] = _sqnr(ref, _main_output(qmodel(*x)))
    else:
        path = str(pathlib.Path(tmp) / "model.onnx")
        fxquant.export_onnx(qmodel, calib[0], path)
        row["ORT SQNR (dB)"] = _sqnr(ref, _ort_output(path, x))
    return qmodel


def _verdict(fx_sqnr: Any, ao_sqnr: Any) -> str:
    if not isinstance(fx_sqnr, float):
        return "NO (fxquant failed)"
    if not isinstance(ao_sqnr, float):
        return "yes (torch.ao failed)"
    return "yes" if fx_sqnr >= ao_sqnr else "NO"


def _torch_ao(
    model: nn.Module, calib: list[tuple[Tensor, ...]], x: tuple[Tensor, ...], ref: Tensor
) -> tuple[str, float | str]:
    """torch.ao FX with its x86 defaults: ("ok" | "FAIL <stage>: <error>", SQNR or "-")."""
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
            return "ok", _sqnr(ref, _main_output(converted(*x)))
    except _TimeLimit:
        raise
    except Exception as exc:
        return f"FAIL {stage}: {_short(exc, 70)}", "-"


def _setter_sqnr(
    model: nn.Module, setter: Any, calib: list[tuple[Tensor, ...]], x: tuple[Tensor, ...],
    ref: Tensor,
) -> str | float:
    """SQNR of ``model`` prepared with ``setter`` and calibrated, or ``"FAIL <reason>"``."""
    try:
        qmodel = _calibrated(model, calib[0], setter, calib)
        with torch.no_grad():
            return _sqnr(ref, _main_output(qmodel(*x)))
    except _TimeLimit:
        raise
    except Exception as exc:
        return f"FAIL {_short(exc, 60)}"


def _w8a16(
    model: nn.Module, calib: list[tuple[Tensor, ...]], x: tuple[Tensor, ...], ref: Tensor
) -> str | float:
    """SQNR with int16 activations everywhere (``calibration_8bit_weight_16bit_act_...``)."""
    setter = fxquant.calibration_8bit_weight_16bit_act_qconfig_setter
    return _setter_sqnr(model, setter, calib, x, ref)


def _int16_sensitive(
    model: nn.Module,
    qmodel: nn.Module,
    calib: list[tuple[Tensor, ...]],
    x: tuple[Tensor, ...],
    ref: Tensor,
    budget_s: float,
) -> str | float:
    """SQNR with int16 activations on the 10% most sensitive ops (fxquant's public setters).

    The sensitivity table (one quantizer on at a time) costs a forward pass per quantizer on
    two examples; it is skipped when that estimate exceeds ``budget_s``.
    """
    probe = tuple(t[:2] for t in calib[0])
    quantizers = sum(isinstance(m, fxquant.FakeQuantize) for m in qmodel.modules())
    t = time.perf_counter()
    with torch.no_grad():
        qmodel(*probe)
    estimate = 2 * quantizers * (time.perf_counter() - t)
    if estimate > budget_s:
        return f"skipped (~{estimate:.0f} s)"
    try:
        table = fxquant.sensitivity(qmodel, [probe], metric="L1", progress=False)
    except _TimeLimit:
        raise
    except Exception as exc:
        return f"FAIL {_short(exc, 60)}"
    setter = (
        fxquant.sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter(table, ratio=0.1),
        fxquant.default_calibration_qconfig_setter,
    )
    return _setter_sqnr(model, setter, calib, x, ref)


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    n = len(rows)
    ran = [r for r in rows if r["prepare"] == r["calibrate"] == r["run"] == "ok"]
    exported = [r for r in ran if r["export+ORT"] == "ok"]
    ao_failed = [r for r in rows if r["torch.ao"] != "ok"]
    ao_ok = [r for r in rows if r["torch.ao"] == "ok"]
    ao_low = [r for r in ao_ok if r["torch.ao SQNR (dB)"] < LOW_SQNR_DB]
    timm_ao = [r for r in ao_ok if r["source"] == "timm"]
    timm_ao_low = [r for r in timm_ao if r["torch.ao SQNR (dB)"] < LOW_SQNR_DB]
    both = [r for r in ran if r["torch.ao"] == "ok"]
    higher = [r for r in both if r["fxquant SQNR (dB)"] > r["torch.ao SQNR (dB)"]]
    misses = [r for r in rows if not r["fxquant >= torch.ao"].startswith("yes")]
    fx_low = [r for r in ran if r["fxquant SQNR (dB)"] < LOW_SQNR_DB]
    reasons = Counter(r["torch.ao"].split(":")[0] + ":" + r["torch.ao"].split(":")[1]
                      for r in ao_failed)  # fmt: skip
    by_source = Counter(r["source"] for r in ao_failed)
    notes = [
        f"fxquant prepares, calibrates and runs {len(ran)}/{n} models "
        f"({100 * len(ran) / max(n, 1):.0f}%; target 100%), exports + runs in ONNX Runtime "
        f"{len(exported)}/{n}.",
        f"torch.ao prepare_fx/convert_fx (x86 defaults) fails on {len(ao_failed)}/{n} models ("
        + ", ".join(f"{s} {c}" for s, c in by_source.items())
        + "): "
        + "; ".join(f"{k} x{v}" for k, v in reasons.most_common())
        + ".",
        f"torch.ao runs {len(ao_ok)} models; {len(ao_low)} of them below {LOW_SQNR_DB:g} dB "
        f"({len(timm_ao_low)}/{len(timm_ao)} timm models; the issue expects more than half).",
        f"fxquant SQNR > torch.ao SQNR on {len(higher)}/{len(both)} models both run; fxquant >= "
        f"torch.ao (torch.ao failure counts as a win) on {n - len(misses)}/{n} (target: every "
        "model).",
        f"fxquant below {LOW_SQNR_DB:g} dB on {len(fx_low)}/{len(ran)}: "
        + (", ".join(f"{r['model']} {r['fxquant SQNR (dB)']:.1f}" for r in fx_low) or "none")
        + ".",
    ]
    if misses:
        close = [r for r in misses if _gap(r) < TIE_DB]
        notes.append(
            f"misses ({len(close)} of {len(misses)} within {TIE_DB:g} dB): "
            + "; ".join(
                f"{r['model']} (fxquant {_fmt_db(r['fxquant SQNR (dB)'])} vs torch.ao "
                f"{_fmt_db(r['torch.ao SQNR (dB)'])})"
                for r in misses
            )
        )
    kinds: Counter[str] = Counter()
    for r in rows:
        for st in _FX_STAGES:
            if str(r[st]).startswith("FAIL"):
                kinds[f"{st}: " + re.sub(r" \(.*|'[^']*' |at \S+: ", "", r[st][5:])] += 1
    if kinds:
        notes.append(
            "fxquant failures by kind: " + "; ".join(f"{k} x{v}" for k, v in kinds.most_common())
        )
    return notes


def _gap(row: dict[str, Any]) -> float:
    """torch.ao's SQNR minus fxquant's (inf where fxquant has none)."""
    fx, ao = row["fxquant SQNR (dB)"], row["torch.ao SQNR (dB)"]
    return ao - fx if isinstance(fx, float) and isinstance(ao, float) else float("inf")


def _fmt_db(v: Any) -> str:
    return f"{v:.1f} dB" if isinstance(v, float) else str(v)


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
        f"Capture coverage: {len(names)} models, fxquant (x86 W8A8) vs torch.ao FX (x86)",
        COLUMNS,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        for name in names:
            with tempfile.TemporaryDirectory(prefix="fxquant_cov_") as tmp:
                row, failures = run_model(specs[name], cfg, tmp)
            result.rows.append(row)
            cells = (f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS)
            print("  " + " | ".join(cells), flush=True)
            for model, stage, tb in failures:  # the full story for whoever fixes it
                print(f"  -- fxquant failure: {model} at {stage}\n{tb}", flush=True)
    finally:
        torch.set_num_threads(threads)
    result.notes = [
        *_notes(result.rows),
        f"data: random N(0,1) images / random token ids (seed {cfg.seed}); BN settled on "
        f"{cfg.settle_batches} batches; {cfg.calib_batches} calibration batches of "
        f"{cfg.batch_size}; SQNR on a held-out batch of {cfg.eval_batch}; timm models with "
        "num_classes=100, ViT-style models at a reduced img_size; per-model limit "
        f"{cfg.time_limit_s:.0f} s; {cfg.threads} torch thread(s).",
    ]
    return result


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--full"]
    res = run(quick="--full" not in sys.argv, models=tuple(args) or None)
    print(markdown_table(res))
    print("\n".join(f"- {n}" for n in res.notes))
