"""AutoQuant on a small CNN trained briefly on scikit-learn's digits: stopping, steps, export."""

from __future__ import annotations

import functools
import json
import pathlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant.autoquant import AutoQuant, AutoQuantReport
from fxquant.fake_quant import FakeQuantize

from .algorithms.digits import train_on_digits


class SmallNet(nn.Module):
    """conv-bn-relu, conv-bn-relu (CLE pair), strided conv, mean pool, linear."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(width)
        self.c3 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        x = F.relu(self.c3(x))
        return self.fc(x.mean((2, 3)))


@functools.lru_cache(maxsize=1)
def setup() -> tuple[nn.Module, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """``(trained model, calibration batches, x_test, y_test)``, trained once per process."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SmallNet()
    return train_on_digits(model, epochs=4, calib_size=128, calib_count=4)


def accuracy(model: nn.Module) -> float:
    _, _, x_te, y_te = setup()
    with torch.no_grad():
        return 100.0 * float((model(x_te).argmax(1) == y_te).float().mean())


def make(tmp_path: pathlib.Path, **kwargs) -> AutoQuant:
    model, calib, _, _ = setup()
    return AutoQuant(model, calib[0], calib, accuracy, results_dir=tmp_path, progress=False,
                     **kwargs)


def test_loose_budget_stops_after_the_first_step(tmp_path):
    model, _, _, _ = setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    auto = make(tmp_path)
    qmodel, acc, path = auto.optimize(allowed_accuracy_drop=5.0)
    assert isinstance(auto.report, AutoQuantReport) and auto.report.met
    assert acc >= auto.report.float_accuracy - 5.0
    assert {s.name.split(":")[0] for s in auto.report.steps} == {"quant scheme"}
    assert sum(s.kept for s in auto.report.steps) == 1
    assert acc == max(s.accuracy for s in auto.report.steps)
    assert pathlib.Path(path).parent == tmp_path and pathlib.Path(path).exists()
    assert any(isinstance(m, FakeQuantize) for m in qmodel.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched
    assert "quant scheme: min-max" in str(auto.report)


def test_w4_unreachable_budget_runs_every_step_and_keeps_the_best(tmp_path):
    auto = make(tmp_path, weight_dtype=fxquant.qint4, adaround_iterations=40)
    qmodel, acc, path = auto.optimize(allowed_accuracy_drop=-50.0)  # target > 100 %: never met
    report = auto.report
    names = [s.name for s in report.steps]
    assert names[:3] == ["quant scheme: min-max", "quant scheme: mse", "quant scheme: percentile"]
    assert names[3:] == ["W32 check (weights float)", "BN fold", "CLE", "bias correction",
                         "AdaRound", "block reconstruction"]
    assert not report.met
    by_name = {s.name: s for s in report.steps}
    assert not by_name["W32 check (weights float)"].kept
    assert "2 conv+BN pair(s)" in by_name["BN fold"].detail
    for s in report.steps:
        assert s.seconds >= 0
        assert s.accuracy is not None or "skipped" in s.detail or s.name == "BN fold", s
    candidates = [
        s for s in report.steps if s.accuracy is not None and not s.name.startswith("W32")
    ]
    assert acc == max(s.accuracy for s in candidates)  # never worse than its best step
    assert acc == pytest.approx(accuracy(qmodel))  # the returned model is that model
    assert report.best_step == next(s.name for s in candidates if s.accuracy == acc)
    kept = [s for s in candidates if s.kept]
    assert kept[-1].name == report.best_step
    assert [s.accuracy for s in kept] == sorted(s.accuracy for s in kept)  # each kept improves
    text = str(report)
    assert "MISSED" in text and "AdaRound" in text

    # the encodings load into a freshly prepared model of the float model that won
    enc = json.loads(pathlib.Path(path).read_text())
    assert enc["param_encodings"] and enc["activation_encodings"]
    fresh = fxquant.prepare(auto.best_float_model, setup()[1][0], auto.qconfig(),
                            backend=auto.backend)
    fxquant.load_encodings(fresh, path)
    scales = {n: m.scale for n, m in qmodel.named_modules() if isinstance(m, FakeQuantize)}
    for n, m in fresh.named_modules():
        if isinstance(m, FakeQuantize) and n in scales:
            torch.testing.assert_close(m.scale, scales[n], rtol=1e-6, atol=0)


def test_deterministic_for_a_fixed_seed(tmp_path):
    kw = dict(weight_dtype=fxquant.qint4, adaround_iterations=20, num_calibration_batches=2)
    a = make(tmp_path / "a", **kw)
    b = make(tmp_path / "b", **kw)
    qa, acc_a, _ = a.optimize(allowed_accuracy_drop=-50.0)
    qb, acc_b, _ = b.optimize(allowed_accuracy_drop=-50.0)
    assert acc_a == acc_b
    assert [s.accuracy for s in a.report.steps] == [s.accuracy for s in b.report.steps]
    sa, sb = qa.state_dict(), qb.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_empty_data_is_an_error():
    model, calib, _, _ = setup()
    with pytest.raises(ValueError, match="no batch"):
        AutoQuant(model, calib[0], [], accuracy)
