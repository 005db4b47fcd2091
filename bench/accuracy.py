"""Accuracy vs peer quantization toolkits on the trained zoo (issue 6, suite ``accuracy``).

For each zoo model (:mod:`bench.zoo`: plain / residual / depthwise CNN, tiny transformer) the
rows are test accuracy (%) of:

* ``float``;
* ``W8A8 PTQ`` -- fxquant's default (``prepare(model, example,
  default_calibration_qconfig_setter)``: the ``generic`` profile, MSE activation ranges,
  per-channel symmetric weights), the same template on the ``x86`` and ``onnxruntime``
  profiles, the ``x86`` one converted to torch int8 kernels (``fxquant.convert``); and every
  peer with its recommended defaults (:mod:`bench.peers`): torch.ao FX (``x86`` qconfig
  mapping; reference model and int8 model), ONNX Runtime ``quantize_static``, NNCF
  ``nncf.quantize``, AIMET QuantSim (default config; its per-channel config optionally -- it
  gave the same accuracy on every zoo model), NVIDIA pytorch-quantization;
* ``W4A8 PTQ`` -- fxquant round-to-nearest (per-channel min-max int4 weights, int8 activations),
  fxquant AdaRound and (full run) AutoQuant at W4A8, AIMET AdaRound at 4-bit weights, with the
  same number of AdaRound iterations per layer;
* ``W8A8 QAT`` -- one epoch of fine-tuning: fxquant (``default_qat_qconfig_setter``, calibrated
  first as its README shows) vs torch.ao FX ``prepare_qat_fx`` (``x86`` QAT mapping), with the
  same optimizer (Adam), learning rate, data order and epoch count.

Calibration: the first ``calib_batches`` batches of 64 of the zoo's calibration split, the same
batches for every tool.  A tool that cannot install or run is a row with the reason.  The notes
compare fxquant with every peer on every row they have in common (method and model): ``fxquant
>= peer`` or ``fxquant LOSES`` with the numbers.  ``seconds`` is the time to quantize (and, for
QAT, to fine-tune), without the evaluation.  ``SQNR (dB)`` compares the logits on the test set
with the float model's: 1-3 test images decide most accuracy differences at W8A8 here, the SQNR
shows how close each tool's model is to float regardless.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from bench import peers
from bench.common import SuiteResult
from bench.data import batches
from bench.peers import PeerRun
from bench.zoo import get_trained, num_threads

__all__ = ["AccuracyConfig", "FULL", "QUICK", "COLUMNS", "run"]

COLUMNS = ["model", "method", "tool", "accuracy (%)", "vs float", "SQNR (dB)", "seconds", "note"]
W8, W4, QAT = "W8A8 PTQ", "W4A8 PTQ", "W8A8 QAT"
FXQ_DEFAULT = "fxquant default (generic)"
FXQ_ADAROUND = "fxquant AdaRound"
FXQ_QAT = "fxquant QAT (generic)"


@dataclass(frozen=True)
class AccuracyConfig:
    """Sizes of one run.

    Attributes:
        models: zoo names to run.
        calib_batches: calibration batches of ``batch_size`` examples (every tool gets these).
        adaround_iterations: AdaRound iterations per layer, fxquant and AIMET alike (``0``: no
            AdaRound rows).
        autoquant: run fxquant AutoQuant at W4A8 (1-point budget).
        qat_epochs: QAT epochs (fxquant and torch.ao alike).
        qat_batches: cap on QAT steps per epoch (``None``: the whole training split).
        qat_lr: Adam learning rate of QAT.
        child_peers: run the peers that need a child process (NNCF, AIMET,
            pytorch-quantization) on these models only (``None``: all).
        aimet_per_channel: add AIMET QuantSim with its per-channel config (off by default: it
            gave the same accuracy as the default config on every zoo model).
    """

    models: tuple[str, ...]
    calib_batches: int = 8
    batch_size: int = 64
    adaround_iterations: int = 500
    autoquant: bool = True
    qat_epochs: int = 1
    qat_batches: int | None = None
    qat_lr: float = 1e-4
    child_peers: tuple[str, ...] | None = None
    aimet_per_channel: bool = False


FULL = AccuracyConfig(("plain_cnn", "residual_cnn", "depthwise_cnn", "tiny_transformer"),
                      adaround_iterations=250)
QUICK = AccuracyConfig(("plain_cnn", "tiny_transformer"), calib_batches=2, adaround_iterations=0,
                       autoquant=False, qat_batches=4, child_peers=("plain_cnn",))


class _Table:
    """Rows of the suite and the accuracies by ``(model, method, tool)``."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.acc: dict[tuple[str, str, str], float] = {}
        self.sqnr: dict[tuple[str, str, str], float] = {}
        self.float_acc: dict[str, float] = {}
        self.test_size: dict[str, int] = {}

    def _row(self, model: str, method: str, tool: str, acc, seconds: float, note: str,
             sqnr: float | None = None) -> None:
        f = self.float_acc.get(model)
        ok = isinstance(acc, float)
        self.rows.append({"model": model, "method": method, "tool": tool,
                          "accuracy (%)": acc if ok else "-",
                          "vs float": acc - f if ok and f is not None else "-",
                          "SQNR (dB)": sqnr if sqnr is not None else "-",
                          "seconds": seconds, "note": note[:220]})
        if ok:
            self.acc[(model, method, tool)] = acc
        if sqnr is not None:
            self.sqnr[(model, method, tool)] = sqnr

    def add(self, model: str, method: str, tool: str, make: Callable[[], nn.Module | PeerRun],
            eval_fn: Callable[[nn.Module], tuple[float, float | None]],
            note: str = "") -> nn.Module | None:
        """Build with ``make()`` (timed), evaluate, add the row; errors become rows."""
        t0 = time.perf_counter()
        try:
            built = make()
        except Exception as err:
            built = PeerRun(error=f"{type(err).__name__}: {err}")
        return self.add_built(model, method, tool, built, time.perf_counter() - t0, eval_fn, note)

    def add_built(self, model: str, method: str, tool: str, built: nn.Module | PeerRun,
                  seconds: float, eval_fn: Callable[[nn.Module], tuple[float, float | None]],
                  note: str = "") -> nn.Module | None:
        run = built if isinstance(built, PeerRun) else PeerRun(built)
        try:
            if run.error is not None:
                self._row(model, method, tool, None, seconds, f"error: {run.error}")
                return None
            try:
                acc, sqnr = eval_fn(run.model)
            except Exception as err:
                self._row(model, method, tool, None, seconds,
                          f"error at evaluation: {type(err).__name__}: {err}")
                return None
            self._row(model, method, tool, acc, seconds, run.note or note, sqnr)
            return run.model
        finally:
            if isinstance(built, PeerRun):
                built.close()


