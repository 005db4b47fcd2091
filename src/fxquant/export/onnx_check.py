"""The self-check of ``export_onnx``: the file it wrote, run in ONNX Runtime, against the model.

Before a file is renamed into place, ONNX Runtime runs it on the example inputs with its QDQ
fusions off (``verify(..., integer_kernels=False, reference="float32")``: every op between
DequantizeLinear and QuantizeLinear in float -- the graph's own semantics, not a runtime
kernel's approximation) and :func:`fxquant.verify` compares every output with the simulation.
An output passes when it is the simulation up to rounding ties, or when the file is no farther
from the simulation than the simulation is from the float model (see :func:`acceptable`); a
file with an output that fails is refused, naming the first quantized tensor, in graph order,
that fails the same bar.

A float export (``quantize=False``) is compared with the model with every quantizer off, within
float32 noise.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import ExportError, bounded
from ..fake_quant import FakeQuantState, quantizer_states
from ..modelio import ModelInputs, call_model, eval_mode, output_tensors
from .verify import TensorDiff, VerifyReport, verify

__all__ = ["MAX_STEPS", "MAX_FAR", "NOISE_MARGIN_DB", "FLOAT_TOLERANCE", "acceptable",
           "check_quantized", "check_float"]

MAX_STEPS = 2
"""Elements more than this many quantization steps from the simulation count as *far*."""
MAX_FAR = 0.01
"""An output with at most this fraction of far elements is the simulation up to ties."""
NOISE_MARGIN_DB = 3.0
"""Otherwise the file's SQNR against the simulation may be this much below the simulation's
own SQNR against the float model (its quantization noise)."""
FLOAT_TOLERANCE = 1e-4
"""A float export may differ from the float model by this fraction of the output's range."""


def acceptable(d: TensorDiff, noise_db: float | None = None) -> bool:
    """Whether the runtime's difference ``d`` from the simulation is quantization noise.

    ``noise_db``: the simulation's SQNR against the float model on the same tensor.

    Two correct float programs round ties differently (summation order), and in a deep network
    one flipped code flips others downstream: on random-weight networks a *correct* file can be
    far from identical to the float32 simulation (inception_v3: 66% of the output codes
    identical, up to 4 steps).  So a tensor passes when at most :data:`MAX_FAR` of its
    elements are more than :data:`MAX_STEPS` steps off (float tensors: float32-identical on
    99%), or when its SQNR against the simulation is at most :data:`NOISE_MARGIN_DB` below the
    simulation's own quantization noise -- flipped codes are a small part of that noise
    (inception_v3: 31.9 dB from the simulation, whose noise is 24.3 dB), a wrong graph is not
    (one conv weight 10% off in the test ResNet: 38.2 dB against the simulation's 46.2 dB).
    """
    if d.max_step_diff is None:
        close = d.identical >= 1.0 - MAX_FAR
    else:
        far = sum(n for k, n in d.histogram.items() if abs(k) > MAX_STEPS)
        close = far <= MAX_FAR * (sum(d.histogram.values()) or 1)
    if close:
        return True
    if noise_db is None or d.sqnr_db is None:
        return False
    return d.sqnr_db >= noise_db - NOISE_MARGIN_DB


