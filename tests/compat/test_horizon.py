"""fxquant.compat.horizon: Horizon's calibration -> QAT tutorial with only the imports changed,
checked against fxquant's native API on the same model."""

from __future__ import annotations

import math

import torch
from torch import nn

import fxquant
from fxquant.compat.horizon.dtype import qint16
from fxquant.compat.horizon.march import March, set_march
from fxquant.compat.horizon.nn import quantized as hnnq
from fxquant.compat.horizon.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    get_qconfig,
    prepare,
    set_fake_quantize,
)
from fxquant.compat.horizon.quantization.observer_v2 import MSEObserver
from fxquant.compat.horizon.quantization.qconfig_template import (
    ModuleNameQconfigSetter,
    calibration_8bit_weight_16bit_act_qconfig_setter,
    default_calibration_qconfig_setter,
    default_qat_qconfig_setter,
    sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter,
)
from fxquant.compat.horizon.utils.quant_profiler import QuantAnalysis


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub(scale=1.0 / 128)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.add = hnnq.FloatFunctional()
        self.head = nn.Linear(8, 4)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.relu(self.bn(self.conv(self.quant(x))))
        x = self.add.add(self.conv2(x), x)
        return self.dequant(self.head(x.mean((2, 3))))


def _data(n=4):
    g = torch.Generator().manual_seed(3)
    return [torch.rand(4, 3, 8, 8, generator=g) * 2 - 1 for _ in range(n)]


def _model():
    torch.manual_seed(0)
    return _Net().eval()


def test_calibration_then_qat_hand_over(tmp_path):
    set_march(March.NASH_E)
    float_model, data = _model(), _data()
    example_input = data[0]
    # calibration (Horizon's tutorial)
    calib_model = prepare(float_model, example_input,
                          qconfig_setter=(default_calibration_qconfig_setter,))
    calib_model.eval()
    set_fake_quantize(calib_model, FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for x in data:
            calib_model(x)
    set_fake_quantize(calib_model, FakeQuantState.VALIDATION)
    assert float(calib_model.quant.output_fake_quant.qparams().scale) == 1.0 / 128
    torch.save(calib_model.state_dict(), tmp_path / "calib-checkpoint.ckpt")
    # QAT: prepare with the QAT template, strict load of the calibration checkpoint
    qat_model = prepare(float_model, example_input, qconfig_setter=default_qat_qconfig_setter)
    qat_model.load_state_dict(torch.load(tmp_path / "calib-checkpoint.ckpt", weights_only=True))
    set_fake_quantize(qat_model, FakeQuantState.VALIDATION)
    qat_model.eval()
    with torch.no_grad():
        assert torch.equal(qat_model(data[1]), calib_model(data[1]))
    qat_model.train()
    set_fake_quantize(qat_model, FakeQuantState.QAT)
    opt = torch.optim.SGD(qat_model.parameters(), lr=0.01)
    loss = qat_model(data[2]).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    # native fxquant, same model and setters: the same calibrated outputs bit for bit
    stub = fxquant.ModuleNameQconfigSetter({"quant": fxquant.QConfig(output=fxquant.FakeQuantize
        .with_args(observer=fxquant.FixedScaleObserver.with_args(scale=1 / 128, dtype=fxquant
                                                                 .qint8, zero_point=0),
                   dtype=fxquant.qint8))})
    native = fxquant.prepare(float_model, example_input,
                             (stub, fxquant.default_calibration_qconfig_setter))
    fxquant.calibrate(native, data, progress=False)
    with torch.no_grad():
        assert torch.equal(native(data[1]), calib_model(data[1]))


def test_int16_overrides_sensitivity_table_and_sensitive_op_setter(tmp_path):
    set_march(March.BAYES)
    float_model, data = _model(), _data()
    int16_head = ModuleNameQconfigSetter({"head": get_qconfig(observer=MSEObserver,
                                                              out_dtype=qint16)})
    calib = prepare(float_model, data[0],
                    qconfig_setter=(int16_head, default_calibration_qconfig_setter))
    fxquant.calibrate(calib, data, progress=False)
    assert calib.head.output_fake_quant.dtype == qint16
    analysis = QuantAnalysis(float_model, calib, "fake_quant", out_dir=tmp_path)
    analysis.auto_find_bad_case(data, num_steps=2)
    rows = analysis.sensitivity()
    assert rows and all(len(r) == 6 and r[1] in ("activation", "weight") for r in rows)
    assert [r[3] for r in rows] == sorted((r[3] for r in rows), reverse=True)
    table = torch.load(tmp_path / "output_0_L1_sensitive_ops.pt", weights_only=True)
    assert table == rows
    setter = (sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter(table, topk=1),
              default_calibration_qconfig_setter)
    mixed = prepare(float_model, data[0], qconfig_setter=setter)
    top = table[0][0]
    assert any(m.dtype == qint16 for n, m in mixed.named_modules()
               if isinstance(m, fxquant.FakeQuantize) and n.startswith(top + "."))
    all16 = prepare(float_model, data[0],
                    qconfig_setter=calibration_8bit_weight_16bit_act_qconfig_setter)
    acts = [m for m in all16.modules() if isinstance(m, fxquant.FakeQuantize) and not m.is_weight]
    assert acts and all(m.dtype == qint16 for m in acts if m.name != "quant")  # fixed stub


def test_bernoulli_march_uses_power_of_two_scales():
    set_march(March.BERNOULLI2)
    try:
        calib = prepare(_model(), _data()[0], qconfig_setter=default_calibration_qconfig_setter)
        fxquant.calibrate(calib, _data(), progress=False)
    finally:
        set_march(March.BAYES)
    scales = [float(s) for m in calib.modules() if isinstance(m, fxquant.FakeQuantize)
              for s in m.qparams().scale.reshape(-1)]
    assert scales and all(math.log2(s) == round(math.log2(s)) for s in scales)
