"""Cost of quantization on three models: QAT step and calibration forward, fxquant vs peers.

Models (:mod:`bench.cost_models`, random weights, BatchNorm statistics settled on 3 batches):
a ResNet-18-width CNN, a MobileNetV2-style CNN and a transformer encoder block; batch 64 of
random 32x32 images / 64 tokens (quick: tiny widths, batch 8); ``torch.get_num_threads()``
threads (``make bench``: 2).

* **QAT step / float step** -- one SGD step (forward, cross-entropy, backward, ``opt.step()``)
  of the QAT model over the same step of the float model (BatchNorm in training mode in both).
  fxquant: ``prepare(..., default_qat_qconfig_setter)`` (moving-average min-max activations,
  per-channel min-max weights, conv + BN folded fold-aware as torch.ao does), calibrated on one
  batch, then ``FakeQuantState.QAT``; also with ``fold_bn=False`` (BN kept separate: what the
  quantizers alone cost) and with ``default_qat_fixed_act_qconfig_setter`` (activation scales
  fixed after calibration, observed no more).  The goal applies to the default template; the
  "best configuration" note compares whichever fxquant row is fastest with the peers -- the
  like-for-like comparison with ModelOpt, whose QAT keeps BN a separate float module and its
  calibrated ranges fixed.  torch.ao: ``prepare_qat_fx`` with
  ``get_default_qat_qconfig_mapping("x86")``.
* **calibration fwd / float fwd** -- one calibration forward (no grad, eval) over a float
  forward.  fxquant: every op quantized with ``get_qconfig(observer=...)`` (per-channel min-max
  weights) in ``FakeQuantState.CALIBRATION``, for min-max and histogram (entropy) observers and
  for ``default_calibration_qconfig_setter`` (MSE histograms).  torch.ao: ``prepare_fx`` with
  ``MinMaxObserver`` or ``HistogramObserver`` activations and per-channel weights.
* NNCF, NVIDIA ModelOpt and AIMET run in child processes that time their own float baseline
  the same way (:mod:`bench.cost_peers`, which says what each runs).
* **AdaRound, one layer** -- seconds of AdaRound on the same 3x3 conv (64 -> 64 channels,
  16x16, 4-bit weights) with the same data and iteration count, fxquant vs AIMET.
* **range search** -- after histogram calibration of a ResidualCNN, the time to compute the
  range of every histogram quantizer with entropy, MSE and percentile: (A) activations with
  histograms, weights min-max; (B) every quantizer, per-channel weight histograms included.

Timing: :func:`bench.common.interleaved` -- rounds in which the variants take turns call by
call and keep their fastest call; ratios are medians over rounds of (variant / float baseline
of the same round), so that load from other processes falls on all variants alike.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from bench import cost_peers
from bench.common import SuiteResult, interleaved
from bench.cost_models import MODELS, QUICK_MODELS, CostModel
from bench.models import ResidualCNN
from fxquant.fake_quant import FakeQuantize
from fxquant.numerics import native
from fxquant.numerics.range_search import RangeMethod
from fxquant.observers import HistogramObserver, MinMaxObserver

__all__ = ["CostConfig", "FULL", "QUICK", "COLUMNS", "run"]

COLUMNS = ["model", "measure", "toolkit", "variant", "ms", "ratio", "note"]
PEERS_JSON = pathlib.Path(__file__).resolve().parent / "results" / "peers.json"
QAT, CALIB = "QAT step / float step", "calibration fwd / float fwd"
FIXED_ACT = "activation scales fixed after calibration (default_qat_fixed_act_qconfig_setter)"
TARGET_QAT, STRETCH_QAT = 1.25, 1.10
TARGET_CALIB_MINMAX, TARGET_CALIB_HIST = 1.05, 1.3
TARGET_RANGE_S = 2.0
PEER_MODULES = {"NNCF": ("nncf", "nncf"), "NVIDIA ModelOpt": ("modelopt", "modelopt"),
                "AIMET": ("aimet_torch", "aimet")}


@dataclass(frozen=True)
class CostConfig:
    """Sizes of one run.

    Attributes:
        models: the models (:data:`bench.cost_models.MODELS`).
        batch: batch size.
        rounds, block: interleaved timing rounds and calls per round.
        peers: run NNCF / ModelOpt / AIMET (child processes).
        slope_batches: ``n`` of the NNCF / AIMET calibration slope (0: skip).
        range_width: ResidualCNN width of the range-search rows.
        heavy: range search setup B.
        adaround_iterations: AdaRound iterations of the one-layer timing (0: skip).
    """

    models: tuple[CostModel, ...]
    batch: int
    rounds: int
    block: int
    peers: bool = True
    slope_batches: int = 4
    range_width: int = 16
    heavy: bool = True
    adaround_iterations: int = 1000


FULL = CostConfig(MODELS, batch=64, rounds=5, block=2)
QUICK = CostConfig(QUICK_MODELS, batch=8, rounds=2, block=1, peers=False, slope_batches=0,
                   range_width=4, heavy=False, adaround_iterations=0)


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
    """``(True, "")`` if ``module`` is installed, else ``(None, reason)`` (not imported here:
    the peers run in child processes).  A peer that ``bench/install_peers.py`` could not
    install says why (``bench/results/peers.json``)."""
    import importlib.util

    info = _peers_json(key)
    if info and not info.get("installed", True):
        return None, _short_reason(info.get("reason") or "recorded as not installed")
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError) as exc:
        return None, _short_reason(f"{type(exc).__name__}: {exc}")
    return (True, "") if found else (None, f"{module} is not installed (make bench-deps)")


# -- models and steps --------------------------------------------------------------------------
def _settled(cm: CostModel, x: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    model = cm.build()
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


def _fwd(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def go() -> None:
        with torch.no_grad():
            model(x)

    return go


def _fx_qat(model: nn.Module, x: torch.Tensor, fold_bn: bool = True,
            fixed_act: bool = False) -> nn.Module:
    template = (fxquant.default_qat_fixed_act_qconfig_setter if fixed_act
                else fxquant.default_qat_qconfig_setter)
    qat = fxquant.prepare(model, x, template, fold_bn=fold_bn)
    fxquant.calibrate(qat, [x], progress=False)
    fxquant.set_fake_quantize(qat, fxquant.FakeQuantState.QAT)
    return qat


def _torch_ao_qat(model: nn.Module, x: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    return prepare_qat_fx(copy.deepcopy(model).train(), get_default_qat_qconfig_mapping("x86"),
                          (x,))


def _fx_calib(model: nn.Module, x: torch.Tensor, observer) -> nn.Module:
    qc = (fxquant.default_calibration_qconfig_setter if observer is None
          else fxquant.get_qconfig(observer=observer, out_dtype=fxquant.qint8))
    qm = fxquant.prepare(model, x, qc).eval()
    fxquant.set_fake_quantize(qm, fxquant.FakeQuantState.CALIBRATION)
    return qm


def _ao_calib(model: nn.Module, x: torch.Tensor, hist: bool) -> nn.Module:
    from torch.ao.quantization import HistogramObserver as AoHist
    from torch.ao.quantization import MinMaxObserver as AoMinMax
    from torch.ao.quantization import QConfig, QConfigMapping, default_per_channel_weight_observer
    from torch.ao.quantization.quantize_fx import prepare_fx

    act = AoHist.with_args(reduce_range=True) if hist else AoMinMax.with_args(reduce_range=True)
    mapping = QConfigMapping().set_global(
        QConfig(activation=act, weight=default_per_channel_weight_observer))
    return prepare_fx(copy.deepcopy(model).eval(), mapping, (x,))


def _timed_rows(res: SuiteResult, label: str, measure: str, builds: dict, cfg: CostConfig,
                summary: dict) -> None:
    """Build every variant (a failure is a row with its error), time them interleaved."""
    calls, meta = {}, {}
    for name, (toolkit, variant, build) in builds.items():
        try:
            calls[name] = build()
            meta[name] = (toolkit, variant)
        except Exception as exc:  # a variant that cannot be built is a row with the reason
            res.rows.append({"model": label, "measure": measure, "toolkit": toolkit,
                             "variant": variant,
                             "note": f"failed: {type(exc).__name__}: {exc}".splitlines()[0][:200]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timed = interleaved(calls, "float", cfg.rounds, cfg.block)
    for name, (t, r) in timed.items():
        toolkit, variant = meta[name]
        res.rows.append({"model": label, "measure": measure, "toolkit": toolkit,
                         "variant": variant, "ms": t * 1e3, "ratio": r})
        summary[(label, measure, toolkit, variant)] = r


def _model_rows(res: SuiteResult, cm: CostModel, cfg: CostConfig, summary: dict) -> None:
    torch.manual_seed(0)
    x = cm.example(cfg.batch)
    y = torch.randint(0, 10, (cfg.batch,))
    model = _settled(cm, x)
    qat = {
        "float": ("float (torch)", "SGD step", lambda: _step(copy.deepcopy(model), x, y)),
        "fx": ("fxquant", "default QAT template" + (", BN folded" if cm.cnn else ""),
               lambda: _step(_fx_qat(model, x), x, y)),
    }
    qat["fx_fixed"] = ("fxquant", FIXED_ACT + (", BN folded" if cm.cnn else ""),
                       lambda: _step(_fx_qat(model, x, fixed_act=True), x, y))
    if cm.cnn:
        qat["fx_nofold"] = ("fxquant", "default QAT template, fold_bn=False",
                            lambda: _step(_fx_qat(model, x, fold_bn=False), x, y))
    qat["ao"] = ("torch.ao", "prepare_qat_fx, x86 default QAT qconfig",
                 lambda: _step(_torch_ao_qat(model, x), x, y))
    _timed_rows(res, cm.label, QAT, qat, cfg, summary)
    calib = {
        "float": ("float (torch)", "forward, no grad", lambda: _fwd(model, x)),
        "fx_mm": ("fxquant", "MinMaxObserver", lambda: _fwd(_fx_calib(model, x, MinMaxObserver),
                                                             x)),
        "fx_hist": ("fxquant", "HistogramObserver (entropy)",
                    lambda: _fwd(_fx_calib(model, x, HistogramObserver), x)),
        "fx_mse": ("fxquant", "default_calibration_qconfig_setter (MSE histograms)",
                   lambda: _fwd(_fx_calib(model, x, None), x)),
        "ao_mm": ("torch.ao", "prepare_fx, MinMaxObserver",
                  lambda: _fwd(_ao_calib(model, x, False), x)),
        "ao_hist": ("torch.ao", "prepare_fx, HistogramObserver",
                    lambda: _fwd(_ao_calib(model, x, True), x)),
    }
    _timed_rows(res, cm.label, CALIB, calib, cfg, summary)
    for peer in cost_peers.PEERS:
        _peer_rows(res, cm.label, peer, model, x, y, cfg, summary)


def _peer_rows(res, label, peer, model, x, y, cfg, summary) -> None:
    if not cfg.peers:
        for measure in (QAT, CALIB):
            res.rows.append({"model": label, "measure": measure, "toolkit": peer,
                             "note": "skipped in quick mode"})
        return
    module, key = PEER_MODULES[peer]
    ok, why = _peer_status(module, key)
    got = cost_peers.measure(peer, model, x, y, cfg.rounds, cfg.block, cfg.slope_batches) \
        if ok else {"error": f"not installed: {why}"}
    if "error" in got:
        for measure in (QAT, CALIB):
            res.rows.append({"model": label, "measure": measure, "toolkit": peer,
                             "note": got["error"]})
        return
    extra = got.get("note") or ""
    q = got["qat"]
    res.rows.append({"model": label, "measure": QAT, "toolkit": peer, "variant": q["variant"],
                     "ms": q["ms"], "ratio": q["ratio"], "note": extra})
    summary[(label, QAT, peer, q["variant"])] = q["ratio"]
    for c in got.get("calib", []):
        row = {"model": label, "measure": CALIB, "toolkit": peer, **c}
        if extra:
            row["note"] = "; ".join(n for n in (c.get("note", ""), extra) if n)
        res.rows.append(row)
        if "ratio" in c:
            summary[(label, CALIB, peer, c["variant"])] = c["ratio"]


# -- AdaRound, one layer ------------------------------------------------------------------------
def _adaround_rows(res: SuiteResult, cfg: CostConfig) -> None:
    from fxquant.algorithms.adaround import adaround

    label, measure = "3x3 conv 64 -> 64, 16x16", "AdaRound, one layer (s)"
    n = cfg.adaround_iterations
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1)).eval()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.relu(torch.randn(32, 64, 16, 16, generator=gen)) for _ in range(4)]
    qc = fxquant.get_qconfig(observer=MinMaxObserver, weight_dtype=fxquant.qint4,
                             out_dtype=fxquant.qint8)
    q = fxquant.calibrate(fxquant.prepare(layer, batches[0], qc), batches, progress=False)
    t = time.perf_counter()
    adaround(q, batches, num_iterations=n, progress=False)
    whole = time.perf_counter() - t
    unit = q.reconstruction_report.results[0]
    res.rows.append({"model": label, "measure": measure, "toolkit": "fxquant",
                     "variant": f"adaround, {n} iterations", "ms": whole * 1e3,
                     "note": f"whole call {whole:.2f} s (optimisation {unit.seconds:.2f} s, "
                             f"{unit.num_samples} cached rows)"})
    ok, why = _peer_status("aimet_torch", "aimet") if cfg.peers else (None, "skipped")
    got = cost_peers.adaround_layer_seconds(layer, batches, n) if ok else {"error": why}
    row = {"model": label, "measure": measure, "toolkit": "AIMET",
           "variant": f"Adaround.apply_adaround, {n} iterations"}
    if "error" in got:
        row["note"] = got["error"]
    else:
        row.update(ms=got["seconds"] * 1e3, ratio=got["seconds"] / whole,
                   note="; ".join(x for x in ("whole call; ratio = AIMET / fxquant",
                                             got.get("note", "")) if x))
    res.rows.append(row)


# -- range search ------------------------------------------------------------------------------
def _range_rows(res: SuiteResult, cfg: CostConfig, summary: dict) -> None:
    measure = "range search, all quantizers (s)"
    label = f"ResidualCNN width {cfg.range_width}"
    torch.manual_seed(0)
    x = torch.randn(cfg.batch, 3, 32, 32)
    model = ResidualCNN(width=cfg.range_width).eval()
    setups = [("A: activation histograms, min-max weights", MinMaxObserver)]
    if cfg.heavy:
        setups.append(("B: every quantizer, per-channel weight histograms", HistogramObserver))
    for setup, weight_obs in setups:
        qc = fxquant.get_qconfig(observer=HistogramObserver, weight_observer=weight_obs)
        qm = fxquant.calibrate(fxquant.prepare(model, x, qc), [x], progress=False)
        hist_fqs = [m for m in qm.modules()
                    if isinstance(m, FakeQuantize) and isinstance(m.observer, HistogramObserver)]
        for method in RangeMethod:
            for m in hist_fqs:
                m.observer.method = method
            t = time.perf_counter()
            for m in hist_fqs:
                m.update_qparams()
            dt = time.perf_counter() - t
            res.rows.append({"model": label, "measure": measure, "toolkit": "fxquant",
                             "variant": f"{setup}, {method.value}", "ms": dt * 1e3,
                             "note": f"{len(hist_fqs)} histogram quantizers, total {dt:.2f} s"})
            summary[("range", setup[0], method.value)] = dt


# -- suite -------------------------------------------------------------------------------------
def run(quick: bool = False, config: CostConfig | None = None) -> SuiteResult:
    """Run the suite (``quick``: tiny models, no peers, no AdaRound timing)."""
    cfg = config or (QUICK if quick else FULL)
    load = os.getloadavg()[0]
    res = SuiteResult(
        "cost",
        f"Cost of QAT / calibration vs peers: {len(cfg.models)} models, batch {cfg.batch}, "
        f"{torch.get_num_threads()} threads",
        COLUMNS,
    )
    summary: dict = {}
    for cm in cfg.models:
        _model_rows(res, cm, cfg, summary)
    if cfg.adaround_iterations:
        _adaround_rows(res, cfg)
    _range_rows(res, cfg, summary)
    _notes(res, summary, cfg, load, os.getloadavg()[0])
    return res


def _verdict(value: float, target: float, unit: str = "x") -> str:
    if value <= target:
        return f"{value:.2f}{unit} <= {target:g}{unit}: MET"
    return f"{value:.2f}{unit} > {target:g}{unit}: MISSED by {value / target - 1:.0%}"


def _best(summary: dict, label: str, measure: str, toolkit: str, *, exclude: str = "",
          include: str = "") -> tuple:
    vals = [(r, k[3]) for k, r in summary.items() if len(k) == 4 and k[0] == label
            and k[1] == measure and k[2] == toolkit and (not exclude or exclude not in k[3])
            and include in k[3]]
    return min(vals, default=(None, ""))


def _lowest_note(res: SuiteResult, s: dict, label: str, measure: str, toolkit: str,
                 variant: str, histogram: bool = False, any_config: bool = False) -> None:
    """Is fxquant's ratio (its ``variant``) below every peer's best ratio of ``measure``?

    For histogram calibration only the peers' histogram variants count (torch.ao, ModelOpt).
    ``any_config``: fxquant's best configuration (``fold_bn=False`` and fixed activation scales
    included) -- the like-for-like comparison with a peer that keeps BatchNorm a separate float
    module and its calibrated ranges fixed in QAT (ModelOpt); otherwise ``variant`` names the
    default configuration.
    """
    rows = [(k, r) for k, r in s.items() if len(k) == 4]
    fx = [(r, v) for (m, meas, tk, v), r in rows if m == label and meas == measure
          and tk == toolkit and (any_config or (variant in v and "fold_bn=False" not in v
                                                and FIXED_ACT not in v))]
    if not fx or (any_config and len(fx) < 2):
        return
    mine, mine_variant = min(fx)
    best: dict[str, float] = {}
    for (m, meas, tk, v), r in rows:
        if m != label or meas != measure or tk in (toolkit, "float (torch)"):
            continue
        if histogram and "istogram" not in v:
            continue
        best[tk] = min(best.get(tk, r), r)
    if not best:
        return
    lost = [tk for tk, r in best.items() if r < mine]
    what = f"{measure}{' (histogram)' if histogram else ''}"
    if any_config:
        what += f", fxquant's best configuration ({mine_variant})"
    res.notes.append(
        f"{label}: {what}, fxquant {mine:.2f}x lowest of all peers: "
        + ("MET" if not lost else f"MISSED (lower: {', '.join(lost)})")
        + " (" + "; ".join(f"{tk} {r:.2f}x" for tk, r in best.items()) + ")"
    )


def _notes(res: SuiteResult, s: dict, cfg: CostConfig, load: float, load_end: float) -> None:
    res.notes.append(
        f"torch.get_num_threads()={torch.get_num_threads()}, load average (1 min) at start "
        f"{load:.2f}, at end {load_end:.2f}; {cfg.rounds} rounds x {cfg.block} round-robin "
        "calls per variant (fastest per round, median of per-round ratios); peers in child "
        "processes against their own float baseline"
    )
    if not native.available():
        res.notes.append(f"native kernels unavailable: {native.why_unavailable()} "
                         "(fxquant ran pure torch)")
    for cm in cfg.models:
        label = cm.label
        fx_qat, _ = _best(s, label, QAT, "fxquant", exclude="fold_bn=False",
                          include="default QAT template")  # the default path
        if fx_qat is not None:
            target = TARGET_QAT if cm.cnn else None
            verdict = _verdict(fx_qat, TARGET_QAT) + (
                "" if target else " (goal set for the CNNs)")
            res.notes.append(f"{label}: QAT step <= {TARGET_QAT}x float (stretch "
                             f"{STRETCH_QAT}x): fxquant {verdict}")
        for variant, target in (("MinMaxObserver", TARGET_CALIB_MINMAX),
                                ("HistogramObserver (entropy)", TARGET_CALIB_HIST),
                                ("default_calibration_qconfig_setter (MSE histograms)",
                                 TARGET_CALIB_HIST)):
            r = s.get((label, CALIB, "fxquant", variant))
            if r is not None:
                res.notes.append(f"{label}: calibration <= {target}x float forward, {variant}: "
                                 f"{_verdict(r, target)}")
        _lowest_note(res, s, label, QAT, "fxquant", "default QAT template")
        _lowest_note(res, s, label, QAT, "fxquant", "", any_config=True)
        _lowest_note(res, s, label, CALIB, "fxquant", "MinMaxObserver")
        _lowest_note(res, s, label, CALIB, "fxquant", "Histogram", histogram=True)
    for key, value in s.items():
        if key[0] == "range":
            res.notes.append(f"target range search < {TARGET_RANGE_S:g} s ({key[1]}, {key[2]}): "
                             f"{_verdict(value, TARGET_RANGE_S, ' s')}")
