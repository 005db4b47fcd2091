"""``fixed_in_qat`` lives in the persistent ``frozen`` buffer: it survives state_dict round trips
and keeps calibration / QAT from moving a frozen scale."""

from __future__ import annotations

import io

import torch

from fxquant import FakeQuantize, FakeQuantState


def _calibrated(frozen: bool) -> FakeQuantize:
    fq = FakeQuantize(fixed_in_qat=frozen)
    fq.set_state(FakeQuantState.CALIBRATION)
    fq(torch.linspace(-1, 1, 11))
    fq.set_state(FakeQuantState.VALIDATION)
    return fq


def test_frozen_survives_a_state_dict_round_trip():
    fq = _calibrated(False)
    fq.fixed_in_qat = True
    buf = io.BytesIO()
    torch.save(fq.state_dict(), buf)
    buf.seek(0)
    fresh = FakeQuantize()
    assert not fresh.fixed_in_qat
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.fixed_in_qat and torch.equal(fresh.scale, fq.scale)


def test_frozen_scale_is_kept_by_calibration_and_qat():
    fq = _calibrated(True)
    scale = fq.scale.clone()
    fq.set_state(FakeQuantState.CALIBRATION)
    fq(torch.linspace(-5, 5, 11))
    fq.set_state(FakeQuantState.QAT)
    fq(torch.linspace(-7, 7, 11))
    assert torch.equal(fq.scale, scale)
    free = _calibrated(False)
    free.set_state(FakeQuantState.CALIBRATION)
    free(torch.linspace(-5, 5, 11))
    free.set_state(FakeQuantState.VALIDATION)
    assert float(free.scale) > float(scale)


def test_state_dicts_from_before_the_buffer_still_load():
    fq = _calibrated(False)
    old = {k: v for k, v in fq.state_dict().items() if k != "frozen"}
    fresh = FakeQuantize(fixed_in_qat=True)
    fresh.load_state_dict(old)  # strict: no missing-key error
    assert fresh.fixed_in_qat  # keeps its own setting
    assert torch.equal(fresh.scale, fq.scale)
