"""verify(reference="integer"): the simulation with ONNX Runtime's integer arithmetic.

On a residual CNN whose BatchNorms carry real statistics (non-zero folded biases, so int32 bias
rounding matters) ORT's output and every quantized tensor equal the integer simulation code for
code, while the float64 ("exact") evaluation of the same simulation differs on some tensors.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxquant
from fxquant.export import export_onnx, verify
from fxquant.export.integer_sim import integer_simulation

from . import models as M


def _settled_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = M.ResNetSmall()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    model.train()
    with torch.no_grad():
        for i in range(4):
            model(torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(i)))
    return model.eval()


@pytest.fixture(scope="module")
def resnet_export(tmp_path_factory):
    gen = torch.Generator().manual_seed(10)
    example = torch.randn(2, 3, 16, 16, generator=gen)
    qmodel = fxquant.prepare(_settled_resnet(), example,
                             fxquant.default_calibration_qconfig_setter, backend="onnxruntime")
    fxquant.calibrate(qmodel, [torch.randn(32, 3, 16, 16, generator=gen) for _ in range(3)],
                      progress=False)
    path = tmp_path_factory.mktemp("intsim") / "resnet.onnx"
    export_onnx(qmodel, example, path)
    return qmodel, path, torch.randn(64, 3, 16, 16, generator=gen)


def test_ort_equals_the_integer_simulation_code_for_code(resnet_export):
    qmodel, path, x = resnet_export
    report = verify(qmodel, path, x, "onnxruntime")  # auto -> integer
    print(report)
    assert report.reference == "integer"
    assert report.emulated == {"QGemm": 1, "QLinearAdd": 3, "QLinearConv": 8,
                               "QLinearGlobalAveragePool": 1}
    assert report.not_emulated == {}
    assert report.outputs[0].identical == 1.0 and report.outputs[0].max_step_diff == 0
    assert len(report.tensors) == 14
    assert all(t.identical == 1.0 for t in report.tensors), str(report)
    assert "reference: integer" in str(report)


def test_exact_arithmetic_is_not_what_ort_computes(resnet_export):
    qmodel, path, x = resnet_export
    report = verify(qmodel, path, x, "onnxruntime", reference="exact")
    assert report.emulated == {}
    assert min(t.identical for t in report.tensors) < 1.0, str(report)


def test_integer_simulation_leaves_the_model_alone(resnet_export):
    qmodel, _, x = resnet_export
    with torch.no_grad():
        before = qmodel(x)
    sim = integer_simulation(qmodel, {"fc": "QGemm", "layer1.conv2": "QLinearSoftmax"})
    assert sim.emulated == {"fc": "QGemm"}
    assert sim.skipped == {"layer1.conv2": "QLinearSoftmax is not emulated"}
    assert next(sim.model.parameters()).dtype == torch.float64
    with torch.no_grad():
        assert torch.equal(qmodel(x), before)
    assert not any(m._forward_hooks for m in qmodel.modules())


def test_eager_captured_model_falls_back_with_a_reason():
    x = torch.randn(2, 3, 8, 8)
    qmodel = fxquant.prepare(M.Branchy(), x, fxquant.default_calibration_qconfig_setter)
    fxquant.calibrate(qmodel, [x], progress=False)
    sim = integer_simulation(qmodel, {"conv": "QLinearConv"})
    assert sim.emulated == {} and "eager" in sim.skipped["conv"]
    with torch.no_grad():
        out = sim.model(x.double())
    assert out.dtype == torch.float64 and out.shape == (2, 4, 6, 6)


def test_integer_reference_needs_onnxruntime(resnet_export):
    qmodel, path, x = resnet_export
    with pytest.raises(ValueError, match="integer"):
        verify(qmodel, path, x, "openvino", reference="integer")
    with pytest.raises(ValueError, match="integer"):
        verify(qmodel, path, x, "onnxruntime", integer_kernels=False, reference="integer")
    with pytest.raises(ValueError, match="reference"):
        verify(qmodel, path, x, "onnxruntime", reference="bogus")


def test_a_non_finite_runtime_value_is_a_difference_not_a_warning():
    import warnings

    import numpy as np

    from fxquant import FakeQuantize
    from fxquant.runtimes import tensor_diff

    fq = FakeQuantize()
    fq.scale = torch.tensor(0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = tensor_diff("t", np.array([0.1, np.nan, np.inf], np.float32),
                        torch.tensor([0.1, 0.2, 0.3]), fq.qparams(), "q")
    assert d.identical == pytest.approx(1 / 3) and not d.ok()
    assert d.max_step_diff > 10**9 and d.histogram == {0: 1, 5: 2}
