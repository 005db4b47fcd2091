"""Deployment latency: fxquant int8 models in real runtimes vs fp32 and vs ONNX Runtime's own PTQ.

One ResNet-18-style CNN (:class:`bench.models.ResidualCNN`, width 64, stride-1 stem; random
weights, BatchNorm statistics settled on random images), calibrated on random images, timed on
CPU at batch 1 and batch 64 as:

* torch eager fp32 -- the model itself;
* ONNX Runtime fp32 -- ``fxquant.export_onnx(..., quantize=False)`` (BN folded, same names);
* ONNX Runtime int8 -- fxquant's QDQ export (``backend="onnxruntime"``: uint8 activations,
  per-channel int8 weights, int32 bias);
* ONNX Runtime int8 -- the peer: ``onnxruntime.quantization.quantize_static`` on the same float
  ONNX (QDQ, per-channel, U8S8, min-max calibration over the same calibration batches);
* OpenVINO fp32 (``INFERENCE_PRECISION_HINT=f32``: its default on AVX512/AMX CPUs is bf16) and
  OpenVINO int8 from fxquant's QDQ export of the ``openvino`` profile;
* torch int8 -- ``fxquant.convert(backend="x86")`` (torch's x86 quantized kernels);
* LiteRT fp32 and LiteRT int8 -- ``fxquant.export_tflite`` of the ``tflite`` profile's model
  (``quantize=False`` for fp32) run by LiteRT's default CPU path (the XNNPACK delegate); the
  files have a static batch, so each batch size gets its own export.

Method: every runtime gets ``torch.get_num_threads()`` threads (ORT ``intra_op_num_threads``,
OpenVINO ``INFERENCE_NUM_THREADS``); on a busy machine call ``torch.set_num_threads(1)`` before
:func:`run`: there, threads that other processes preempt made 2-thread times 2-5x slower and
erratic (torch's OpenMP worst), while 1-thread ratios stayed stable.  Each batch size gets
fresh sessions / compiled models / converted modules whose first call is at that batch size
(torch's x86 int8 kernels run batch 1 2x slower if first called at batch 64).  After a
warmup, the variants are timed in interleaved blocks (a short pause between blocks lets the
previous runtime's spinning threads go idle), so that load from other processes on a shared
machine falls on all of them alike; the reported time is the median over all calls, a speedup
the median over rounds of the ratio of the two variants' block medians in the same round.

Accuracy: output SQNR of every variant vs torch fp32 on a held-out random batch;
``fxquant.verify`` (runtime vs fxquant's simulation: % identical output codes; for ONNX Runtime
the simulation is the eval-mode model with ORT's integer arithmetic, for OpenVINO the float
simulation in float64; the "plain f32 sim" figure says how often the float simulation agrees
with that reference: the network amplifies 1-step rounding differences layer by layer) for the
fxquant QDQ files;
SQNR of the x86 int8 model vs its simulation.  A variant that fails to build or run
is a row with its error.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import statistics
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

import fxquant
from bench.common import SuiteResult
from bench.models import ResidualCNN

__all__ = ["DeployConfig", "FULL", "QUICK", "run"]

Runner = Callable[[np.ndarray], np.ndarray]

TORCH, ORT, OV, LITERT = "torch", "onnxruntime", "openvino", "litert"
COLUMNS = [
    "runtime", "model", "batch", "ms", "vs ORT fp32", "vs torch fp32", "SQNR vs fp32 (dB)",
    "agreement", "error",
]
TARGET_VS_FP32 = 2.5  # fxquant ORT int8 must be at least this much faster than ORT fp32
TIE = 0.05  # "not slower than the peer": fxquant's time at most (1 + TIE) x the peer's


@dataclass(frozen=True)
class DeployConfig:
    """Sizes of one run.

    Attributes:
        width: ``ResidualCNN`` base width (channels ``width * (1, 2, 4)``; 64 as ResNet-18).
        stem_stride: stride of the stem conv (1: the stages run at 32 / 16 / 8 px for 32 px
            inputs, as CIFAR ResNets do).
        image: input height and width (3 channels).
        batches: batch sizes timed, each on fresh instances.
        settle_batches / calib_batches / batch_size: random batches for the BN statistics and
            for calibration (both fxquant and ``quantize_static``), of ``batch_size`` images.
        eval_batch: images in the held-out batch for SQNR and verify.
        warmup: untimed calls per variant and batch size.
        rounds: interleaved timing rounds; each times every variant for a block of
            ``block_seconds`` (at least ``min_calls`` calls).
        pause: seconds of idle before each block.
    """

    width: int = 64
    stem_stride: int = 1
    image: int = 32
    batches: tuple[int, ...] = (1, 64)
    settle_batches: int = 8
    calib_batches: int = 16
    batch_size: int = 32
    eval_batch: int = 64
    warmup: int = 5
    rounds: int = 20
    block_seconds: float = 0.15
    min_calls: int = 2
    pause: float = 0.03
    seed: int = 0


FULL = DeployConfig()
QUICK = DeployConfig(
    width=8, batches=(1, 4), settle_batches=2, calib_batches=2, batch_size=4, eval_batch=4,
    warmup=1, rounds=1, block_seconds=0.0, min_calls=2, pause=0.0,
)


@dataclass
class Variant:
    """One row family: a runtime + model, and how to build a fresh instance of it."""

    runtime: str
    model: str
    make: Callable[[], Runner] | None = None
    error: str = ""
    agreement: str = "-"
    sqnr: float | None = None
    ms: dict[int, float] = field(default_factory=dict)  # batch -> median of all calls
    blocks: dict[int, list[float]] = field(default_factory=dict)  # batch -> per-round medians
    errors: dict[int, str] = field(default_factory=dict)
    sim: np.ndarray | None = None  # fxquant's simulation output on the eval batch (agreement)


def run(quick: bool = False) -> SuiteResult:
    """The suite entry point for ``bench/run.py``."""
    cfg = QUICK if quick else FULL
    threads = torch.get_num_threads()
    load0 = _loadavg()
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fxquant_deploy_") as tmp:
        variants, eval_x, ref, build_notes = _build(cfg, tmp, threads)
        notes += build_notes
        calls: dict[str, int] = {}
        for i, batch in enumerate(cfg.batches):
            last = i == len(cfg.batches) - 1
            _time_batch(variants, cfg, batch, eval_x if last else None, ref, calls)
    result = SuiteResult(
        "deploy",
        f"Deployment latency: ResidualCNN(width={cfg.width}, stem_stride={cfg.stem_stride}) int8 "
        f"vs fp32, {threads} thread(s)",
        COLUMNS,
    )
    result.rows = _rows(variants, cfg)
    result.notes = _target_notes(variants, cfg) + notes + [
        f"timing: fresh instances per batch size, {cfg.warmup} warmup calls, then {cfg.rounds} "
        f"interleaved rounds of >= {cfg.block_seconds:g} s blocks per variant; ms = median over "
        f"all calls ({min(calls.values(), default=0)}-{max(calls.values(), default=0)} per "
        "cell), speedups = median over rounds of the paired per-round ratio; "
        f"{threads} thread(s) in every runtime",
        f"load average (1 min) at start / end: {load0} / {_loadavg()} on {os.cpu_count()} cores",
    ]
    if _busy(load0, threads):
        result.notes.insert(0, (
            f"WARNING: busy machine (load {load0} on {os.cpu_count()} cores, timing with "
            f"{threads} thread(s)): other processes preempt the runtimes' worker threads "
            "(torch's OpenMP threads worst), so times and ratios are unreliable; rerun idle "
            "or with torch.set_num_threads(1)"
        ))
    return result


# -- model, data, artifacts -----------------------------------------------------------------------
def _settled_model(cfg: DeployConfig, gen: torch.Generator) -> nn.Module:
    """Random-init ResidualCNN; BN running statistics = cumulative averages over random batches."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = ResidualCNN(width=cfg.width, stem_stride=cfg.stem_stride)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    model.train()
    with torch.no_grad():
        for _ in range(cfg.settle_batches):
            model(_images(cfg, cfg.batch_size, gen))
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def _images(cfg: DeployConfig, n: int, gen: torch.Generator) -> Tensor:
    return torch.randn(n, 3, cfg.image, cfg.image, generator=gen)


