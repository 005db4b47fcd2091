"""One capture for every exporter: torch.export with quantizers as fxquant::quantize_dequantize."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxquant
from fxquant.errors import ExportError
from fxquant.export.program import capture, quantize_dequantize
from fxquant.fake_quant import FakeQuantize
from fxquant.numerics import QDType, ScaleMath, fake_quantize, qint8, quint8

from ..graph.models import BranchInForwardF, BranchInSubmoduleF, HFStyleModel
from .models import ResNetSmall, TinyTransformer


def _prepared(model, x, backend="onnxruntime"):
    torch.manual_seed(0)
    q = fxquant.prepare(model.eval(), x, fxquant.default_calibration_qconfig_setter, backend)
    fxquant.calibrate(q, [x], progress=False)
    return q


@pytest.mark.parametrize(
    "dtype, axis, math",
    [(qint8, None, ScaleMath.DIVIDE), (quint8, 1, ScaleMath.RECIPROCAL), (QDType(16, True), 0,
     ScaleMath.DIVIDE), (qint8.narrow(), None, ScaleMath.DIVIDE), (QDType(4, False), None,
     ScaleMath.DIVIDE)],
)
def test_op_is_the_numerics_fake_quantize(dtype, axis, math):
    torch.manual_seed(1)
    x = torch.randn(3, 4, 5) * 3
    shape = () if axis is None else (x.shape[axis],)
    scale = torch.rand(shape) * 0.05 + 0.01
    zp = torch.randint(dtype.qmin, dtype.qmax + 1, shape, dtype=torch.int32)
    ref = fake_quantize(x, scale, zp, dtype, axis, math)
    got = quantize_dequantize(x, scale, zp, dtype.qmin, dtype.qmax, -1 if axis is None else axis,
                              "q", math is ScaleMath.RECIPROCAL)
    assert torch.equal(got, ref)


def _check(q, x):
    cp = capture(q, x)
    quantizers = {p for p, m in q.named_modules() if isinstance(m, FakeQuantize)}
    assert set(cp.quantizers.values()) <= quantizers and cp.quantizers
    args = [a.clone() for a in cp.inputs.args]  # a model may change its input in place
    with torch.no_grad(), fxquant.float_simulation():  # the program is the float simulation
        want = q.eval()(*[a.clone() for a in args])
        got = cp.program.module()(*[a.clone() for a in args])
    want = want if isinstance(want, torch.Tensor) else want[0]
    got = got if isinstance(got, torch.Tensor) else got[0]
    assert torch.equal(want, got)  # the captured program computes the simulation bit for bit
    return cp


def test_fx_model_captures_bit_exactly_with_dynamic_batch():
    x = torch.randn(2, 3, 16, 16)
    cp = _check(_prepared(ResNetSmall(), x), x)
    assert cp.dynamic_batch and cp.input_names == ("x",) and cp.output_names == ("output",)
    # every quantizer of the prepared model appears exactly where the simulation calls it
    assert len(cp.quantizers) == len(set(cp.quantizers.values()))
    y = torch.randn(5, 3, 16, 16)
    assert cp.program.module()(y).shape == (5, 10)


def test_transformer_captures():
    x = torch.randint(0, 50, (2, 12))
    _check(_prepared(TinyTransformer(), x), x)


class _RankBranch(nn.Module):
    """fx cannot trace ``if x.dim() == 4`` (a Proxy in a condition): captured eagerly."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.dim() == 3:
            x = x.unsqueeze(0)
        x.mul_(2)  # in place on the input: must be captured, not lost
        return self.fc(self.conv(x).relu().mean((2, 3)))


def test_eager_captured_model_captures():
    x = torch.randn(2, 3, 8, 8)
    q = _prepared(_RankBranch(), x)
    assert fxquant.graph.report.get_report(q).capture_mode == "eager"
    _check(q, x)


def test_uncalibrated_quantizer_is_named():
    x = torch.randn(2, 3, 16, 16)
    q = fxquant.prepare(ResNetSmall().eval(), x, fxquant.default_calibration_qconfig_setter)
    with pytest.raises(ExportError, match="no scale yet"):
        capture(q, x)


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


@pytest.mark.parametrize(
    "cls", [_DataDependent, BranchInForwardF, BranchInSubmoduleF, HFStyleModel]
)
def test_data_dependent_control_flow_is_a_clear_error(cls):
    x = {_DataDependent: torch.randn(2, 4), HFStyleModel: torch.randint(0, 10, (2, 5))}.get(
        cls, torch.randn(2, 3, 8, 8)
    )
    with pytest.raises(ExportError, match="data-dependent"):
        capture(_prepared(cls(), x), x)


def test_an_eager_capture_whose_forward_uses_module_attributes_exports(tmp_path):
    """``torch.export`` traces a module through a proxy class of its own: the eager capture's
    swapped-in forward finds the original class past it (it once took the proxy for it and every
    such model failed as if it had data-dependent control flow)."""
    from bench.control_flow import ShapeLogicNet  # Python-side shape logic: captured eagerly

    x = torch.randn(4, 3, 32, 32)
    q = _prepared(ShapeLogicNet().eval(), x)
    assert fxquant.graph.report.get_report(q).capture_mode == "eager"
    cp = _check(q, x)
    assert cp.specialized == ()
    result = fxquant.export_onnx(q, x, tmp_path / "m.onnx")
    report = fxquant.verify(q, result.path, torch.randn(16, 3, 32, 32), "onnxruntime")
    assert report.ok(), str(report)
