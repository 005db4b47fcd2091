"""FixedScaleObserver: the scale it was given, bit for bit, whatever it observes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fxquant.numerics import qint8, quint8
from fxquant.observers import FixedScaleObserver, ObserverError


@pytest.mark.parametrize("scale", [2.0**-7, 0.1, 1.0 / 3.0, 1e-30, 6.5e4])
def test_exact_scale_and_zero_point(scale):
    obs = FixedScaleObserver(scale)
    s, z = obs.calculate_qparams(qint8, symmetric=True)
    assert s.dtype == torch.float32 and z.dtype == torch.int32 and s.shape == () and z.shape == ()
    assert np.float32(s.item()).tobytes() == np.float32(scale).tobytes()
    assert int(z) == 0
    assert obs.has_stats()  # never needs data


def test_observing_does_not_move_the_scale():
    obs = FixedScaleObserver(1.0 / 256, zero_point=128, dtype=quint8)
    for _ in range(3):
        x = torch.randn(100) * 50
        assert obs(x) is x
    s, z = obs.calculate_qparams(quint8, symmetric=False, power_of_two=True, eps=1.0)
    assert s.item() == 1.0 / 256 and int(z) == 128  # power_of_two / eps do not apply


def test_returned_tensors_are_copies():
    obs = FixedScaleObserver(0.5)
    s, z = obs.calculate_qparams(qint8, symmetric=True)
    s.fill_(3.0)
    z.fill_(7)
    s2, z2 = obs.calculate_qparams(qint8, symmetric=True)
    assert s2.item() == 0.5 and int(z2) == 0


def test_compute_range_is_the_grid():
    obs = FixedScaleObserver(0.25, zero_point=3)
    lo, hi = obs.compute_range(qint8, symmetric=False)
    assert lo.item() == (-128 - 3) * 0.25 and hi.item() == (127 - 3) * 0.25


def test_dtype_mismatch_raises_naming_the_quantizer():
    obs = FixedScaleObserver(1.0 / 128, dtype=qint8)
    obs.name = "layer1.conv"
    assert obs.calculate_qparams(qint8, symmetric=True)[0].item() == 1.0 / 128
    with pytest.raises(ObserverError, match=r"layer1\.conv.*qint8.*quint8"):
        obs.calculate_qparams(quint8, symmetric=True)
    with pytest.raises(ObserverError, match="qint8_narrow"):
        obs.calculate_qparams(qint8.narrow(), symmetric=True)
    # without a declared dtype any grid is accepted
    assert FixedScaleObserver(0.5).calculate_qparams(quint8, symmetric=False)[0].item() == 0.5


def test_zero_point_outside_grid_raises():
    obs = FixedScaleObserver(0.1, zero_point=200)
    obs.name = "head.act"
    assert int(obs.calculate_qparams(quint8, symmetric=False)[1]) == 200
    with pytest.raises(ObserverError, match=r"head\.act.*zero_point 200"):
        obs.calculate_qparams(qint8, symmetric=False)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_rejects_non_positive_scale(scale):
    with pytest.raises(ValueError, match="scale must be a finite positive scale"):
        FixedScaleObserver(scale)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_raise_naming_the_quantizer(bad):
    obs = FixedScaleObserver(0.1)
    obs.name = "layer1.conv"
    x = torch.randn(4, 4)
    x[2, 1] = bad
    with pytest.raises(ObserverError, match=r"layer1\.conv.*NaN or Inf"):
        obs(x)


def test_empty_tensor_is_accepted():
    obs = FixedScaleObserver(0.1)
    empty = torch.empty(0, 3)
    assert obs(empty) is empty
    assert obs.calculate_qparams(qint8, symmetric=True)[0].item() == np.float32(0.1)


def test_state_dict_round_trip():
    obs = FixedScaleObserver(0.375, zero_point=5)
    fresh = FixedScaleObserver(1.0)
    fresh.load_state_dict(obs.state_dict())
    s, z = fresh.calculate_qparams(qint8, symmetric=False)
    assert s.item() == 0.375 and int(z) == 5
    assert set(obs.state_dict()) == {"scale", "zero_point"}


def test_with_args_and_repr():
    factory = FixedScaleObserver.with_args(scale=0.5, dtype=quint8, zero_point=128)
    obs = factory()
    assert obs.dtype == quint8 and obs.calculate_qparams(quint8, symmetric=True)[0].item() == 0.5
    assert "scale=0.5" in repr(obs) and "zero_point=128" in repr(obs) and "quint8" in repr(obs)