def _build(
    cfg: DeployConfig, tmp: str, threads: int
) -> tuple[list[Variant], np.ndarray, np.ndarray, list[str]]:
    """Model, data, exported files, and one :class:`Variant` per runtime / model."""
    gen = torch.Generator().manual_seed(cfg.seed)
    model = _settled_model(cfg, gen)
    calib = [_images(cfg, cfg.batch_size, gen) for _ in range(cfg.calib_batches)]
    eval_t = _images(cfg, cfg.eval_batch, gen)
    example = calib[0][:1]
    with torch.inference_mode():
        ref = model(eval_t).numpy()
    params = sum(p.numel() for p in model.parameters())
    notes = [
        f"model: ResidualCNN(width={cfg.width}, stem_stride={cfg.stem_stride}), "
        f"{params / 1e6:.2f} M parameters, "
        f"{_macs(model, example) / 1e6:.0f} M multiply-adds per 3x{cfg.image}x{cfg.image} image; "
        f"random init, BN statistics from {cfg.settle_batches} random batches; calibrated on "
        f"{cfg.calib_batches} random batches of {cfg.batch_size} (N(0,1) images), SQNR / verify on "
        f"a held-out batch of {cfg.eval_batch}",
    ]
    qdq = os.path.join(tmp, "fxquant_qdq.onnx")
    qdq_ov = os.path.join(tmp, "fxquant_qdq_openvino.onnx")
    flt = os.path.join(tmp, "float.onnx")
    peer = os.path.join(tmp, "ort_quantize_static.onnx")

    variants: list[Variant] = [
        Variant(TORCH, "fp32 eager", make=lambda: _torch_runner(copy.deepcopy(model))),
    ]

    q_ort, err = _attempt(lambda: _prepared(model, example, calib, "onnxruntime"))
    _, err_f = (None, err) if err else _attempt(
        lambda: fxquant.export_onnx(q_ort, example, flt, quantize=False)
    )
    _, err_q = (None, err) if err else _attempt(lambda: fxquant.export_onnx(q_ort, example, qdq))
    # OpenVINO gets the export of the openvino profile (no requantization before residual adds,
    # as its fused sum post-op computes them)
    q_ov, err_ov = _attempt(lambda: _prepared(model, example, calib, "openvino"))
    if not err_ov:
        err_ov = _attempt(lambda: fxquant.export_onnx(q_ov, example, qdq_ov))[1]
    peer_err = err_f or _attempt(lambda: _quantize_static(flt, peer, calib))[1]

    ort_fp32 = Variant(ORT, "fp32 (float ONNX)", error=err_f)
    ort_fx = Variant(ORT, "int8 fxquant QDQ", error=err_q)
    ort_peer = Variant(ORT, "int8 ORT quantize_static", error=peer_err)
    ov_fp32 = Variant(OV, "fp32 (float ONNX, f32 hint)", error=err_f)
    ov_fx = Variant(OV, "int8 fxquant QDQ (openvino profile)", error=err_ov)
    for v, path in ((ort_fp32, flt), (ort_fx, qdq), (ort_peer, peer)):
        if not v.error:
            v.make = lambda path=path: _ort_runner(path, threads)
    for v, path in ((ov_fp32, flt), (ov_fx, qdq_ov)):
        if not v.error:
            v.make = lambda path=path: _ov_runner(path, threads)
    variants += [ort_fp32, ort_fx, ort_peer, ov_fp32, ov_fx]

    for v, rt, q, path in ((ort_fx, ORT, q_ort, qdq), (ov_fx, OV, q_ov, qdq_ov)):
        if v.error:
            continue
        rep, e = _attempt(
            lambda rt=rt, q=q, path=path: fxquant.verify(q, path, eval_t, rt, num_threads=threads)
        )
        if e:
            v.agreement = f"verify failed: {e}"
            continue
        out = rep.outputs[0]
        v.agreement = (
            f"verify ({rep.reference} sim): {100 * out.identical:.1f}% identical, "
            f"max {out.max_step_diff} step(s)"
        )
        if out.float32_identical is not None:
            v.agreement += f" (plain f32 sim: {100 * out.float32_identical:.1f}%)"
    for v, path in ((ort_fx, qdq), (ort_peer, peer)):
        if not v.error:
            counts, e = _attempt(lambda path=path: _ort_op_counts(path, threads))
            notes.append(f"ORT runs {v.model} as: {counts or e}")

    variants += _litert_variants(model, example, calib, eval_t, tmp, threads)

    x86 = Variant(TORCH, "int8 fxquant convert(x86)")
    q_x86, x86.error = _attempt(lambda: _prepared(model, example, calib, "x86"))
    if not x86.error:
        x86.make = lambda: _torch_runner(fxquant.convert(q_x86, backend="x86"))
        x86.sim, e = _attempt(lambda: _torch_runner(q_x86)(eval_t.numpy()))
        x86.agreement = f"simulation failed: {e}" if e else "-"
    variants.append(x86)
    return variants, eval_t.numpy(), ref, notes