def _verify(qmodel: nn.Module, path: str, inputs: ModelInputs, tensors: bool) -> VerifyReport:
    """The graph's semantics in ONNX Runtime, whatever runtime the profile targets."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="verify: the model was prepared for")
        return verify(qmodel, path, inputs, "onnxruntime", tensors=tensors,
                      integer_kernels=False, reference="float32")


def check_quantized(qmodel: nn.Module, path: str, inputs: ModelInputs) -> VerifyReport:
    """Refuse (``ExportError``) when the file at ``path`` does not compute the simulation."""
    report = _verify(qmodel, path, inputs, tensors=False)
    if all(acceptable(d) for d in report.outputs):
        return report  # identical up to rounding ties: no need for the noise level
    noise = _noise(qmodel, inputs, [])
    bad = [d for i, d in enumerate(report.outputs) if not acceptable(d, noise.get(i))]
    if not bad:
        return report
    detail = _verify(qmodel, path, inputs, tensors=True)
    noise = _noise(qmodel, inputs, [t.quantizer for t in detail.tensors if t.quantizer])
    order = {name: i for i, name in enumerate(_graph_order(path))}
    tensors = sorted((t for t in detail.tensors if not acceptable(t, noise.get(t.quantizer))),
                     key=lambda t: order.get(t.name, len(order)))
    first = tensors[0] if tensors else bad[0]
    raise ExportError(
        f"the exported file does not compute what the simulation computes: {_describe(first)}"
        f"{'' if first is bad[0] else f'; output {_describe(bad[0])}'} (ONNX Runtime, QDQ "
        "fusions off, on the example inputs). The file was not written. This is a bug in "
        "fxquant's export: please report it with the model; export_onnx(..., check=False) "
        "writes the file anyway"
    )


def _noise(qmodel: nn.Module, inputs: ModelInputs, paths: list[str]) -> dict[Any, float]:
    """SQNR of the simulation against the float model (quantizers off), per output index and
    per quantizer path (the tensor that quantizer produces / would quantize)."""
    def run(off: bool) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        seen: dict[str, torch.Tensor] = {}
        hooks = []
        for p in set(paths):
            def hook(_m, _i, out, _p=p):
                seen[_p] = out.detach().clone()
            hooks.append(qmodel.get_submodule(p).register_forward_hook(hook))
        try:
            state = FakeQuantState.FLOAT if off else None  # None: QAT held as VALIDATION
            with torch.no_grad(), eval_mode(qmodel), quantizer_states(qmodel, state):
                copies = ModelInputs(*_clone((inputs.args, inputs.kwargs)))
                return output_tensors(call_model(qmodel, copies)), seen
        finally:
            for h in hooks:
                h.remove()

    sim_out, sim_t = run(False)
    flt_out, flt_t = run(True)
    out: dict[Any, float] = {i: _sqnr(s, f) for i, (s, f) in enumerate(zip(sim_out, flt_out,
                                                                            strict=False))}
    out.update({p: _sqnr(sim_t[p], flt_t[p]) for p in sim_t if p in flt_t})
    return out


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_clone(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    return obj


def _sqnr(sim: torch.Tensor, ref: torch.Tensor) -> float:
    """``10 log10(sum(ref^2) / sum((sim - ref)^2))`` (inf when equal)."""
    if sim.shape != ref.shape or not sim.is_floating_point():
        return math.inf
    noise = float((sim.double() - ref.double()).square().sum())
    signal = float(ref.double().square().sum())
    if noise == 0.0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def _describe(d: TensorDiff) -> str:
    if d.max_step_diff is None:
        return f"{bounded(d.name)!r} differs by up to {d.max_abs_diff:.3g} (float)"
    return (f"{bounded(d.name)!r} (quantizer {bounded(d.quantizer)!r}) is up to "
            f"{d.max_step_diff} steps off, {100 * (1 - d.identical):.1f}% of its elements differ")


def _graph_order(path: str) -> list[str]:
    graph = onnx.load(path, load_external_data=False).graph
    return [o for n in graph.node for o in n.output]


def check_float(qmodel: nn.Module, path: str, inputs: ModelInputs) -> None:
    """Refuse a float export whose outputs are not the float model's (quantizers off)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.detach().cpu().numpy()
             for i, t in zip(sess.get_inputs(), inputs.tensors(), strict=True)}
    got = sess.run(None, feeds)
    with torch.no_grad(), eval_mode(qmodel), quantizer_states(qmodel, FakeQuantState.FLOAT):
        want = output_tensors(call_model(qmodel, inputs))
    for name, rt, sim in zip((o.name for o in sess.get_outputs()), got, want, strict=True):
        ref = sim.detach().float().cpu().numpy()
        tol = FLOAT_TOLERANCE * max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-12)
        err = float(np.abs(np.asarray(rt, np.float64) - ref).max()) if ref.size else 0.0
        if rt.shape != ref.shape or not err <= tol:
            raise ExportError(
                f"the exported float file does not compute what the model computes: output "
                f"{bounded(name)!r} differs by up to {err:.3g} (allowed {tol:.3g}). The file was "
                "not written; export_onnx(..., check=False) writes it anyway"
            )

