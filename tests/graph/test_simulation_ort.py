"""The eval-mode runtime simulation against ONNX Runtime itself: the model *is* the deployed one.

``qmodel.eval()(x)`` (profile ``onnxruntime``) is compared with the exported file run in ORT, at
the output and (through :func:`fxquant.verify`, reference ``runtime``) at every quantized tensor;
the profile's fused-kernel table is checked against the kernels ORT's optimized graph really
has.  The torchvision inverted-residual CNNs pin the residual-add case: ORT's QLinearAdd rounds
after adding the output zero point.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fxquant
from fxquant import Simulation
from fxquant.export import export_onnx, verify
from fxquant.export.verify import KernelMismatchWarning

from ..export import models as M
from .test_simulation import _settle_bn

ort = pytest.importorskip("onnxruntime")


def _ort(path, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})[0]


def _steps(qmodel: nn.Module, rt: np.ndarray, sim: torch.Tensor) -> np.ndarray:
    """``(runtime - simulation)`` in steps of the model output's quantizer."""
    out = next(n for n in qmodel.graph.nodes if n.op == "output").args[0]
    scale = float(qmodel.get_submodule(str(out.target)).scale)
    return np.rint((rt.astype(np.float64) - sim.double().numpy()) / scale)


def _compare(qmodel, example, inputs, tmp_path, name: str):
    """(runtime-simulation steps, float-simulation steps, verify report) vs ORT."""
    path = export_onnx(qmodel, example, tmp_path / f"{name}.onnx").path
    rt = _ort(path, inputs)
    qmodel.eval()
    with torch.no_grad():
        runtime = qmodel(*inputs)
        with fxquant.simulation(qmodel, Simulation.FLOAT):
            flt = qmodel(*inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelMismatchWarning)  # the table matches ORT's fusion
        report = verify(qmodel, path, inputs, "onnxruntime")
    return _steps(qmodel, rt, runtime), _steps(qmodel, rt, flt), report


def _calibrated(model, data, backend="onnxruntime", batches=3):
    qmodel = fxquant.prepare(model.eval(), data(2, 0), fxquant.default_calibration_qconfig_setter,
                             backend=backend)
    fxquant.calibrate(qmodel, [data(16, i) for i in range(1, batches + 1)], progress=False)
    return qmodel


def _images(n: int, seed: int, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 50, (n, 12), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["resnet", "depthwise", "opzoo"])
def test_cnns_equal_ort_code_for_code(name, tmp_path):
    torch.manual_seed(0)
    model = {"resnet": lambda: _settle_bn(M.ResNetSmall(), (16, 3, 16, 16)),
             "depthwise": lambda: _settle_bn(M.DepthwiseNet(), (16, 3, 16, 16)),
             "opzoo": M.OpZoo}[name]()
    data = (lambda n, s: _images(n, s, 8)) if name == "opzoo" else _images
    qmodel = _calibrated(model, data)
    steps, float_steps, report = _compare(qmodel, data(2, 0), (data(64, 99),), tmp_path, name)
    assert (steps == 0).all(), report
    assert report.reference == "runtime" and report.kernel_mismatch == {}
    assert report.runtime_version.startswith("onnxruntime 1.")
    assert f"ran in:      {report.runtime_version}" in str(report)
    assert all(t.identical == 1.0 for t in report.tensors), str(report)
    assert report.outputs[0].float32_identical is not None
    if name == "resnet":
        assert report.emulated == {"QGemm": 1, "QLinearAdd": 3, "QLinearConv": 8,
                                   "QLinearGlobalAveragePool": 1}
        assert (float_steps != 0).any()  # the float simulation is not the deployed model


def test_transformer_within_float_kernel_noise(tmp_path):
    """ORT runs LayerNorm / GELU / softmax with its own float kernels: the runtime simulation
    equals it except where those last bits cross a rounding tie."""
    torch.manual_seed(0)
    qmodel = _calibrated(M.TinyTransformer(), _tokens)
    steps, _, report = _compare(qmodel, _tokens(2, 0), (_tokens(256, 99),), tmp_path, "tr")
    assert (steps == 0).mean() >= 0.99 and np.abs(steps).max() <= 1, report
    assert report.emulated["QLinearMatMul"] == 4 and report.emulated["MatMulIntegerToFloat"] == 8
    assert report.kernel_mismatch == {}


class _FunctionalConvs(nn.Module):
    """Convs called as functions on parameters (what ``from_exported_program`` graphs hold)."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.b1 = nn.Parameter(torch.randn(8) * 0.1)
        self.w2 = nn.Parameter(torch.randn(8, 4, 3, 3) * 0.3)

    def forward(self, x):
        y = torch.relu(torch.nn.functional.conv2d(x, self.w1, self.b1, 2, 1))
        return torch.nn.functional.conv2d(y, self.w2, None, padding=1, groups=2)


def test_functional_convs_are_qlinearconv(tmp_path):
    torch.manual_seed(0)
    qmodel = _calibrated(_FunctionalConvs(), _images)
    assert list(fxquant.runtime_plan(qmodel).kernels.values()) == ["QLinearConv"] * 2
    steps, _, report = _compare(qmodel, _images(2, 0), (_images(64, 99),), tmp_path, "fconv")
    assert (steps == 0).all() and report.kernel_mismatch == {}, str(report)
    assert all(t.identical == 1.0 for t in report.tensors), str(report)


class _TopDown(nn.Module):
    """An FPN's top-down step: a coarse map upsampled (nearest) and added to a lateral conv."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.coarse = nn.Conv2d(8, 8, 1)
        self.lateral = nn.Conv2d(3, 8, 1)
        self.smooth = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        top = self.coarse(torch.relu(self.down(x)))
        up = torch.nn.functional.interpolate(top, size=x.shape[-2:], mode="nearest")
        return self.smooth(self.lateral(x) + up)