def _litert_variants(model: nn.Module, example: Tensor, calib: list[Tensor], eval_t: Tensor,
                     tmp: str, threads: int) -> list[Variant]:
    """LiteRT fp32 and int8 (XNNPACK) of the ``tflite`` profile's model, with verify's
    agreement of the int8 file (exported at the eval batch size) with the simulation."""
    q, err = _attempt(lambda: _prepared(model, example, calib, "tflite"))
    fp32 = Variant(LITERT, "fp32 (float TFLite, XNNPACK)", error=err)
    int8 = Variant(LITERT, "int8 fxquant TFLite (XNNPACK)", error=err)
    if err:
        return [fp32, int8]
    fp32.make = lambda: _litert_runner(q, example, tmp, threads, quantize=False)
    int8.make = lambda: _litert_runner(q, example, tmp, threads, quantize=True)
    path = os.path.join(tmp, "fxquant_eval.tflite")

    def check() -> object:
        _export_tflite(q, eval_t, path, quantize=True)
        return fxquant.verify(q, path, eval_t, "litert", tensors=False, num_threads=threads)

    rep, e = _attempt(check)
    if e:
        int8.agreement = f"verify failed: {e}"
    else:
        out = rep.outputs[0]
        int8.agreement = (f"verify ({rep.reference} sim): {100 * out.identical:.1f}% identical, "
                          f"max {out.max_step_diff} step(s)")
        if out.float32_identical is not None:
            int8.agreement += f" (plain f32 sim: {100 * out.float32_identical:.1f}%)"
    return [fp32, int8]