@torch.no_grad()
def _evaluate(
    model: nn.Module, test, reference: torch.Tensor | None
) -> tuple[float, float | None, torch.Tensor]:
    """``(top-1 accuracy %, SQNR of the logits vs reference in dB, logits)``: the same
    batches and eval mode as :func:`bench.zoo.evaluate`, keeping the logits."""
    was_training = model.training
    model.eval()
    try:
        logits = torch.cat([model(x).float() for x, _ in batches(test, 500)])
    finally:
        model.train(was_training)
    acc = 100.0 * float((logits.argmax(1) == test.tensors[1]).sum()) / len(test)
    sqnr = None
    if reference is not None:
        noise = (logits - reference).square().sum().clamp_min(1e-30)
        sqnr = float(10 * torch.log10(reference.square().sum() / noise))
    return acc, sqnr, logits


# -- fxquant --------------------------------------------------------------------------------------
def _fxquant_ptq(model: nn.Module, example, calib: list, backend: str) -> nn.Module:
    q = fxquant.prepare(model, example, fxquant.default_calibration_qconfig_setter,
                        backend=backend)
    return fxquant.calibrate(q, calib, progress=False).eval()


def _fxquant_w4a8(model: nn.Module, example, calib: list) -> nn.Module:
    qc = fxquant.get_qconfig(observer=fxquant.MinMaxObserver, weight_dtype=fxquant.qint4,
                             out_dtype=fxquant.qint8, weight_per_channel=True, symmetric=True)
    q = fxquant.prepare(model, example, qc)
    return fxquant.calibrate(q, calib, progress=False).eval()


