"""The self-check's bar: quantization noise passes, a wrong graph does not."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from torch import nn

import fxquant
from fxquant import FakeQuantState
from fxquant.export import ExportError, export_onnx, verify
from fxquant.export.onnx_check import acceptable
from fxquant.export.verify import TensorDiff

from .test_onnx_export import _calibrated, images, prepared


def _q(hist: dict[int, int], sqnr: float | None = None) -> TensorDiff:
    total = sum(hist.values())
    steps = max(abs(k) for k in hist)
    return TensorDiff("t", "q", (total,), 0.1, 0.1 * steps, steps, hist.get(0, 0) / total, hist,
                      sqnr_db=sqnr)


@pytest.mark.parametrize(("hist", "sqnr", "noise", "ok"), [
    ({0: 1000}, None, None, True),
    ({-1: 300, 0: 400, 1: 300}, None, None, True),  # 1-step flips of rounding ties
    ({-5: 5, -1: 200, 0: 590, 1: 200, 5: 5}, None, None, True),  # a few far ones: 1%
    ({-5: 6, -1: 200, 0: 588, 1: 200, 5: 6}, None, None, False),  # more than 1% far off ...
    ({-5: 6, -1: 200, 0: 588, 1: 200, 5: 6}, 31.9, 24.3, True),  # ... below the sim's noise
    ({-5: 300, 0: 400, 5: 300}, 38.2, 46.2, False),  # a wrong weight: above the sim's noise
    ({-5: 300, 0: 400, 5: 300}, 43.3, 46.2, True),  # within NOISE_MARGIN_DB of it
])
def test_quantized_output_bar(hist, sqnr, noise, ok):
    assert acceptable(_q(hist, sqnr), noise) is ok


@pytest.mark.parametrize(("identical", "sqnr", "noise", "ok"), [
    (1.0, float("inf"), None, True), (0.5, 45.0, 40.0, True), (0.5, 12.0, 40.0, False),
    (0.5, None, 40.0, False), (0.5, 45.0, None, False),
])
def test_float_output_bar(identical, sqnr, noise, ok):
    d = TensorDiff("t", None, (10,), None, 1.0, None, identical, {}, sqnr_db=sqnr)
    assert acceptable(d, noise) is ok


class InPlaceInput(nn.Module):
    """The issue's model: it changes its input in place before the conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        x.mul_(2)
        x.relu_()
        return self.conv(x)


def test_in_place_ops_on_the_input_are_exported(tmp_path):
    """Exported without the in-place ops the file computed 3.9 dB SQNR against float while
    the simulation had 37.6 dB; now the file is the simulation, and the caller's tensors are
    left alone."""
    torch.manual_seed(0)
    example = torch.randn(2, 3, 8, 8)
    qmodel = _calibrated(InPlaceInput().eval(), (example,), "onnxruntime")
    before = example.clone()
    result = export_onnx(qmodel, example, tmp_path / "m.onnx")
    assert torch.equal(example, before)
    assert result.output_names == ("output",) and result.check is not None
    x = torch.randn(16, 3, 8, 8)
    report = verify(qmodel, result.path, x.clone())
    assert report.ok(max_steps=1, min_identical=0.99), str(report)
    with torch.no_grad():
        float_out = _float_model_output(qmodel, x.clone())
    import onnxruntime as ort

    out = ort.InferenceSession(result.path).run(None, {"x": x.numpy()})[0]
    sqnr = 10 * np.log10((float_out ** 2).sum() / ((out - float_out) ** 2).sum())
    assert sqnr > 25, sqnr


def _float_model_output(qmodel: nn.Module, x: torch.Tensor) -> np.ndarray:
    sim = copy.deepcopy(qmodel)
    fxquant.set_fake_quantize(sim, FakeQuantState.FLOAT)
    return sim(x).numpy()


def test_self_check_refuses_a_wrong_file(tmp_path, monkeypatch):
    """A bug that writes wrong weights is caught before the file is renamed into place."""
    from fxquant.export import onnx_quantizers

    qmodel = prepared("resnet", "onnxruntime")
    original = onnx_quantizers.Materializer._int_constant

    def wrong(self, base, value, qp, before, weight):
        if base == "layer2.conv1.weight":
            value = value * 1.5
        return original(self, base, value, qp, before, weight)

    monkeypatch.setattr(onnx_quantizers.Materializer, "_int_constant", wrong)
    target = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match=r"does not compute what the simulation computes: "
                                          r"'layer2\._generated_relu_0_dequantized' .*steps off"):
        export_onnx(qmodel, images(2, 0), target)
    assert not os.listdir(tmp_path)  # (check=False writes it anyway: test_onnx_export)