def _export_tflite(q: nn.Module, x: Tensor, path: str, quantize: bool) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fxquant.export_tflite(q, x, path, quantize=quantize, check=False)


def _litert_runner(q: nn.Module, example: Tensor, tmp: str, threads: int,
                   quantize: bool) -> Runner:
    """A LiteRT (XNNPACK) runner; the file is exported for each batch size on first use (the
    warmup), as its shapes are static."""
    from ai_edge_litert.interpreter import Interpreter

    sessions: dict[int, tuple[object, int, int]] = {}

    def session(batch: int):
        if batch not in sessions:
            path = os.path.join(tmp, f"litert_{'int8' if quantize else 'fp32'}_{batch}.tflite")
            x = example.expand(batch, *example.shape[1:]).contiguous()
            _export_tflite(q, x, path, quantize=quantize)
            interp = Interpreter(model_path=path, num_threads=threads)
            interp.allocate_tensors()
            sessions[batch] = (interp, interp.get_input_details()[0]["index"],
                               interp.get_output_details()[0]["index"])
        return sessions[batch]

    def fn(x: np.ndarray) -> np.ndarray:
        interp, i, o = session(x.shape[0])
        interp.set_tensor(i, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))  # NHWC input
        interp.invoke()
        return interp.get_tensor(o)

    return fn


def _prepared(model: nn.Module, example: Tensor, calib: list[Tensor], backend: str) -> nn.Module:
    qmodel = fxquant.prepare(
        model, example, fxquant.default_calibration_qconfig_setter, backend=backend
    )
    return fxquant.calibrate(qmodel, calib, progress=False)


