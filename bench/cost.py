"""Cost of quantization: QAT training step, calibration and range search, fxquant vs peers.

Model: :class:`bench.models.ResidualCNN` (ResNet-18-style, width 16, random weights) on random
32x32 images at batch 64 (quick: width 8, batch 16); ``torch.get_num_threads()`` threads.

* **QAT step** -- one SGD step (forward, cross-entropy, backward, ``opt.step()``) of the QAT
  model, as a ratio to the same step of the float model (BatchNorm in training mode in both).
  fxquant: ``prepare(..., default_qat_qconfig_setter)`` (moving-average min-max activations,
  per-channel min-max weights, conv + BN folded fold-aware as torch.ao does), calibrated on one
  batch, then ``FakeQuantState.QAT``; with the default pure-torch kernels, with the opt-in fused
  kernels (:mod:`fxquant.numerics.fused`), and with ``fold_bn=False`` (BN kept separate: what
  the fake quantizers themselves cost).  torch.ao: ``prepare_qat_fx`` with
  ``get_default_qat_qconfig_mapping("x86")``.  NNCF: ``nncf.quantize`` then training the
  returned model.
* **Calibration** -- one calibration forward (no grad, eval) as a ratio to a float forward.
  fxquant: every op quantized with a global ``get_qconfig(observer=...)`` (weights per-channel
  min-max) in ``FakeQuantState.CALIBRATION``, for min-max and histogram (entropy) observers and
  for ``default_calibration_qconfig_setter`` (MSE histograms).  torch.ao: ``prepare_fx`` with
  ``MinMaxObserver`` or ``HistogramObserver`` activations and per-channel weights.  NNCF:
  ``nncf.quantize`` (statistics collection + ranges, no bias correction) with ``n`` and ``3n``
  batches; the per-batch cost is the slope ``(T(3n) - T(n)) / 2n`` (fixed setup excluded).
* **Range search** -- after histogram calibration, the time to compute the range of every
  histogram quantizer (``update_qparams``) with entropy, MSE and percentile: (A) activations
  with histograms, weights min-max (the usual setup); (B) every quantizer, per-channel weight
  histograms included.

Timing: rounds in which the variants take turns call by call (``block`` calls each) and keep
their fastest call; ratios are medians over rounds of (variant / float baseline of the same
round), so that load from other processes falls on all variants alike.
Peers that cannot be imported give a row with the reason from ``bench/results/peers.json``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pathlib
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from bench.common import SuiteResult
from bench.models import ResidualCNN
from fxquant.fake_quant import FakeQuantize
from fxquant.numerics import fused as fused_mod
from fxquant.numerics.range_search import RangeMethod
from fxquant.observers import HistogramObserver, MinMaxObserver

__all__ = ["CostConfig", "FULL", "QUICK", "run"]

COLUMNS = ["measure", "toolkit", "variant", "ms", "ratio", "peer / issue figure", "note"]
PEERS_JSON = pathlib.Path(__file__).resolve().parent / "results" / "peers.json"
TARGET_QAT = 1.10
TARGET_CALIB_HIST = 1.15
TARGET_CALIB_MINMAX = 1.05
TARGET_RANGE_S = 2.0
ISSUE = {  # figures the issue measured for the peers
    "qat": "torch.ao 1.37x, AIMET 1.47x, NVIDIA 1.19x",
    "calib": "torch.ao Histogram 1.47x, AIMET 1.29x / 3.38x, NVIDIA Histogram 1.35x",
    "range": "NVIDIA ~108 s for 21 quantizers",
}


@dataclass(frozen=True)
class CostConfig:
    """Sizes of one run."""

    width: int
    batch: int
    rounds: int
    block: int
    nncf_batches: int  # n of the NNCF calibration slope (0: skip NNCF calibration)
    heavy: bool  # NNCF QAT, the fused (compiling) QAT variant, range search setup B


FULL = CostConfig(width=16, batch=64, rounds=5, block=2, nncf_batches=2, heavy=True)
QUICK = CostConfig(width=8, batch=16, rounds=2, block=1, nncf_batches=0, heavy=False)


# -- timing ------------------------------------------------------------------------------------
def _interleaved(calls: dict[str, Callable[[], Any]], base: str, cfg: CostConfig):
    """``{name: (median seconds, median ratio to base)}`` over ``cfg.rounds`` rounds.

    In a round the calls take turns, one call each, ``cfg.block`` times, and each keeps its
    fastest call (the one least disturbed by other processes); ratios are taken within a round.
    """
    for fn in calls.values():  # warmup
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(cfg.rounds):
        best = dict.fromkeys(calls, float("inf"))
        for _ in range(cfg.block):
            for name, fn in calls.items():
                t = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t)
        for name in calls:
            times[name].append(best[name])
    out = {}
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, times[base], strict=True)]
        out[name] = (statistics.median(ts), statistics.median(ratios))
    return out


# -- peers -------------------------------------------------------------------------------------
def _peers_json(key: str) -> dict[str, Any]:
    try:
        return json.loads(PEERS_JSON.read_text())["peers"].get(key, {})
    except (OSError, ValueError, KeyError, AttributeError):
        return {}


def _short_reason(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if not lines:
        return "unknown"
    return lines[-1][:160]


def _peer_status(module: str, key: str) -> tuple[Any, str]:
    """``(module, "")`` if importable, else ``(None, reason)``.

    A peer that ``bench/install_peers.py`` recorded as not importable is not imported again
    (a half-failed import can leave torch's operator registry modified).
    """
    info = _peers_json(key)
    if info and not info.get("import_ok", True):
        return None, _short_reason(info.get("reason") or "recorded as not importable")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return __import__(module), ""
    except Exception as exc:  # any import failure is a reason to report
        return None, _short_reason(f"{type(exc).__name__}: {exc}")


def _not_installed_rows(res: SuiteResult, measure: str) -> None:
    for module, key, label in (
        ("aimet_torch", "aimet", "AIMET"),
        ("pytorch_quantization", "pytorch_quantization", "NVIDIA pytorch-quantization"),
    ):
        mod, why = _peer_status(module, key)
        if mod is None:
            res.rows.append({"measure": measure, "toolkit": label, "note": f"not installed: {why}"})
        else:
            res.rows.append(
                {"measure": measure, "toolkit": label, "note": "importable; not wired up yet"}
            )


# -- models ------------------------------------------------------------------------------------
def _settled_model(cfg: CostConfig, x: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    model = ResidualCNN(width=cfg.width)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    return model.eval()


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _fx_qat(model: nn.Module, x: torch.Tensor, fold_bn: bool = True) -> nn.Module:
    qat = fxquant.prepare(model, x, fxquant.default_qat_qconfig_setter, fold_bn=fold_bn)
    fxquant.calibrate(qat, [x], progress=False)
    fxquant.set_fake_quantize(qat, fxquant.FakeQuantState.QAT)
    return qat


def _torch_ao_qat(model: nn.Module, x: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    return prepare_qat_fx(
        copy.deepcopy(model).train(), get_default_qat_qconfig_mapping("x86"), (x,)
    )


def _nncf_quantize(nncf: Any, model: nn.Module, data: list[torch.Tensor]) -> nn.Module:
    logging.getLogger("nncf").setLevel(logging.ERROR)
    return nncf.quantize(
        copy.deepcopy(model).eval(),
        nncf.Dataset(data),
        subset_size=len(data),
        fast_bias_correction=None,  # None: no bias correction, only statistics + ranges
    )


# -- QAT ---------------------------------------------------------------------------------------
def _qat_rows(res: SuiteResult, cfg: CostConfig, model, x, y, summary) -> None:
    calls: dict[str, Callable[[], None]] = {"float": _step(copy.deepcopy(model), x, y)}
    meta = {"float": ("float (torch)", "SGD step")}
    errors: dict[str, tuple[str, str, str]] = {}

    def add(name: str, toolkit: str, variant: str, build: Callable[[], Callable[[], None]]):
        try:
            calls[name] = build()
            meta[name] = (toolkit, variant)
        except Exception as exc:  # a peer that fails is a row with its error
            errors[name] = (toolkit, variant, f"{type(exc).__name__}: {exc}".splitlines()[0])

    add(
        "fx",
        "fxquant",
        "default (pure torch kernels, BN folded)",
        lambda: _step(_fx_qat(model, x), x, y),
    )
    with fused_mod.fused_kernels(True) as fused_ok:
        pass
    if fused_ok and cfg.heavy:

        def fused_step():
            inner = _step(_fx_qat(model, x), x, y)

            def step():
                with fused_mod.fused_kernels(True):
                    inner()

            return step

        add("fx_fused", "fxquant", "fused kernels (opt-in), BN folded", fused_step)
    add(
        "fx_nofold",
        "fxquant",
        "default kernels, fold_bn=False",
        lambda: _step(_fx_qat(model, x, fold_bn=False), x, y),
    )
    add(
        "ao",
        "torch.ao",
        "prepare_qat_fx, x86 default QAT qconfig",
        lambda: _step(_torch_ao_qat(model, x), x, y),
    )
    nncf, why = _peer_status("nncf", "nncf") if cfg.heavy else (None, "skipped in quick mode")
    if nncf is not None:
        add(
            "nncf",
            "NNCF",
            f"nncf.quantize + training ({nncf.__version__})",
            lambda: _step(_nncf_quantize(nncf, model, [x]), x, y),
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timed = _interleaved(calls, "float", cfg)
    for name, (t, r) in timed.items():
        toolkit, variant = meta[name]
        row = {
            "measure": "QAT step / float step",
            "toolkit": toolkit,
            "variant": variant,
            "ms": t * 1e3,
            "ratio": r,
        }
        if name == "ao":
            row["peer / issue figure"] = "issue: 1.37x"
        res.rows.append(row)
        summary[f"qat:{name}"] = r
    for toolkit, variant, err in errors.values():
        res.rows.append(
            {
                "measure": "QAT step / float step",
                "toolkit": toolkit,
                "variant": variant,
                "note": f"failed: {err}",
            }
        )
    if nncf is None:
        note = why if not cfg.heavy else f"not installed: {why}"
        res.rows.append({"measure": "QAT step / float step", "toolkit": "NNCF", "note": note})
    _not_installed_rows(res, "QAT step / float step")


# -- calibration -------------------------------------------------------------------------------
def _fx_calib_model(model, x, observer) -> nn.Module:
    qc = fxquant.get_qconfig(observer=observer, out_dtype=fxquant.qint8)
    qm = fxquant.prepare(model, x, qc)
    qm.eval()
    fxquant.set_fake_quantize(qm, fxquant.FakeQuantState.CALIBRATION)
    return qm


def _ao_calib_model(model, x, hist: bool) -> nn.Module:
    from torch.ao.quantization import (
        HistogramObserver as AoHist,
    )
    from torch.ao.quantization import (
        MinMaxObserver as AoMinMax,
    )
    from torch.ao.quantization import (
        QConfig,
        QConfigMapping,
        default_per_channel_weight_observer,
    )
    from torch.ao.quantization.quantize_fx import prepare_fx

    act = AoHist.with_args(reduce_range=True) if hist else AoMinMax.with_args(reduce_range=True)
    mapping = QConfigMapping().set_global(
        QConfig(activation=act, weight=default_per_channel_weight_observer)
    )
    return prepare_fx(copy.deepcopy(model).eval(), mapping, (x,))


def _calib_rows(res: SuiteResult, cfg: CostConfig, model, x, summary) -> None:
    measure = "calibration fwd / float fwd"

    def fwd(m):
        def go():
            with torch.no_grad():
                m(x)

        return go

    builds = {
        "float": ("float (torch)", "forward, no grad", lambda: model),
        "fx_minmax": (
            "fxquant",
            "MinMaxObserver",
            lambda: _fx_calib_model(model, x, MinMaxObserver),
        ),
        "fx_hist": (
            "fxquant",
            "HistogramObserver (entropy)",
            lambda: _fx_calib_model(model, x, HistogramObserver),
        ),
        "fx_mse": (
            "fxquant",
            "default_calibration_qconfig_setter (MSE histograms)",
            lambda: _calib_template(model, x),
        ),
        "ao_minmax": (
            "torch.ao",
            "prepare_fx, MinMaxObserver",
            lambda: _ao_calib_model(model, x, False),
        ),
        "ao_hist": (
            "torch.ao",
            "prepare_fx, HistogramObserver",
            lambda: _ao_calib_model(model, x, True),
        ),
    }
    calls, meta = {}, {}
    for name, (toolkit, variant, build) in builds.items():
        try:
            calls[name] = fwd(build())
            meta[name] = (toolkit, variant)
        except Exception as exc:
            res.rows.append(
                {
                    "measure": measure,
                    "toolkit": toolkit,
                    "variant": variant,
                    "note": f"failed: {type(exc).__name__}: {exc}".splitlines()[0],
                }
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timed = _interleaved(calls, "float", cfg)
    figures = {"ao_hist": "issue: 1.47x"}
    for name, (t, r) in timed.items():
        toolkit, variant = meta[name]
        res.rows.append(
            {
                "measure": measure,
                "toolkit": toolkit,
                "variant": variant,
                "ms": t * 1e3,
                "ratio": r,
                "peer / issue figure": figures.get(name, ""),
            }
        )
        summary[f"calib:{name}"] = r
    _nncf_calib_row(res, cfg, model, x, timed["float"][0], measure)
    _not_installed_rows(res, measure)


def _calib_template(model, x) -> nn.Module:
    qm = fxquant.prepare(model, x, fxquant.default_calibration_qconfig_setter)
    qm.eval()
    fxquant.set_fake_quantize(qm, fxquant.FakeQuantState.CALIBRATION)
    return qm


def _nncf_calib_row(res, cfg, model, x, float_s, measure) -> None:
    if cfg.nncf_batches <= 0:
        res.rows.append({"measure": measure, "toolkit": "NNCF", "note": "skipped in quick mode"})
        return
    nncf, why = _peer_status("nncf", "nncf")
    if nncf is None:
        res.rows.append({"measure": measure, "toolkit": "NNCF", "note": f"not installed: {why}"})
        return
    n = cfg.nncf_batches
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _nncf_quantize(nncf, model, [x] * n)  # warmup (graph capture, extensions)
            t_n, t_3n = [], []
            for _ in range(2):
                t = time.perf_counter()
                _nncf_quantize(nncf, model, [x] * n)
                t_n.append(time.perf_counter() - t)
                t = time.perf_counter()
                _nncf_quantize(nncf, model, [x] * (3 * n))
                t_3n.append(time.perf_counter() - t)
        per_batch = (min(t_3n) - min(t_n)) / (2 * n)
        note = f"whole nncf.quantize: {min(t_n):.1f} s ({n} batches), {min(t_3n):.1f} s ({3 * n})"
        row = {
            "measure": measure,
            "toolkit": "NNCF",
            "variant": f"nncf.quantize, per-batch slope ({nncf.__version__})",
            "note": note,
        }
        if per_batch > 0:
            row.update(ms=per_batch * 1e3, ratio=per_batch / float_s)
        else:  # the fixed setup cost's noise swamped the per-batch cost
            row["note"] = note + "; slope not measurable (load noise)"
        res.rows.append(row)
    except Exception as exc:
        res.rows.append(
            {
                "measure": measure,
                "toolkit": "NNCF",
                "note": f"failed: {type(exc).__name__}: {exc}".splitlines()[0],
            }
        )


# -- range search ------------------------------------------------------------------------------
def _range_rows(res: SuiteResult, cfg: CostConfig, model, x, summary) -> None:
    measure = "range search, all quantizers (s)"
    setups = [("A: activation histograms, min-max weights", MinMaxObserver)]
    if cfg.heavy:
        setups.append(("B: every quantizer, per-channel weight histograms", HistogramObserver))
    for label, weight_obs in setups:
        qc = fxquant.get_qconfig(observer=HistogramObserver, weight_observer=weight_obs)
        qm = fxquant.prepare(model, x, qc)
        fxquant.calibrate(qm, [x], progress=False)
        hist_fqs = [
            m
            for m in qm.modules()
            if isinstance(m, FakeQuantize) and isinstance(m.observer, HistogramObserver)
        ]
        for method in RangeMethod:
            for m in hist_fqs:
                m.observer.method = method
            t = time.perf_counter()
            for m in hist_fqs:
                m.update_qparams()
            dt = time.perf_counter() - t
            res.rows.append(
                {
                    "measure": measure,
                    "toolkit": "fxquant",
                    "variant": f"{label}, {method.value}",
                    "ms": dt * 1e3,
                    "ratio": "",
                    "note": f"{len(hist_fqs)} histogram quantizers, total {dt:.2f} s",
                    "peer / issue figure": ISSUE["range"],
                }
            )
            summary[f"range:{label[0]}:{method.value}"] = dt


# -- suite -------------------------------------------------------------------------------------
def run(quick: bool = False, config: CostConfig | None = None) -> SuiteResult:
    """Run the suite (``quick``: smaller model and batch, fewer rounds, no NNCF calibration)."""
    cfg = config or (QUICK if quick else FULL)
    load = os.getloadavg()[0]
    torch.manual_seed(0)
    x = torch.randn(cfg.batch, 3, 32, 32)
    y = torch.randint(0, 10, (cfg.batch,))
    model = _settled_model(cfg, x)
    res = SuiteResult(
        "cost",
        f"Cost of QAT / calibration / range search: ResidualCNN width {cfg.width}, "
        f"batch {cfg.batch}, 32x32",
        COLUMNS,
    )
    summary: dict[str, float] = {}
    _qat_rows(res, cfg, model, x, y, summary)
    _calib_rows(res, cfg, model, x, summary)
    _range_rows(res, cfg, model, x, summary)
    _notes(res, summary, load, cfg)
    return res


def _verdict(value: float, target: float, unit: str = "x") -> str:
    if value <= target:
        return f"{value:.2f}{unit} <= {target:g}{unit}: MET"
    return f"{value:.2f}{unit} > {target:g}{unit}: MISSED by {value / target - 1:.0%}"


def _notes(res: SuiteResult, s: dict[str, float], load: float, cfg: CostConfig) -> None:
    res.notes.append(
        f"torch.get_num_threads()={torch.get_num_threads()}, load average at start {load:.2f}; "
        f"{cfg.rounds} rounds x {cfg.block} round-robin calls (fastest per round, median of "
        "per-round ratios)"
    )
    nofold, ao = s.get("qat:fx_nofold"), s.get("qat:ao")
    for key, label in (("qat:fx", "default kernels"), ("qat:fx_fused", "fused kernels")):
        if key not in s:
            continue
        why = ""
        if s[key] > TARGET_QAT:
            parts = []
            if nofold is not None:
                parts.append(f"fold_bn=False: {nofold:.2f}x")
            if ao is not None:
                parts.append(f"torch.ao on the same run: {ao:.2f}x")
            why = (
                " -- the step runs ~40 quantizers on small tensors (<= 1 MB): observer + "
                "qparams update + >= 5 memory passes each, forward and backward"
                + (f" ({'; '.join(parts)})" if parts else "")
            )
        res.notes.append(
            f"target QAT step <= {TARGET_QAT}x float ({label}): {_verdict(s[key], TARGET_QAT)}{why}"
        )
    if "qat:ao" in s:
        res.notes.append(f"torch.ao QAT step here: {s['qat:ao']:.2f}x (issue: 1.37x)")
    for key, target, label in (
        ("calib:fx_minmax", TARGET_CALIB_MINMAX, "min-max observers"),
        ("calib:fx_hist", TARGET_CALIB_HIST, "histogram (entropy) observers"),
        ("calib:fx_mse", TARGET_CALIB_HIST, "histogram (MSE, default calibration template)"),
    ):
        if key in s:
            res.notes.append(
                f"target calibration <= {target}x float forward, {label}: "
                f"{_verdict(s[key], target)}"
            )
    for key, value in s.items():
        if key.startswith("range:"):
            _, setup, method = key.split(":")
            res.notes.append(
                f"target range search < {TARGET_RANGE_S:g} s ({setup}, {method}): "
                f"{_verdict(value, TARGET_RANGE_S, ' s')}"
            )
