"""Peer toolkits' QAT-step and calibration cost, each in its own child process.

NNCF, NVIDIA ModelOpt and AIMET patch torch or swap modules when they quantize a model, which
could slow every other variant of a shared process, so each runs in a spawned child that times
*its own* float baseline side by side with the peer (paired, interleaved rounds:
:func:`bench.common.interleaved`): every ratio is measured the same way as fxquant's, on the
same model (sent to the child), batch and thread count.

* **QAT step** -- one SGD step (forward, cross-entropy, backward, ``opt.step()``) of the model
  the peer returns for training, BatchNorm in training mode, over the same step of the float
  model.  NNCF: ``nncf.quantize`` (its default int8 preset) and training the result; ModelOpt:
  ``mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)`` and training the result (fake
  quantization with its straight-through estimator); AIMET: ``QuantizationSimModel`` (default
  config) after ``compute_encodings``, training ``sim.model``.
* **Calibration** -- ModelOpt: a forward of the quantized model with every quantizer in
  calibration mode (``disable_quant`` + ``enable_calib``: statistics only, as inside its own
  calibration loop), max and histogram calibrators, over a float forward.  NNCF and AIMET
  calibrate inside one call that also builds the model and computes ranges
  (``nncf.quantize``, ``sim.compute_encodings``), so their per-batch cost is the slope
  ``(T(3n) - T(n)) / 2n`` of that call over ``n`` and ``3n`` batches (fixed setup excluded).

A peer that cannot import, or fails, gives the reason instead of numbers.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
import os
import time
import traceback
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.common import interleaved

__all__ = ["PEERS", "measure", "adaround_layer_seconds"]

PEERS = ("NNCF", "NVIDIA ModelOpt", "AIMET")


def _step(model: nn.Module, x: Tensor, y: Tensor):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _fwd(model: nn.Module, x: Tensor):
    def go() -> None:
        with torch.no_grad():
            model(x)

    return go


def _slope(quantize_n, float_fwd_s: float, n: int) -> dict[str, Any]:
    """Per-batch cost of a one-shot calibration call from its time on n and 3n batches."""
    quantize_n(n)  # warmup: graph capture, extensions
    t_n, t_3n = [], []
    for _ in range(3):  # the fastest of three: the whole call's fixed cost varies more than 2n
        t = time.perf_counter()
        quantize_n(n)
        t_n.append(time.perf_counter() - t)
        t = time.perf_counter()
        quantize_n(3 * n)
        t_3n.append(time.perf_counter() - t)
    per_batch = (min(t_3n) - min(t_n)) / (2 * n)
    note = f"whole call {min(t_n):.2f} s ({n} batches), {min(t_3n):.2f} s ({3 * n})"
    if per_batch <= 0:
        return {"note": note + "; slope not measurable (load noise)"}
    return {"ms": per_batch * 1e3, "ratio": per_batch / float_fwd_s, "note": note}


def _float_fwd_seconds(model: nn.Module, x: Tensor, rounds: int) -> float:
    fwd = _fwd(model.eval(), x)
    return interleaved({"f": fwd}, "f", rounds, 2)["f"][0]


# -- the peers (run inside the child) ---------------------------------------------------------
def _nncf(model, x, y, rounds, block, nb) -> dict[str, Any]:
    import nncf

    logging.getLogger("nncf").setLevel(logging.ERROR)

    def quantize(batches: int) -> nn.Module:
        return nncf.quantize(copy.deepcopy(model).eval(), nncf.Dataset([x] * batches),
                             subset_size=batches, fast_bias_correction=None)

    out: dict[str, Any] = {"version": nncf.__version__}
    timed = interleaved({"float": _step(copy.deepcopy(model), x, y),
                         "peer": _step(quantize(1), x, y)}, "float", rounds, block)
    out["qat"] = {"ms": timed["peer"][0] * 1e3, "ratio": timed["peer"][1],
                  "variant": f"nncf.quantize + training ({nncf.__version__})"}
    if nb > 0:
        out["calib"] = [{"variant": f"nncf.quantize, per-batch slope ({nncf.__version__})",
                         **_slope(quantize, _float_fwd_seconds(model, x, rounds), nb)}]
    return out


def _modelopt_cfg(histogram: bool) -> dict:
    import modelopt.torch.quantization as mtq

    cfg = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    if histogram:
        quant_cfg = cfg["quant_cfg"]
        # ModelOpt < 0.40: {pattern: spec}; later: [{"quantizer_name": pattern, "cfg": spec}]
        entries = quant_cfg.items() if isinstance(quant_cfg, dict) else \
            [(e.get("quantizer_name", ""), e.get("cfg")) for e in quant_cfg]
        for key, spec in entries:
            if "input_quantizer" in key and isinstance(spec, dict):
                spec["calibrator"] = "histogram"
        # "max" would finish the calibration with compute_amax(), which a histogram calibrator
        # refuses without a method (0.47); no algorithm: the quantizers are inserted and the
        # timed forward collects the histograms (what a calibration batch costs)
        cfg["algorithm"] = None
    return cfg


def _modelopt(model, x, y, rounds, block, nb) -> dict[str, Any]:
    import modelopt
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization.nn import TensorQuantizer

    def loop(m: nn.Module) -> None:
        with torch.no_grad():
            m(x)

    def quantized(histogram: bool = False) -> nn.Module:
        return mtq.quantize(copy.deepcopy(model).eval(), _modelopt_cfg(histogram), loop)

    def calibrating(histogram: bool) -> nn.Module:
        q = quantized(histogram)
        for m in q.modules():
            if isinstance(m, TensorQuantizer) and m.is_enabled:
                m.disable_quant()
                m.enable_calib()
        return q.eval()

    version = modelopt.__version__
    out: dict[str, Any] = {"version": version}
    timed = interleaved({"float": _step(copy.deepcopy(model), x, y),
                         "peer": _step(quantized(), x, y)}, "float", rounds, block)
    out["qat"] = {"ms": timed["peer"][0] * 1e3, "ratio": timed["peer"][1],
                  "variant": f"mtq.quantize INT8_DEFAULT_CFG + training ({version})"}
    calls = {"float": _fwd(copy.deepcopy(model).eval(), x), "max": _fwd(calibrating(False), x)}
    hist_error = None
    try:  # ModelOpt 0.47's mtq.quantize cannot finish a histogram calibration under "max"
        calls["histogram"] = _fwd(calibrating(True), x)
    except Exception as err:
        hist_error = f"{type(err).__name__}: {err}".splitlines()[0][:120]
    timed = interleaved(calls, "float", rounds, block)
    out["calib"] = [
        {"variant": f"{name} calibrator ({version})", "ms": timed[name][0] * 1e3,
         "ratio": timed[name][1]} for name in ("max", "histogram") if name in timed
    ]
    if hist_error:
        out["note"] = f"histogram calibrator not run: {hist_error}"
    return out


def _aimet(model, x, y, rounds, block, nb) -> dict[str, Any]:
    from bench.peers import _import_with_torchvision_fallback

    stub = _import_with_torchvision_fallback("aimet_torch")
    import aimet_torch
    from aimet_torch.quantsim import QuantizationSimModel

    def forward(m: nn.Module, batches: int) -> None:
        with torch.no_grad():
            for _ in range(batches):
                m(x)

    def sim_of(m: nn.Module) -> QuantizationSimModel:
        return QuantizationSimModel(m.eval(), dummy_input=x)

    version = getattr(aimet_torch, "__version__", "?")
    out: dict[str, Any] = {"version": version, "note": stub}
    sim = sim_of(copy.deepcopy(model))
    sim.compute_encodings(forward, 1)
    timed = interleaved({"float": _step(copy.deepcopy(model), x, y),
                         "peer": _step(sim.model, x, y)}, "float", rounds, block)
    out["qat"] = {"ms": timed["peer"][0] * 1e3, "ratio": timed["peer"][1],
                  "variant": f"QuantizationSimModel (default config) + training ({version})"}
    if nb > 0:
        calib_sim = sim_of(copy.deepcopy(model))

        def calibrate(batches: int) -> None:
            calib_sim.compute_encodings(forward, batches)

        out["calib"] = [{"variant": f"sim.compute_encodings, per-batch slope ({version})",
                         **_slope(calibrate, _float_fwd_seconds(model, x, rounds), nb)}]
    return out


def _aimet_adaround(layer, batches, iterations) -> dict[str, Any]:
    import shutil
    import tempfile

    from bench.peers import _import_with_torchvision_fallback

    stub = _import_with_torchvision_fallback("aimet_torch")
    from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters

    tmp = tempfile.mkdtemp(prefix="cost_aimet_ada_")
    try:
        params = AdaroundParameters(data_loader=batches, num_batches=len(batches),
                                    default_num_iterations=iterations)
        t = time.perf_counter()
        Adaround.apply_adaround(layer.eval(), batches[0], params, path=tmp,
                                filename_prefix="ada", default_param_bw=4)
        return {"seconds": time.perf_counter() - t, "note": stub}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_RUNNERS = {"NNCF": _nncf, "NVIDIA ModelOpt": _modelopt, "AIMET": _aimet,
            "AIMET AdaRound": _aimet_adaround}


def _child(conn, name: str, args: tuple, threads: int) -> None:
    torch.set_num_threads(threads)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    try:
        conn.send(("ok", _RUNNERS[name](*args)))
    except BaseException as err:  # reported as the peer's row
        tb = traceback.format_exc().strip().splitlines()
        where = tb[-3].strip() if len(tb) > 2 else ""
        conn.send(("error", f"{type(err).__name__}: {err}".splitlines()[0][:200]
                   + (f" [{where[:120]}]" if where else "")))


def _in_child(name: str, *args: Any, timeout: float = 1800) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    env = {"NNCF_EXTENSION_LOAD_TIMEOUT": "900"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc = ctx.Process(target=_child, args=(child, name, args, torch.get_num_threads()),
                           daemon=True)
        proc.start()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    child.close()
    try:
        if not parent.poll(timeout):
            return {"error": f"timed out after {timeout:.0f} s"}
        status, value = parent.recv()
    except (EOFError, OSError) as err:
        return {"error": f"child process died ({type(err).__name__}, exit {proc.exitcode})"}
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    return value if status == "ok" else {"error": value}


def measure(peer: str, model: nn.Module, x: Tensor, y: Tensor, rounds: int, block: int,
            slope_batches: int) -> dict[str, Any]:
    """``{"qat": {...}, "calib": [{...}], "version", "note"}`` or ``{"error": reason}``."""
    return _in_child(peer, copy.deepcopy(model), x, y, rounds, block, slope_batches)


def adaround_layer_seconds(layer: nn.Module, batches: list[Tensor],
                           iterations: int) -> dict[str, Any]:
    """AIMET's ``Adaround.apply_adaround`` of a one-layer model: ``{"seconds"}`` or error."""
    return _in_child("AIMET AdaRound", copy.deepcopy(layer), batches, iterations)