def test_nearest_upsampling_into_an_add_is_qlinearadd(tmp_path):
    """The upsampled map lies on its source's grid (nearest only moves values): the add is a
    QLinearAdd of the runtime simulation too, code for code as ORT."""
    torch.manual_seed(0)
    qmodel = _calibrated(_TopDown(), _images)
    plan = fxquant.runtime_plan(qmodel)
    assert sorted(plan.kernels.values()) == ["QLinearAdd"] + ["QLinearConv"] * 4, plan
    steps, _, report = _compare(qmodel, _images(2, 0), (_images(64, 99),), tmp_path, "topdown")
    assert (steps == 0).all() and report.kernel_mismatch == {}, str(report)
    assert all(t.identical == 1.0 for t in report.tensors), str(report)


class _PreActivation(nn.Module):
    """DenseNet's layer: concatenated features -> BatchNorm -> ReLU -> conv (the BatchNorm
    follows no conv, so nothing folds it: ORT runs BatchNormalization in float)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.grow = nn.Conv2d(8, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(12)
        self.conv = nn.Conv2d(12, 6, 1)

    def forward(self, x):
        a = torch.relu(self.stem(x))
        cat = torch.cat([a, torch.relu(self.grow(a))], 1)
        return self.conv(torch.relu(self.norm(cat)))


def test_unfolded_batch_norm_is_orts_float_kernel(tmp_path):
    torch.manual_seed(0)
    model = _PreActivation()
    _settle_bn(model, (32, 3, 16, 16))
    qmodel = _calibrated(model, _images)
    assert "BatchNormalization" in fxquant.runtime_plan(qmodel).kernels.values()
    steps, _, report = _compare(qmodel, _images(2, 0), (_images(64, 99),), tmp_path, "preact")
    assert (steps == 0).all() and report.kernel_mismatch == {}, str(report)
    assert all(t.identical == 1.0 for t in report.tensors), str(report)


def _inverted_residual_net():
    from bench._tv_shim import ensure_torchvision_importable

    ensure_torchvision_importable()
    try:
        from torchvision.models.mobilenetv2 import InvertedResidual
    except Exception as err:  # pragma: no cover - depends on the environment
        pytest.skip(f"torchvision model definitions do not import: {err}")
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        InvertedResidual(16, 24, 2, 6), InvertedResidual(24, 24, 1, 6),
        InvertedResidual(24, 32, 2, 6), InvertedResidual(32, 32, 1, 6),
        InvertedResidual(32, 32, 1, 6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def test_mobilenet_v2_residual_blocks_equal_ort(tmp_path):
    """torchvision's InvertedResidual blocks (linear bottleneck, residual add of two
    asymmetric grids): the add ORT runs as QLinearAdd rounds ``v + zc`` -- the flip the float
    simulation and the former emulation both got wrong."""
    model = _settle_bn(_inverted_residual_net(), (16, 3, 32, 32))

    def data(n: int, seed: int) -> torch.Tensor:
        return _images(n, seed, 32)

    qmodel = _calibrated(model, data)
    plan = fxquant.runtime_plan(qmodel)
    assert sum(k == "QLinearAdd" for k in plan.kernels.values()) == 3 and not plan.skipped
    steps, float_steps, report = _compare(qmodel, data(2, 0), (data(64, 99),), tmp_path, "mb")
    assert (steps == 0).all() and all(t.identical == 1.0 for t in report.tensors), str(report)
    assert (float_steps != 0).mean() > 0.01


def _drop_stochastic_depth(model: nn.Module) -> nn.Module:
    """EfficientNet's stochastic depth is the identity in eval mode: drop it (no ONNX emitter)."""
    from torchvision.ops import StochasticDepth

    for m in list(model.modules()):
        for name, child in list(m.named_children()):
            if isinstance(child, StochasticDepth):
                setattr(m, name, nn.Identity())
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "mnasnet1_0", "resnet18", "efficientnet_b0"])
def test_torchvision_models_equal_ort(name, tmp_path):
    """Random weights, BatchNorm statistics from random images, 64 px inputs: every output code
    of ``qmodel.eval()(x)`` equals ORT's (EfficientNet: QLinearSigmoid / QLinearMul squeeze-
    excitation and float SiLU with MLAS's logistic)."""
    from bench._tv_shim import ensure_torchvision_importable

    ensure_torchvision_importable()
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = _drop_stochastic_depth(getattr(torchvision.models, name)(num_classes=10))
    model = _settle_bn(model, (16, 3, 64, 64))

    def data(n: int, seed: int) -> torch.Tensor:
        return _images(n, seed, 64)

    qmodel = _calibrated(model, data, batches=2)
    steps, _, report = _compare(qmodel, data(2, 0), (data(32, 99),), tmp_path, name)
    assert (steps == 0).all(), str(report)
    assert all(t.identical == 1.0 for t in report.tensors), str(report)