def _quantize_static(float_path: str, out_path: str, calib: list[Tensor]) -> None:
    """The peer: ONNX Runtime's static PTQ, QDQ, per-channel, U8S8, min-max (its defaults for
    the rest), calibrated on the same batches.

    Without ``quant_pre_process``: the float ONNX is already BN-folded, and pre-processing it
    gave the same graph in ORT (QLinearConv x15, QLinearAdd x6, QGemm) and was not faster when
    checked (2-core AVX512-VNNI machine, ORT 1.31)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    name = onnx.load(float_path).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{name: x.numpy()} for x in calib])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    logging.disable(logging.WARNING)  # its "consider pre-processing" advice, printed twice
    try:
        quantize_static(
            float_path, out_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        logging.disable(logging.NOTSET)


def _macs(model: nn.Module, example: Tensor) -> int:
    """Multiply-adds of the convolutions and linears for one image."""
    total = 0

    def hook(m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * m.weight[0].numel()
        else:
            total += m.weight.numel()

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return total


# -- runners --------------------------------------------------------------------------------------
def _torch_runner(module: nn.Module) -> Runner:
    module.eval()

    def fn(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return fn


def _ort_options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def _ort_runner(path: str, threads: int) -> Runner:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, _ort_options(threads), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def fn(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: x})[0]

    return fn


def _ort_op_counts(path: str, threads: int) -> str:
    """The op types ONNX Runtime actually runs (its optimized graph), integer kernels first."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="fxquant_deploy_opt_") as tmp:
        so = _ort_options(threads)
        so.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        counts = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    return _ops(dict(sorted(counts.items(), key=lambda kv: (not kv[0].startswith("Q"), kv[0]))))


def _ov_runner(path: str, threads: int) -> Runner:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32",  # the default on AVX512/AMX CPUs is bf16
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
    })
    request = compiled.create_infer_request()

    def fn(x: np.ndarray) -> np.ndarray:
        return request.infer({0: x})[0]

    return fn


# -- timing ---------------------------------------------------------------------------------------
def _time_batch(
    variants: list[Variant],
    cfg: DeployConfig,
    batch: int,
    eval_x: np.ndarray | None,
    ref: np.ndarray,
    calls: dict[str, int],
) -> None:
    """Fresh instances of every variant, first called at ``batch``; interleaved timing.  With
    ``eval_x``, also the output on it (SQNR vs ``ref``, agreement with the simulation)."""
    gen = np.random.default_rng(cfg.seed + batch)
    x = gen.standard_normal((batch, 3, cfg.image, cfg.image), dtype=np.float32)
    runners: dict[int, Runner] = {}
    for i, v in enumerate(variants):
        if v.make is None:
            continue
        fn, err = _attempt(v.make)
        if not err:
            err = _attempt(lambda fn=fn: [fn(x) for _ in range(cfg.warmup)])[1]
        if err:
            v.errors[batch] = err
        else:
            runners[i] = fn
    samples: dict[int, list[float]] = {i: [] for i in runners}
    order = list(runners)
    for r in range(cfg.rounds):
        for i in order[r % len(order):] + order[: r % len(order)] if order else []:
            fn, block = runners[i], []
            time.sleep(cfg.pause)  # the previous runtime's worker threads stop spinning
            end = time.perf_counter() + cfg.block_seconds
            while len(block) < cfg.min_calls or time.perf_counter() < end:
                t = time.perf_counter()
                fn(x)
                block.append(time.perf_counter() - t)
            samples[i] += block
            variants[i].blocks.setdefault(batch, []).append(statistics.median(block))
    for i, ts in samples.items():
        v = variants[i]
        v.ms[batch] = 1e3 * statistics.median(ts)
        calls[f"{i}/{batch}"] = len(ts)
        if eval_x is not None:
            out, err = _attempt(lambda i=i: np.array(runners[i](eval_x)))
            if err:
                v.errors[batch] = f"eval batch: {err}"
                continue
            v.sqnr = sqnr(ref, out)
            if v.sim is not None:
                v.agreement = f"{sqnr(v.sim, out):.1f} dB SQNR vs its simulation"
    runners.clear()
    gc.collect()


