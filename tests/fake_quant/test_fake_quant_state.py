"""FakeQuantState semantics, switching states on (sub)modules, and the lazy / fixed options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fxquant.fake_quant import (
    FakeQuantize,
    FakeQuantState,
    QuantizerError,
    fake_quantize_state,
    set_fake_quantize,
)
from fxquant.numerics import choose_qparams, fake_quantize, qint8

QAT, CALIBRATION, VALIDATION, FLOAT = (
    FakeQuantState.QAT,
    FakeQuantState.CALIBRATION,
    FakeQuantState.VALIDATION,
    FakeQuantState.FLOAT,
)


def expected_fq(x: torch.Tensor, lo: float, hi: float, symmetric: bool = True) -> torch.Tensor:
    s, z = choose_qparams(torch.tensor(lo), torch.tensor(hi), qint8, symmetric)
    return fake_quantize(x, s, z, qint8)


def observed(fq: FakeQuantize) -> tuple[float, float]:
    return float(fq.observer.min_val), float(fq.observer.max_val)


# -- each state -----------------------------------------------------------------------------------
def test_qat_observes_and_fake_quantizes():
    fq = FakeQuantize()
    assert fq.state is QAT and not bool(fq.calibrated)
    x1 = torch.randn(64)
    y1 = fq(x1)
    assert observed(fq) == (x1.min().item(), x1.max().item()) and bool(fq.calibrated)
    assert torch.equal(y1, expected_fq(x1, x1.min().item(), x1.max().item()))
    assert not torch.equal(y1, x1)
    x2 = torch.randn(64) * 5  # wider: running min/max and the scale follow
    y2 = fq(x2)
    lo, hi = min(x1.min(), x2.min()).item(), max(x1.max(), x2.max()).item()
    assert observed(fq) == (lo, hi)
    assert torch.equal(y2, expected_fq(x2, lo, hi))
    assert torch.equal(fq.scale, choose_qparams(torch.tensor(lo), torch.tensor(hi), qint8, True)[0])


def test_calibration_observes_and_returns_input_unchanged():
    fq = FakeQuantize(symmetric=False)
    fq.set_state(CALIBRATION)
    xs = [torch.randn(32) * (i + 1) for i in range(3)]
    for x in xs:
        assert fq(x) is x
    lo, hi = min(x.min() for x in xs).item(), max(x.max() for x in xs).item()
    assert observed(fq) == (lo, hi)
    assert not bool(fq.calibrated)  # the scale is computed when calibration ends
    fq.set_state(VALIDATION)
    assert bool(fq.calibrated)
    s, z = choose_qparams(torch.tensor(lo), torch.tensor(hi), qint8, symmetric=False)
    assert torch.equal(fq.scale, s) and torch.equal(fq.zero_point, z)


def test_validation_uses_frozen_scale_and_observes_nothing():
    fq = FakeQuantize()
    fq.set_state(CALIBRATION)
    fq(torch.linspace(-1, 1, 11))
    fq.set_state(VALIDATION)
    scale, stats = fq.scale.clone(), observed(fq)
    x = torch.linspace(-10, 10, 101)
    y = fq(x)
    assert observed(fq) == stats and torch.equal(fq.scale, scale)
    assert torch.equal(y, fake_quantize(x, scale, fq.zero_point, qint8))
    assert torch.equal(y.max(), 127 * scale) and torch.equal(y.min(), -128 * scale)  # clipped


def test_float_is_identity_without_observation():
    fq = FakeQuantize()
    fq.set_state(FLOAT)
    x = torch.randn(10)
    assert fq(x) is x  # no error although never calibrated
    assert not fq.observer.has_stats()
    fq.set_state(QAT)
    fq(x)
    fq.set_state(FLOAT)
    big = x * 100
    assert fq(big) is big and observed(fq) == (x.min().item(), x.max().item())


@pytest.mark.parametrize("state", list(FakeQuantState), ids=lambda s: s.name)
def test_integer_tensors_pass_through(state):
    fq = FakeQuantize()
    fq.set_state(state)
    x = torch.arange(10)
    assert fq(x) is x


def test_state_lives_in_a_buffer():
    fq = FakeQuantize()
    for state in FakeQuantState:
        fq.set_state(state)
        assert fq.state is state and int(fq.state_dict()["state_code"]) == state.value


# -- errors ---------------------------------------------------------------------------------------
def test_uncalibrated_activation_in_validation_raises_naming_it():
    fq = FakeQuantize()
    fq.name = "layer1.act"
    fq.set_state(VALIDATION)
    with pytest.raises(QuantizerError, match=r"layer1\.act.*calibrate") as info:
        fq(torch.randn(4))
    assert isinstance(info.value, RuntimeError)
    assert not fq.observer.has_stats()  # an activation quantizer does not calibrate itself


def test_observer_errors_name_the_quantizer():
    fq = FakeQuantize()
    fq.name = "layer1.conv"
    assert fq.observer.name == "layer1.conv"
    with pytest.raises(ValueError, match=r"layer1\.conv"):
        fq(torch.tensor([1.0, float("nan")]))


# -- weights and fixed_in_qat ---------------------------------------------------------------------
def test_weight_quantizer_calibrates_lazily():
    fq = FakeQuantize(is_weight=True, ch_axis=0)
    fq.set_state(VALIDATION)
    w = torch.randn(4, 3)
    y = fq(w)
    assert bool(fq.calibrated)
    lo, hi = w.amin(dim=1), w.amax(dim=1)
    s, z = choose_qparams(lo, hi, qint8, symmetric=True)
    assert torch.equal(fq.scale, s) and torch.equal(y, fake_quantize(w, s, z, qint8, axis=0))
    fq(w * 3)  # calibrated now: frozen like any VALIDATION quantizer
    assert torch.equal(fq.scale, s)


def test_fixed_in_qat_keeps_the_calibrated_scale():
    fq = FakeQuantize(fixed_in_qat=True)
    with fake_quantize_state(fq, CALIBRATION):
        fq(torch.linspace(-2, 2, 9))
    assert fq.state is QAT
    scale, stats = fq.scale.clone(), observed(fq)
    x = torch.randn(100) * 10
    y = fq(x)
    assert torch.equal(fq.scale, scale) and observed(fq) == stats
    assert torch.equal(y, fake_quantize(x, scale, fq.zero_point, qint8))


def test_fixed_in_qat_without_calibration_observes_the_first_batch():
    fq = FakeQuantize(fixed_in_qat=True)
    x = torch.randn(50)
    fq(x)
    assert bool(fq.calibrated) and observed(fq) == (x.min().item(), x.max().item())
    scale = fq.scale.clone()
    fq(x * 4)
    assert torch.equal(fq.scale, scale)


# -- switching on modules -------------------------------------------------------------------------
def make_model() -> nn.Sequential:
    backbone = nn.Sequential(nn.Linear(4, 4), FakeQuantize(), nn.Sequential(FakeQuantize()))
    head = nn.Sequential(nn.Linear(4, 2), FakeQuantize())
    return nn.Sequential(backbone, head)


def quantizer_states(model: nn.Module) -> list[FakeQuantState]:
    return [m.state for m in model.modules() if isinstance(m, FakeQuantize)]


def test_set_fake_quantize_on_a_submodule_only_affects_it():
    model = make_model()
    assert set_fake_quantize(model[0], VALIDATION) is model[0]
    assert quantizer_states(model) == [VALIDATION, VALIDATION, QAT]
    set_fake_quantize(model[1], FLOAT)
    assert quantizer_states(model) == [VALIDATION, VALIDATION, FLOAT]
    set_fake_quantize(model, CALIBRATION)
    assert quantizer_states(model) == [CALIBRATION] * 3
    set_fake_quantize(model[1][1], QAT)  # a quantizer itself
    assert quantizer_states(model) == [CALIBRATION, CALIBRATION, QAT]


def test_set_fake_quantize_rejects_non_states():
    with pytest.raises(TypeError, match="FakeQuantState"):
        set_fake_quantize(make_model(), "qat")  # type: ignore[arg-type]


def test_context_manager_restores_each_previous_state():
    model = make_model()
    set_fake_quantize(model[0][2], FLOAT)
    set_fake_quantize(model[1], VALIDATION)
    before = quantizer_states(model)
    with fake_quantize_state(model, CALIBRATION) as m:
        assert m is model and quantizer_states(model) == [CALIBRATION] * 3
    assert quantizer_states(model) == before
    with pytest.raises(KeyError):
        with fake_quantize_state(model[0], FLOAT):
            assert quantizer_states(model) == [FLOAT, FLOAT, VALIDATION]
            raise KeyError("boom")
    assert quantizer_states(model) == before


def test_calibration_context_computes_scales_on_exit():
    model = make_model()
    x = torch.randn(8, 4)
    with fake_quantize_state(model, CALIBRATION):
        y = model(x)
    assert all(bool(m.calibrated) for m in model.modules() if isinstance(m, FakeQuantize))
    with fake_quantize_state(model, VALIDATION):
        yq = model(x)
    assert yq.shape == y.shape and not torch.equal(yq, y)
    with fake_quantize_state(model, FLOAT):
        assert torch.equal(model(x), y)  # float path untouched by calibration


# -- Python mirrors of the state buffers --------------------------------------------------------
def test_set_state_code_switches_without_computing_the_scale():
    fq = FakeQuantize()
    fq.set_state(CALIBRATION)
    fq(torch.linspace(-1, 1, 11))
    fq.set_state_code(FLOAT)
    assert fq.state is FLOAT and int(fq.state_code) == FLOAT.value
    assert not bool(fq.calibrated)  # the pending observation was not turned into a scale
    fq.set_state(VALIDATION)
    assert bool(fq.calibrated)


def test_state_and_calibration_follow_a_loaded_state_dict():
    src = FakeQuantize()
    src.set_state(CALIBRATION)
    src(torch.linspace(-2, 2, 9))
    src.set_state(VALIDATION)
    dst = FakeQuantize()
    assert dst.state is QAT
    dst.load_state_dict(src.state_dict())
    assert dst.state is VALIDATION and bool(dst.calibrated)
    x = torch.linspace(-3, 3, 13)
    assert torch.equal(dst(x), src(x))  # no QAT observation, the loaded scale
    fresh = FakeQuantize()
    fresh.set_state(VALIDATION)
    dst.load_state_dict(fresh.state_dict())  # back to uncalibrated: forward must notice
    with pytest.raises(QuantizerError, match="no scale yet"):
        dst(x)


def test_a_calibrated_buffer_set_from_outside_is_seen():
    """Tools that load scales (encodings) write the buffers and ``calibrated`` directly."""
    fq = FakeQuantize()
    fq.set_state(VALIDATION)
    fq._store_qparams(torch.tensor(0.5), torch.tensor(0, dtype=torch.int32))
    fq.calibrated.fill_(True)
    assert torch.equal(fq(torch.tensor([1.3])), torch.tensor([1.5]))
