"""Trained models on scikit-learn digits: LiteRT's accuracy equals the simulation's."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from bench.models import TinyTransformer
from torch import nn

import fxquant
from fxquant.runtimes.litert_runtime import LiteRTSession

from ..algorithms.digits import train_on_digits

pytest.importorskip("ai_edge_litert")
pytest.importorskip("sklearn")


class _ResCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.c1 = nn.Conv2d(16, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(x + self.c2(F.relu(self.c1(x))))
        return self.fc(F.relu6(self.dw(x)).mean((2, 3)))


class _Rows(nn.Module):
    """A transformer over the 8 rows of a digit."""

    def __init__(self) -> None:
        super().__init__()
        self.t = TinyTransformer(seq_len=8, token_dim=8, dim=32, heads=4, depth=2, dropout=0.0)

    def forward(self, x):
        return self.t(x.squeeze(1))


@pytest.mark.parametrize("make", [_ResCNN, _Rows], ids=["residual_cnn", "transformer"])
def test_litert_accuracy_equals_simulation(make, tmp_path):
    torch.manual_seed(0)
    model, calib, x_te, y_te = train_on_digits(make(), epochs=4, calib_size=64, calib_count=4)
    q = fxquant.prepare(model, calib[0], fxquant.default_calibration_qconfig_setter,
                        backend="tflite")
    fxquant.calibrate(q, calib, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fxquant.export_tflite(q, x_te, tmp_path / "m.tflite")
    with torch.no_grad():
        float_acc = float((model(x_te).argmax(1) == y_te).float().mean()) * 100
        sim_acc = float((q(x_te).argmax(1) == y_te).float().mean()) * 100
    rt = LiteRTSession(tmp_path / "m.tflite", kernels="xnnpack").run_tensors(x_te)[0]
    rt_acc = float((rt.argmax(1) == y_te).float().mean()) * 100
    print(f"{make.__name__}: float {float_acc:.2f}  simulation {sim_acc:.2f}  LiteRT {rt_acc:.2f}")
    assert float_acc > 85
    assert abs(rt_acc - sim_acc) <= 0.1, (float_acc, sim_acc, rt_acc)

