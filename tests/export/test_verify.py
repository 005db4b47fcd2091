"""verify: runtime vs simulation in quantization steps, and what the runtime runs in integer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import fxquant
from fxquant import FakeQuantState
from fxquant.export import TensorDiff, VerifyReport, export_onnx, verify

from . import models as M


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory):
    torch.manual_seed(0)
    example = torch.randn(2, 3, 8, 8)
    qmodel = fxquant.prepare(M.OneConv(), example, fxquant.default_calibration_qconfig_setter,
                             backend="onnxruntime")
    fxquant.calibrate(qmodel, [torch.randn(16, 3, 8, 8) for _ in range(3)], progress=False)
    path = tmp_path_factory.mktemp("verify") / "conv.onnx"
    return qmodel, export_onnx(qmodel, example, path)


def test_report_fields_and_table(conv_model):
    qmodel, result = conv_model
    x = torch.randn(8, 3, 8, 8)
    report = verify(qmodel, result.path, x)
    assert isinstance(report, VerifyReport) and report.runtime == "onnxruntime"
    out = report.outputs[0]
    assert out.name == result.output_names[0] == "output"  # the model's stable output name
    assert out.quantizer == "conv.output_fake_quant" and out.shape == (8, 8, 8, 8)
    assert sum(out.histogram.values()) == x.numel() // 3 * 8
    assert out.identical == pytest.approx(out.histogram.get(0, 0) / sum(out.histogram.values()))
    assert out.float32_identical is not None
    assert {t.name for t in report.tensors} == {"x_dequantized", "conv_dequantized"}
    assert report.integer_ops == {"QLinearConv": 1} and not report.float_ops
    text = str(report)
    import onnxruntime

    assert report.runtime_version == f"onnxruntime {onnxruntime.__version__}"
    for piece in ("fxquant verify (onnxruntime)", f"onnxruntime {onnxruntime.__version__}",
                  "[output] output",
                  "[tensor] x_dequantized", "integer ops: QLinearConv x1", "f32 sim"):
        assert piece in text, text
    lean = verify(qmodel, result.path, x, tensors=False, reference="float32")
    assert lean.tensors == () and lean.outputs[0].float32_identical is None


def test_openvino_reports_integer_layers(conv_model):
    qmodel, result = conv_model
    report = verify(qmodel, result.path, torch.randn(4, 3, 8, 8), "openvino")
    import openvino

    assert report.runtime == "openvino"
    assert report.runtime_version == f"openvino {openvino.__version__}"
    assert report.integer_ops.get("Convolution") == 1, report.integer_ops
    assert report.outputs[0].max_step_diff <= 1


def test_detects_a_wrong_scale(conv_model, tmp_path):
    qmodel, result = conv_model
    model = onnx.load(result.path)
    for t in model.graph.initializer:
        if t.name == "conv.weight_scale":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.5, t.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, bad)
    report = verify(qmodel, bad, torch.randn(8, 3, 8, 8))
    assert not report.ok()
    assert report.outputs[0].max_step_diff > 2
    by_name = {t.name: t for t in report.tensors}
    assert by_name["x_dequantized"].max_step_diff == 0  # the input side is still right


def test_float_export_runs_float_kernels(conv_model, tmp_path):
    qmodel, _ = conv_model
    result = export_onnx(qmodel, torch.randn(2, 3, 8, 8), tmp_path / "f.onnx", quantize=False)
    report = verify(qmodel, result.path, torch.randn(4, 3, 8, 8), tensors=False)
    assert not report.integer_ops
    assert set(report.float_ops) & {"Conv", "FusedConv", "NchwcConv"}


def test_qat_state_is_held_frozen(tmp_path):
    torch.manual_seed(0)
    example = torch.randn(2, 16)
    qmodel = fxquant.prepare(M.OneLinear(), example, fxquant.default_qat_qconfig_setter)
    fxquant.calibrate(qmodel, [torch.randn(16, 16)], progress=False)
    fxquant.set_fake_quantize(qmodel, FakeQuantState.QAT)
    result = export_onnx(qmodel, example, tmp_path / "q.onnx")
    before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    report = verify(qmodel, result.path, torch.randn(32, 16) * 5)  # would move QAT ranges
    after = qmodel.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(fq.state is FakeQuantState.QAT for fq in qmodel.modules()
               if isinstance(fq, fxquant.FakeQuantize))
    assert report.outputs[0].max_step_diff <= 1


def test_arguments_are_checked(conv_model):
    qmodel, result = conv_model
    with pytest.raises(ValueError, match="runtime must be one of"):
        verify(qmodel, result.path, torch.randn(1, 3, 8, 8), "tensorrt")
    with pytest.raises(ValueError, match="integer_kernels=False"):
        verify(qmodel, result.path, torch.randn(1, 3, 8, 8), "openvino", integer_kernels=False)


@pytest.mark.parametrize(
    ("identical", "max_steps", "ok"),
    [
        (1.0, 0, True),
        (0.995, 1, True),
        (0.99, 2, True),
        (0.98, 1, False),  # 2% mismatch
        (1.0, 3, False),  # a value 3 steps off
    ],
)
def test_tensor_diff_ok(identical, max_steps, ok):
    d = TensorDiff("t", "q", (10,), 0.1, 0.1 * max_steps, max_steps, identical, {})
    assert d.ok() is ok


def test_float_output_compares_within_float_noise():
    assert TensorDiff("t", None, (2,), None, 1e-7, None, 1.0).ok()
    assert not TensorDiff("t", None, (2,), None, np.float32(1e-3), None, 0.5).ok()
