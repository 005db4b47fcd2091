"""Suite ``simulation``: the eval-mode model vs ONNX Runtime, and what the runtime arithmetic costs.

For each model, prepared for the ``onnxruntime`` profile and calibrated (PTQ), exported with
:func:`fxquant.export_onnx` and run in ONNX Runtime:

* the trained zoo models (:mod:`bench.zoo`: plain CNN, residual CNN, depthwise CNN, transformer
  encoder) on their test split: % of identical output codes and the largest step difference of
  ``qmodel.eval()(x)`` (the runtime simulation) and of the float simulation, top-1 accuracy of
  the float simulation, the runtime simulation and ORT, and how many test images the runtime
  simulation and ORT classify differently;
* torchvision's MobileNetV2 / MNASNet / ResNet-18 / EfficientNet-B0 (random weights, BatchNorm
  statistics from random images, 64 px; EfficientNet's stochastic depth dropped), on random
  images;
* cost: eval-mode forward time of the runtime simulation / the float simulation (median of paired
  interleaved rounds, batch 64, in this process; the load average is in the notes).

``python bench/run.py simulation`` (``--quick``: two zoo models, MobileNetV2, fewer rounds).
"""

from __future__ import annotations

import os
import pathlib
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import fxquant  # noqa: E402
from bench.common import SuiteResult  # noqa: E402
from bench.data import batches  # noqa: E402
from bench.zoo import get_trained  # noqa: E402

__all__ = ["run", "COLUMNS", "ZOO_MODELS", "TORCHVISION_MODELS"]

ZOO_MODELS = ("plain_cnn", "residual_cnn", "depthwise_cnn", "tiny_transformer")
TORCHVISION_MODELS = ("mobilenet_v2", "mnasnet1_0", "resnet18", "efficientnet_b0")
COLUMNS = ["model", "runtime sim = ORT", "max steps", "float sim = ORT", "float max steps",
           "acc float sim", "acc runtime sim", "acc ORT", "images classified differently",
           "eval cost runtime / float"]


def _ort_session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _output_scale(qmodel: nn.Module) -> float:
    out = next(n for n in qmodel.graph.nodes if n.op == "output").args[0]
    return float(qmodel.get_submodule(str(out.target)).scale)


def _cost(qmodel: nn.Module, x: torch.Tensor, rounds: int) -> float:
    """Median over paired, interleaved rounds of (runtime-simulation time / float time)."""
    def once(mode: fxquant.Simulation) -> float:
        with torch.no_grad(), fxquant.simulation(qmodel, mode):
            t = time.perf_counter()
            qmodel(x)
            return time.perf_counter() - t

    for mode in (fxquant.Simulation.RUNTIME, fxquant.Simulation.FLOAT):  # warm up both
        once(mode)
    ratios = []
    for i in range(rounds):
        order = [fxquant.Simulation.RUNTIME, fxquant.Simulation.FLOAT]
        if i % 2:
            order.reverse()
        t = {m: once(m) for m in order}
        ratios.append(t[fxquant.Simulation.RUNTIME] / t[fxquant.Simulation.FLOAT])
    return statistics.median(ratios)


