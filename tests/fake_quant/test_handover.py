"""Calibration -> QAT hand-over (Horizon's flow): save the calibrated model's state_dict, prepare
the QAT model with a QAT template (other observers), load it with a strict ``load_state_dict``."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import fxquant
from fxquant import FakeQuantize, FakeQuantState
from fxquant.observers import (
    FixedScaleObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


def _saved(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize(
    "qat_setter",
    [fxquant.default_qat_qconfig_setter, fxquant.default_qat_fixed_act_qconfig_setter],
    ids=["qat", "qat_fixed_act"],
)
def test_calibration_checkpoint_loads_strictly_into_the_qat_model(qat_setter):
    torch.manual_seed(0)
    model = _Net().eval()
    data = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    calib = fxquant.prepare(model, data[0], fxquant.default_calibration_qconfig_setter)
    fxquant.calibrate(calib, data, progress=False)
    sd = _saved(calib.state_dict())
    assert any(k.endswith("observer.hist") for k in sd)  # histogram statistics are in there

    qat = fxquant.prepare(model, data[0], qat_setter)
    result = qat.load_state_dict(sd)  # strict
    assert not result.missing_keys and not result.unexpected_keys
    # the loaded model is the calibrated model: same scales, same outputs bit for bit
    fxquant.set_fake_quantize(qat, FakeQuantState.VALIDATION)
    qat.eval()
    with torch.no_grad():
        assert torch.equal(qat(data[1]), calib(data[1]))
    acts = {n: m for n, m in qat.named_modules()
            if isinstance(m, FakeQuantize) and not m.is_weight}
    before = {n: m.scale.clone() for n, m in acts.items()}
    fixed = qat_setter is fxquant.default_qat_fixed_act_qconfig_setter
    assert all(m.fixed_in_qat == fixed for m in acts.values())
    # a QAT step: fixed_act keeps the calibrated scales, the moving average moves them
    fxquant.set_fake_quantize(qat, FakeQuantState.QAT)
    qat.train()(data[2] * 3).sum().backward()
    moved = [not torch.equal(before[n], m.scale) for n, m in acts.items()]
    assert not any(moved) if fixed else any(moved)


def test_shared_statistics_load_and_foreign_ones_are_ignored():
    x = torch.randn(1000)
    hist = MSEObserver()
    hist(x)
    mm = MovingAverageMinMaxObserver()
    result = mm.load_state_dict(hist.state_dict())  # strict; hist / range_exp ignored
    assert not result.unexpected_keys
    assert torch.equal(mm.min_val, x.min()) and torch.equal(mm.max_val, x.max())


def test_missing_statistics_start_empty_instead_of_mixing_two_observers():
    mm = MinMaxObserver()
    mm(torch.randn(100))
    hist = HistogramObserver()
    hist(torch.randn(100) * 5)
    hist.load_state_dict(mm.state_dict())  # strict: a min-max state has no histogram
    assert not hist.has_stats()
    fixed = FixedScaleObserver(scale=0.5)
    fixed.load_state_dict(mm.state_dict())
    assert float(fixed.scale) == 0.5


def test_a_checkpoint_without_statistics_is_still_checked_strictly():
    obs = MinMaxObserver()
    with pytest.raises(RuntimeError, match="Missing key"):
        obs.load_state_dict({})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        MinMaxObserver().load_state_dict({"min_val": torch.tensor(0.0),
                                          "max_val": torch.tensor(1.0),
                                          "bogus.x": torch.tensor(1.0)})