# -- report ---------------------------------------------------------------------------------------
def sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    """``10 log10(sum ref^2 / sum (ref - out)^2)`` in dB (inf when identical)."""
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    signal, noise = float(np.sum(ref**2)), float(np.sum((ref - out) ** 2))
    if noise == 0:
        return float("inf")
    return float("-inf") if signal == 0 else float(10 * np.log10(signal / noise))


def _rows(variants: list[Variant], cfg: DeployConfig) -> list[dict[str, object]]:
    rows = []
    for batch in cfg.batches:
        base_ort, base_torch = _find(variants, ORT, "fp32"), _find(variants, TORCH, "fp32")
        for v in variants:
            ms = v.ms.get(batch)
            rows.append({
                "runtime": v.runtime,
                "model": v.model,
                "batch": batch,
                "ms": ms if ms is not None else "-",
                "vs ORT fp32": _fmt_ratio(speedup(base_ort, v, batch)),
                "vs torch fp32": _fmt_ratio(speedup(base_torch, v, batch)),
                "SQNR vs fp32 (dB)": "-" if v.sqnr is None else round(v.sqnr, 1),
                "agreement": v.agreement,
                "error": v.error or v.errors.get(batch, ""),
            })
    return rows


def _target_notes(variants: list[Variant], cfg: DeployConfig) -> list[str]:
    fx, peer = _find(variants, ORT, "fxquant"), _find(variants, ORT, "quantize_static")
    fp32 = _find(variants, ORT, "fp32")
    parts, met = [], True
    for b in cfg.batches:
        speed, vs_peer = speedup(fp32, fx, b), speedup(fx, peer, b)  # vs_peer: time ratio
        if speed is None:
            parts.append(f"batch {b}: not measured")
            met = False
            continue
        ok = speed >= TARGET_VS_FP32
        text = f"batch {b}: {speed:.2f}x ORT fp32"
        if vs_peer is None:
            text += ", quantize_static not measured"
        else:
            ok = ok and vs_peer >= 1 / (1 + TIE)
            text += f", {1 / vs_peer:.2f}x quantize_static's time"
        met = met and ok
        parts.append(text + (" -- met" if ok else " -- missed"))
    return [
        f"target: fxquant ORT int8 >= {TARGET_VS_FP32}x ORT fp32 and not slower than ORT "
        f"quantize_static (time ratio <= {1 + TIE:.2f}: identical fused graphs differ by up to "
        f"that much on a busy machine): {'MET' if met else 'MISSED'} ({'; '.join(parts)})"
    ]


def speedup(base: Variant, v: Variant, batch: int) -> float | None:
    """How many times faster ``v`` ran than ``base`` at ``batch``: the median over timing rounds
    of the ratio of their block medians in that round (paired, so that load from other
    processes that changes between rounds cancels); None if either did not run."""
    a, b = base.blocks.get(batch, []), v.blocks.get(batch, [])
    ratios = [x / y for x, y in zip(a, b, strict=False) if y > 0]
    return statistics.median(ratios) if ratios else None


def _find(variants: list[Variant], runtime: str, key: str) -> Variant:
    return next(v for v in variants if v.runtime == runtime and key in v.model)


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _ops(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in counts.items()) or "none"


def _attempt(fn: Callable[[], object]) -> tuple[object, str]:
    """``(fn(), "")``, or ``(None, "<Error>: message")`` if it raised (traceback on stderr)."""
    try:
        return fn(), ""
    except Exception as e:  # a peer / runtime failing is a result, not a crash
        traceback.print_exc()
        msg = " ".join(str(e).split())
        return None, f"{type(e).__name__}: {msg[:160]}"


def _busy(load: str, threads: int) -> bool:
    """Other processes already occupy cores this run's threads need (load average > free)."""
    try:
        return float(load) > max(0, (os.cpu_count() or 1) - threads) + 0.5
    except ValueError:
        return False


def _loadavg() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"