def _compare(qmodel: nn.Module, example: torch.Tensor, inputs: list[torch.Tensor],
             tmp: str, name: str) -> dict[str, Any]:
    path = os.path.join(tmp, f"{name}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fxquant.export_onnx(qmodel, example, path)
    sess = _ort_session(path)
    feed = sess.get_inputs()[0].name
    scale = _output_scale(qmodel)
    qmodel.eval()
    rt, runtime, flt = [], [], []
    with torch.no_grad():
        for x in inputs:
            rt.append(torch.from_numpy(sess.run(None, {feed: x.numpy()})[0]))
            runtime.append(qmodel(x))
            with fxquant.simulation(qmodel, fxquant.Simulation.FLOAT):
                flt.append(qmodel(x))
    rt_t, run_t, flt_t = torch.cat(rt), torch.cat(runtime), torch.cat(flt)
    steps = ((rt_t.double() - run_t.double()) / scale).round()
    fsteps = ((rt_t.double() - flt_t.double()) / scale).round()
    return {
        "runtime sim = ORT": f"{100 * float((steps == 0).double().mean()):.2f}%",
        "max steps": int(steps.abs().max()),
        "float sim = ORT": f"{100 * float((fsteps == 0).double().mean()):.2f}%",
        "float max steps": int(fsteps.abs().max()),
        "_outputs": (rt_t, run_t, flt_t),
    }


def _zoo_row(name: str, tmp: str, rounds: int) -> dict[str, Any]:
    model, splits, _ = get_trained(name, progress=False)
    calib = [x for x, _ in batches(splits.calib, 64)][:4]
    example = calib[0][:2]
    qmodel = fxquant.prepare(model, example, fxquant.default_calibration_qconfig_setter,
                             backend="onnxruntime")
    fxquant.calibrate(qmodel, calib, progress=False)
    xs, ys = zip(*batches(splits.test, 256), strict=True)
    row = _compare(qmodel, example, list(xs), tmp, name)
    rt_t, run_t, flt_t = row.pop("_outputs")
    labels = torch.cat(ys)

    def acc(out: torch.Tensor) -> str:
        return f"{100 * float((out.argmax(1) == labels).double().mean()):.2f}"

    row.update({
        "model": name, "acc float sim": acc(flt_t), "acc runtime sim": acc(run_t),
        "acc ORT": acc(rt_t),
        "images classified differently": int((run_t.argmax(1) != rt_t.argmax(1)).sum()),
        "eval cost runtime / float": round(_cost(qmodel, xs[0][:64], rounds), 2),
    })
    return row


def _torchvision_row(name: str, tmp: str, rounds: int) -> dict[str, Any]:
    from bench._tv_shim import ensure_torchvision_importable

    ensure_torchvision_importable()
    import torchvision
    from torchvision.ops import StochasticDepth

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10)
    for m in list(model.modules()):  # identity in eval mode; no ONNX emitter: dropped
        for child_name, child in list(m.named_children()):
            if isinstance(child, StochasticDepth):
                setattr(m, child_name, nn.Identity())
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 64, 64, generator=gen))
    model.eval()
    example = torch.randn(2, 3, 64, 64, generator=gen)
    qmodel = fxquant.prepare(model, example, fxquant.default_calibration_qconfig_setter,
                             backend="onnxruntime")
    fxquant.calibrate(qmodel, [torch.randn(16, 3, 64, 64, generator=gen) for _ in range(2)],
                      progress=False)
    inputs = [torch.randn(32, 3, 64, 64, generator=gen) for _ in range(2)]
    row = _compare(qmodel, example, inputs, tmp, name)
    row.pop("_outputs")
    row.update({"model": f"{name} (torchvision, random weights)", "acc float sim": "-",
                "acc runtime sim": "-", "acc ORT": "-", "images classified differently": "-",
                "eval cost runtime / float": round(_cost(qmodel, torch.cat(inputs)[:64], rounds),
                                                   2)})
    return row


def run(quick: bool = False) -> SuiteResult:
    zoo = ZOO_MODELS[:2] if quick else ZOO_MODELS
    tv = TORCHVISION_MODELS[:1] if quick else TORCHVISION_MODELS
    rounds = 5 if quick else 15
    res = SuiteResult(
        "simulation",
        "Runtime simulation: qmodel.eval() vs ONNX Runtime (onnxruntime profile, PTQ)",
        COLUMNS,
    )
    with tempfile.TemporaryDirectory(prefix="fxquant_bench_sim_") as tmp:
        for name in zoo:
            res.rows.append(_zoo_row(name, tmp, rounds))
        for name in tv:
            try:
                res.rows.append(_torchvision_row(name, tmp, rounds))
            except ImportError as err:  # torchvision not installed: say so
                res.notes.append(f"{name}: torchvision unavailable ({err})")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    res.notes += [
        "runtime sim: the eval-mode model (Simulation.RUNTIME, the default for the onnxruntime "
        "profile); float sim: Simulation.FLOAT (fake quantization in float, as in training).",
        "= ORT: share of output elements with the same integer code as ONNX Runtime; max steps: "
        "largest difference in quantization steps of the output quantizer.",
        f"cost: median of {rounds} paired interleaved rounds, batch 64, "
        f"{torch.get_num_threads()} thread(s), load average {load}.",
    ]
    return res


if __name__ == "__main__":  # python bench/simulation.py [--quick] [model ...]: rows as they come
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    rounds = 5 if "--quick" in sys.argv else 15
    with tempfile.TemporaryDirectory(prefix="fxquant_bench_sim_") as tmp:
        for name in names or (*ZOO_MODELS, *TORCHVISION_MODELS):
            row = (_zoo_row if name in ZOO_MODELS else _torchvision_row)(name, tmp, rounds)
            print(" | ".join(str(row.get(c, "")) for c in COLUMNS), flush=True)
    print(f"load average {os.getloadavg()}")
