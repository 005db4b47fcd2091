"""The self-check of ``export_onnx``: the file it wrote, run in ONNX Runtime, against the model.

Before a file is renamed into place, ONNX Runtime runs it on the example inputs with its QDQ
fusions off (``verify(..., integer_kernels=False, reference="float32")``: every op between
DequantizeLinear and QuantizeLinear in float -- the graph's own semantics, not a runtime
kernel's approximation) and :func:`fxquant.verify` compares every output with the simulation in
quantization steps.  The file is refused when an output is off by more than
:data:`MAX_STEPS` steps on more than :data:`MAX_FAR` of its elements -- quantization noise
cannot do that, a wrong graph does (see :func:`acceptable` for why the bar is not "99%
identical"); the error names the first quantized tensor, in graph order, that differs.

A float export (``quantize=False``) is compared with the model with every quantizer off, within
float32 noise.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import ExportError, bounded
from ..fake_quant import FakeQuantState
from ..modelio import ModelInputs, call_model, output_tensors
from .quantizers import eval_mode, frozen_quantizers
from .verify import TensorDiff, VerifyReport, verify

__all__ = ["MAX_STEPS", "MAX_FAR", "FLOAT_TOLERANCE", "acceptable", "check_quantized",
           "check_float"]

MAX_STEPS = 2
"""Elements more than this many quantization steps from the simulation count as *far*."""
MAX_FAR = 0.01
"""A quantized output may have at most this fraction of far elements."""
FLOAT_TOLERANCE = 1e-4
"""A float export may differ from the float model by this fraction of the output's range."""


def acceptable(d: TensorDiff) -> bool:
    """Whether an output's difference is quantization noise.

    Rounding ties decide codes differently in any two float programs (summation order), and in
    a deep network one flipped code flips a few more downstream: on random-weight CNNs only
    ~40-97% of the output codes of a *correct* file match the float32 simulation, a few of them
    by several steps.  What noise does not do is move many elements by many steps: a wrong
    scale, a lost in-place op or a wrong layout moves most of them by tens to thousands.
    """
    if d.max_step_diff is None:  # a float output: float32 noise only
        return d.identical >= 1.0 - MAX_FAR
    far = sum(n for k, n in d.histogram.items() if abs(k) > MAX_STEPS)
    total = sum(d.histogram.values()) or 1
    return far / total <= MAX_FAR


def check_quantized(qmodel: nn.Module, path: str, inputs: ModelInputs) -> VerifyReport:
    """Refuse (``ExportError``) when the file at ``path`` does not compute the simulation."""
    report = verify(qmodel, path, inputs, "onnxruntime", tensors=False, integer_kernels=False,
                    reference="float32")
    bad = [d for d in report.outputs if not acceptable(d)]
    if not bad:
        return report
    detail = verify(qmodel, path, inputs, "onnxruntime", tensors=True, integer_kernels=False,
                    reference="float32")
    order = {name: i for i, name in enumerate(_graph_order(path))}
    tensors = sorted((t for t in detail.tensors if not acceptable(t)),
                     key=lambda t: order.get(t.name, len(order)))
    first = tensors[0] if tensors else bad[0]
    raise ExportError(
        f"the exported file does not compute what the simulation computes: {_describe(first)}"
        f"{'' if first is bad[0] else f'; output {_describe(bad[0])}'} (ONNX Runtime, QDQ "
        "fusions off, on the example inputs). The file was not written. This is a bug in "
        "fxquant's export: please report it with the model; export_onnx(..., check=False) "
        "writes the file anyway"
    )


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
    off = {s: FakeQuantState.FLOAT for s in FakeQuantState}
    with torch.no_grad(), eval_mode(qmodel), frozen_quantizers(qmodel, off):
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