def _train_one(model: nn.Module, train_data, cfg: AccuracyConfig) -> None:
    """The QAT loop both tools get: Adam(lr), cross entropy, seeded data order, train mode."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.qat_lr)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(cfg.qat_epochs):
        for i, (x, y) in enumerate(batches(train_data, cfg.batch_size, generator=g)):
            if cfg.qat_batches is not None and i >= cfg.qat_batches:
                break
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def _fxquant_qat(model: nn.Module, example, calib: list, train_data,
                 cfg: AccuracyConfig) -> nn.Module:
    q = fxquant.prepare(model, example, fxquant.default_qat_qconfig_setter)
    fxquant.calibrate(q, calib, progress=False)
    fxquant.set_fake_quantize(q, fxquant.FakeQuantState.QAT)
    _train_one(q, train_data, cfg)
    q.eval()
    fxquant.set_fake_quantize(q, fxquant.FakeQuantState.VALIDATION)
    return q


# -- one model ------------------------------------------------------------------------------------
def _run_model(name: str, cfg: AccuracyConfig, table: _Table, progress: bool) -> None:
    model, splits, float_acc = get_trained(name, progress=progress)
    calib = [b[0] for b in batches(splits.calib, cfg.batch_size)][: cfg.calib_batches]
    example = calib[0]
    table.float_acc[name] = float_acc
    table.test_size[name] = len(splits.test)
    _, _, reference = _evaluate(model, splits.test, None)

    def eval_fn(m: nn.Module) -> tuple[float, float | None]:
        return _evaluate(m, splits.test, reference)[:2]

    def add(method: str, tool: str, make, note: str = "") -> nn.Module | None:
        return table.add(name, method, tool, make, eval_fn, note)

    table._row(name, "float", "-", float_acc, 0.0, "zoo weights")
    # W8A8 PTQ: fxquant
    add(W8, FXQ_DEFAULT, lambda: _fxquant_ptq(model, example, calib, "generic"),
        "default_calibration_qconfig_setter: MSE act ranges, per-channel symmetric W")
    x86 = add(W8, "fxquant x86", lambda: _fxquant_ptq(model, example, calib, "x86"),
              "same template, x86 profile (quint8 act, reduce_range)")
    if x86 is not None:
        add(W8, "fxquant x86 int8 (convert)",
            lambda: fxquant.convert(x86, backend="x86", keep_float=True).module,
            "torch x86 int8 kernels")
    add(W8, "fxquant onnxruntime", lambda: _fxquant_ptq(model, example, calib, "onnxruntime"),
        "same template, onnxruntime profile (U8S8), fake-quant")
    # W8A8 PTQ: peers
    t0 = time.perf_counter()
    ao = peers.torch_ao_ptq(model, example, calib)
    seconds = time.perf_counter() - t0
    table.add_built(name, W8, "torch.ao FX reference", ao["reference"], seconds, eval_fn)
    table.add_built(name, W8, "torch.ao FX int8 (x86)", ao["int8"], seconds, eval_fn)
    add(W8, "ONNX Runtime quantize_static", lambda: peers.onnxruntime_ptq(model, example, calib))
    children = cfg.child_peers is None or name in cfg.child_peers
    skipped = "not run in this configuration (child-process peers on the first model only)"
    for tool, fn in (("NNCF", peers.nncf_ptq), ("AIMET QuantSim", peers.aimet_ptq),
                     ("pytorch-quantization", peers.pytorch_quantization_ptq)):
        if children:
            add(W8, tool, lambda fn=fn: fn(model, example, calib))
        else:
            table._row(name, W8, tool, None, 0.0, skipped)
    if cfg.aimet_per_channel and children:
        add(W8, "AIMET QuantSim per-channel",
            lambda: peers.aimet_ptq(model, example, calib, per_channel=True))
    # W4A8 PTQ
    w4 = add(W4, "fxquant nearest", lambda: _fxquant_w4a8(model, example, calib),
             "per-channel min-max int4 W, int8 act, round to nearest")
    iters = cfg.adaround_iterations
    if iters and w4 is not None:
        add(W4, FXQ_ADAROUND, lambda: fxquant.adaround(copy.deepcopy(w4), calib,
                                                       num_iterations=iters, progress=False),
            f"{iters} iterations per layer")
    if cfg.autoquant:
        add(W4, "fxquant AutoQuant (1-point budget)",
            lambda: _autoquant(model, example, calib, lambda m: eval_fn(m)[0], iters, progress))
    if iters and children:
        add(W4, "AIMET AdaRound", lambda: peers.aimet_adaround_w4a8(model, example, calib, iters))
    elif iters:
        table._row(name, W4, "AIMET AdaRound", None, 0.0, skipped)
    else:
        table._row(name, W4, "AIMET AdaRound", None, 0.0, "not run: AdaRound off in this config")
    # W8A8 QAT
    add(QAT, FXQ_QAT, lambda: _fxquant_qat(model, example, calib, splits.train, cfg),
        "default_qat_qconfig_setter, calibrated, Adam")
    t0 = time.perf_counter()
    qat = peers.torch_ao_qat(model, example, lambda m: _train_one(m, splits.train, cfg))
    seconds = time.perf_counter() - t0
    table.add_built(name, QAT, "torch.ao FX QAT fake-quant", qat["fake-quant"], seconds, eval_fn)
    table.add_built(name, QAT, "torch.ao FX QAT int8 (x86)", qat["int8"], seconds, eval_fn)


def _autoquant(model, example, calib, eval_fn, iters: int, progress: bool) -> PeerRun:
    from fxquant.autoquant import AutoQuant

    aq = AutoQuant(model, example, calib, eval_fn, weight_dtype=fxquant.qint4,
                   adaround_iterations=iters or None, progress=progress)
    qmodel, _, _ = aq.optimize(1.0)
    rep = aq.report
    return PeerRun(qmodel, note=f"best: {rep.best_step}; steps: "
                   + ", ".join(s.name for s in rep.steps))


# -- verdicts -------------------------------------------------------------------------------------
_PAIRS = (  # (method, fxquant tool, peer tools)
    (W8, FXQ_DEFAULT, ("torch.ao FX reference", "torch.ao FX int8 (x86)",
                       "ONNX Runtime quantize_static", "NNCF", "AIMET QuantSim",
                       "AIMET QuantSim per-channel", "pytorch-quantization")),
    (W4, FXQ_ADAROUND, ("AIMET AdaRound",)),
    (QAT, FXQ_QAT, ("torch.ao FX QAT fake-quant", "torch.ao FX QAT int8 (x86)")),
)


def _verdicts(table: _Table, models: tuple[str, ...]) -> list[str]:
    notes, lost, won, worst = [], [], 0, 0
    for name in models:
        for method, fxq, peer_tools in _PAIRS:
            mine = table.acc.get((name, method, fxq))
            for peer in peer_tools:
                theirs = table.acc.get((name, method, peer))
                if theirs is None:
                    continue
                if mine is None:
                    notes.append(f"{name} {method}: {fxq} not measured, {peer} {theirs:.2f}")
                    lost.append(f"{name}/{method}/{peer}")
                    continue
                s_mine = table.sqnr.get((name, method, fxq))
                s_theirs = table.sqnr.get((name, method, peer))
                db = ("" if s_mine is None or s_theirs is None
                      else f"; SQNR {s_mine:.1f} vs {s_theirs:.1f} dB")
                if mine >= theirs:
                    won += 1
                    notes.append(f"{name} {method}: {fxq} {mine:.2f} >= {peer} {theirs:.2f}{db}")
                else:
                    lost.append(f"{name}/{method}/{peer}")
                    n = table.test_size.get(name)
                    k = round((theirs - mine) * n / 100) if n else 0
                    worst = max(worst, k)
                    imgs = f" = {k} of {n} images" if n else ""
                    notes.append(f"{name} {method}: {fxq} {mine:.2f} LOSES to {peer} "
                                 f"{theirs:.2f} ({mine - theirs:+.2f}{imgs}{db})")
    total = won + len(lost)
    head = (f"target fxquant >= every peer on every common row: "
            f"{'MET' if not lost and total else 'MISSED'} ({won} of {total} comparisons"
            + (f"; lost: {', '.join(lost)}; largest loss {worst} test images)" if lost else ")"))
    return [head, *notes]


def run(quick: bool = False, *, config: AccuracyConfig | None = None,
        progress: bool = False) -> SuiteResult:
    """The accuracy-vs-peers table (``quick``: :data:`QUICK` sizes, no accuracy claims)."""
    cfg = config if config is not None else QUICK if quick else FULL
    table = _Table()
    with num_threads(None) as n:
        for name in cfg.models:
            _run_model(name, cfg, table, progress)
    notes = _verdicts(table, cfg.models)
    status = peers.peer_status
    for peer in ("nncf", "aimet", "pytorch_quantization"):
        st = status(peer)
        if st is None:
            notes.append(f"peer {peer}: no bench/results/peers.json entry "
                         "(run bench/install_peers.py)")
        elif not st.get("import_ok"):
            reason = " / ".join((st.get("reason") or "").splitlines())
            notes.append(f"peer {peer} {st.get('version') or ''}: {reason}"[:400])
    notes.append("SQNR after QAT measures the distance from the float model the training started "
                 "from, not quality (QAT moves the weights)")
    notes.append(
        f"calibration: {cfg.calib_batches} batches of {cfg.batch_size}; AdaRound: "
        f"{cfg.adaround_iterations or 'off'} iterations per layer (fxquant and AIMET); QAT: "
        f"{cfg.qat_epochs} epoch(s), Adam lr {cfg.qat_lr:g}, batch {cfg.batch_size}, seeded "
        f"order{'' if cfg.qat_batches is None else f', {cfg.qat_batches} steps'}; {n} threads"
        + ("; quick run: sizes too small for accuracy claims" if quick and config is None
           else ""))
    return SuiteResult("accuracy", "Accuracy vs peer toolkits (issue 6)", COLUMNS, table.rows,
                       notes)
