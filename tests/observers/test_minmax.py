"""MinMaxObserver and MovingAverageMinMaxObserver.

Running min/max are exact.  The moving average ``m <- m + c * (batch - m)`` is checked exactly on
hand-computed and dyadic data (every step exact in float32), and on arbitrary data against a
float64 reference within 2 float32 ulps (of the largest magnitude involved) per update.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fxquant.numerics import choose_qparams, qint8, quint8
from fxquant.observers import MinMaxObserver, MovingAverageMinMaxObserver, ObserverError

OBSERVERS = [MinMaxObserver, MovingAverageMinMaxObserver.with_args(averaging_constant=0.1)]
AXES_4D = [0, 1, 2, 3, -1, -3]


def ids(obj):
    return getattr(obj, "__name__", None) or repr(obj)


def channel_minmax(x: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    return flat.amin(dim=1), flat.amax(dim=1)


# -- MinMax ---------------------------------------------------------------------------------------
def test_per_tensor_running_min_max_is_exact():
    obs = MinMaxObserver()
    assert not obs.has_stats()
    batches = [torch.randn(4, 5) * (i + 1) + i for i in range(6)]
    for b in batches:
        assert obs(b) is b  # statistics only: the input comes back untouched
    everything = torch.cat([b.reshape(-1) for b in batches])
    assert obs.has_stats()
    assert obs.min_val.shape == () and torch.equal(obs.min_val, everything.min())
    assert torch.equal(obs.max_val, everything.max())


@pytest.mark.parametrize("axis", AXES_4D)
def test_per_channel_running_min_max_on_every_axis(axis):
    obs = MinMaxObserver(ch_axis=axis)
    assert obs.min_val.shape == (0,) and not obs.has_stats()
    batches = [torch.randn(3, 4, 5, 6) * (i + 1) for i in range(4)]
    for b in batches:
        obs(b)
    lo, hi = channel_minmax(torch.stack(batches).movedim(0, -1), axis % 4)
    c = batches[0].shape[axis]
    assert (
        obs.min_val.shape == (c,) and torch.equal(obs.min_val, lo) and torch.equal(obs.max_val, hi)
    )
    scale, zp = obs.calculate_qparams(qint8, symmetric=True)
    assert scale.shape == (c,) and zp.shape == (c,)
    ref_scale, ref_zp = choose_qparams(lo, hi, qint8, symmetric=True)
    assert torch.equal(scale, ref_scale) and torch.equal(zp, ref_zp)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("power_of_two", [True, False])
def test_calculate_qparams_uses_choose_qparams(symmetric, power_of_two):
    obs = MinMaxObserver()
    obs(torch.tensor([-0.7, 0.1, 2.3]))
    got = obs.calculate_qparams(quint8, symmetric, power_of_two, eps=1e-4)
    ref = choose_qparams(
        torch.tensor(-0.7), torch.tensor(2.3), quint8, symmetric, power_of_two, eps=1e-4
    )
    assert all(torch.equal(a, b) for a, b in zip(got, ref, strict=True))


def test_reset_forgets():
    obs = MinMaxObserver()
    obs(torch.tensor([1.0, 2.0]))
    obs.reset()
    assert not obs.has_stats()
    obs(torch.tensor([5.0]))
    assert float(obs.min_val) == 5.0 and float(obs.max_val) == 5.0


def test_accepts_other_float_dtypes_and_inputs_requiring_grad():
    obs = MinMaxObserver()
    x = torch.tensor([0.5, -1.5], dtype=torch.float64, requires_grad=True)
    assert obs(x) is x
    obs(torch.tensor([3.0], dtype=torch.float16))
    assert obs.min_val.dtype == torch.float32 and obs.min_val.tolist() == -1.5
    assert obs.max_val.tolist() == 3.0 and not obs.min_val.requires_grad


# -- moving average -------------------------------------------------------------------------------
def test_moving_average_hand_computed():
    obs = MovingAverageMinMaxObserver(averaging_constant=0.5)
    for lo, hi in [(-1.0, 2.0), (-3.0, 6.0), (1.0, 10.0)]:
        obs(torch.tensor([lo, (lo + hi) / 2, hi]))
    # min: -1 -> -1 + 0.5 * (-3 - -1) = -2 -> -2 + 0.5 * (1 - -2) = -0.5
    # max:  2 ->  2 + 0.5 * (6 - 2)   =  4 ->  4 + 0.5 * (10 - 4) =  7
    assert obs.min_val.item() == -0.5 and obs.max_val.item() == 7.0


def test_moving_average_per_channel_hand_computed():
    obs = MovingAverageMinMaxObserver(averaging_constant=0.25, ch_axis=1)
    obs(torch.tensor([[0.0, -4.0], [8.0, 4.0]]))  # channels (columns): [0, 8], [-4, 4]
    obs(torch.tensor([[4.0, 0.0], [-8.0, 12.0]]))  # channels: [-8, 4], [0, 12]
    assert obs.min_val.tolist() == [0.0 + 0.25 * (-8.0 - 0.0), -4.0 + 0.25 * (0.0 + 4.0)]
    assert obs.max_val.tolist() == [8.0 + 0.25 * (4.0 - 8.0), 4.0 + 0.25 * (12.0 - 4.0)]
    assert obs.min_val.tolist() == [-2.0, -3.0] and obs.max_val.tolist() == [7.0, 6.0]


def ema_reference(batch_stats: list[np.ndarray], c: float) -> np.ndarray:
    m = batch_stats[0].astype(np.float64)
    for b in batch_stats[1:]:
        m = m + c * (b.astype(np.float64) - m)
    return m


@pytest.mark.parametrize("axis", [None, 0, 2, -1])
def test_moving_average_exact_on_dyadic_data(axis):
    """c = 1/8, inputs in [-4, 4] on a 1/16 grid, 5 updates: at most 2 + 4 + 3*5 = 21
    significant bits, so every float32 step is exact."""
    c = 0.125
    obs = MovingAverageMinMaxObserver(averaging_constant=c, ch_axis=axis)
    batches = [torch.randint(-64, 65, (3, 4, 5)).float() / 16 for _ in range(6)]
    for b in batches:
        obs(b)
    if axis is None:
        stats = [(b.min().numpy(), b.max().numpy()) for b in batches]
    else:
        stats = [tuple(t.numpy() for t in channel_minmax(b, axis % 3)) for b in batches]
    np.testing.assert_array_equal(obs.min_val.numpy(), ema_reference([s[0] for s in stats], c))
    np.testing.assert_array_equal(obs.max_val.numpy(), ema_reference([s[1] for s in stats], c))


@pytest.mark.parametrize("axis", [None, 1])
def test_moving_average_default_constant_within_ulps(axis):
    c = 0.01
    obs = MovingAverageMinMaxObserver(ch_axis=axis)
    assert obs.averaging_constant == c
    batches = [torch.randn(8, 16) * 3 + 1 for _ in range(30)]
    for b in batches:
        obs(b)
    if axis is None:
        stats = [(b.min().numpy(), b.max().numpy()) for b in batches]
    else:
        stats = [tuple(t.numpy() for t in channel_minmax(b, axis)) for b in batches]
    for got, k in ((obs.min_val, 0), (obs.max_val, 1)):
        ref = ema_reference([s[k] for s in stats], c)
        magnitude = max(
            float(np.abs(np.stack([s[k] for s in stats])).max()), float(np.abs(ref).max())
        )
        tol = 2 * (len(batches) - 1) * float(np.spacing(np.float32(magnitude)))
        assert float(np.abs(got.numpy().astype(np.float64) - ref).max()) <= tol


def test_moving_average_first_batch_initialises_and_constant_one_tracks_last():
    obs = MovingAverageMinMaxObserver(averaging_constant=1.0)
    obs(torch.tensor([-2.0, 3.0]))
    assert obs.min_val.item() == -2.0 and obs.max_val.item() == 3.0  # not an average with +-inf
    obs(torch.tensor([0.5, 1.0]))
    assert obs.min_val.item() == 0.5 and obs.max_val.item() == 1.0


@pytest.mark.parametrize("c", [0.0, -0.1, 1.5, float("nan")])
def test_moving_average_rejects_bad_constant(c):
    with pytest.raises(ValueError, match="averaging_constant"):
        MovingAverageMinMaxObserver(averaging_constant=c)


# -- errors and empty tensors --------------------------------------------------------------------
@pytest.mark.parametrize("factory", OBSERVERS, ids=ids)
@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_raise_naming_the_quantizer(factory, axis, bad):
    obs = factory(ch_axis=axis)
    obs.name = "layer1.conv"
    good = torch.randn(3, 4)
    obs(good)
    before = (obs.min_val.clone(), obs.max_val.clone())
    x = torch.randn(3, 4)
    x[1, 2] = bad
    with pytest.raises(ObserverError, match=r"layer1\.conv") as info:
        obs(x)
    assert "NaN or Inf" in str(info.value)
    assert torch.equal(obs.min_val, before[0]) and torch.equal(obs.max_val, before[1])


@pytest.mark.parametrize("factory", OBSERVERS, ids=ids)
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_empty_tensors_leave_statistics_untouched(factory, axis):
    obs = factory(ch_axis=axis)
    empty = torch.empty(0, 4) if axis != 0 else torch.empty(3, 0)
    assert obs(empty) is empty
    assert not obs.has_stats() and obs.min_val.shape == ((0,) if axis is not None else ())
    obs(torch.randn(3, 4))
    before = (obs.min_val.clone(), obs.max_val.clone())
    obs(empty)
    assert torch.equal(obs.min_val, before[0]) and torch.equal(obs.max_val, before[1])


@pytest.mark.parametrize("factory", OBSERVERS, ids=ids)
def test_qparams_before_data_raise_naming_the_quantizer(factory):
    obs = factory()
    obs.name = "layer1.conv"
    with pytest.raises(ObserverError, match=r"layer1\.conv.*observed no data"):
        obs.calculate_qparams(qint8, symmetric=True)
    unnamed = factory()
    with pytest.raises(ObserverError, match="<unnamed>"):
        unnamed.calculate_qparams(qint8, symmetric=True)


# -- state dict -----------------------------------------------------------------------------------
@pytest.mark.parametrize("factory", OBSERVERS, ids=ids)
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_state_dict_round_trip_into_fresh_observer(factory, axis):
    obs = factory(ch_axis=axis)
    for _ in range(3):
        obs(torch.randn(5, 6, 7))
    fresh = factory(ch_axis=axis)
    if axis is not None:
        assert fresh.min_val.shape == (0,)  # resized on load
    fresh.load_state_dict(obs.state_dict())
    for key, value in obs.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    for dtype, symmetric in ((qint8, True), (quint8, False)):
        a, b = obs.calculate_qparams(dtype, symmetric), fresh.calculate_qparams(dtype, symmetric)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    nxt = torch.randn(5, 6, 7) * 4  # both keep observing identically
    obs(nxt)
    fresh(nxt)
    assert torch.equal(obs.min_val, fresh.min_val) and torch.equal(obs.max_val, fresh.max_val)


def test_with_args_factory_builds_independent_observers():
    factory = MovingAverageMinMaxObserver.with_args(averaging_constant=0.25, ch_axis=1)
    a, b = factory(), factory()
    assert isinstance(a, MovingAverageMinMaxObserver) and a is not b
    assert a.averaging_constant == 0.25 and a.ch_axis == 1
    a(torch.randn(2, 3))
    assert a.has_stats() and not b.has_stats()
    assert factory(ch_axis=0).ch_axis == 0  # call-time override
    assert "averaging_constant=0.25" in repr(factory) and "averaging_constant=0.25" in repr(a)
    assert math.isinf(float(MinMaxObserver().min_val))


# -- channel_aminmax: amin / amax, bit for bit as aminmax ----------------------------------------
def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def test_channel_aminmax_is_aminmax_bit_for_bit():
    """Signed zeros included: where amin / amax would pick another zero, aminmax decides."""
    from fxquant.observers import channel_aminmax

    gen = torch.Generator().manual_seed(0)
    for trial in range(300):
        c = int(torch.randint(1, 40, (), generator=gen))
        k = int(torch.randint(1, 600, (), generator=gen))
        v = torch.randn(c, k, generator=gen)
        zeros = torch.where(torch.rand(c, k, generator=gen) < 0.5, 0.0, -0.0)
        pick = torch.rand(c, k, generator=gen) < 0.3
        kinds = [v, torch.where(pick, zeros, v.abs()), torch.where(pick, zeros, -v.abs()), zeros]
        v = kinds[trial % 4]
        for x in (v, v.double(), v.t().contiguous().t()):
            lo, hi = channel_aminmax(x)
            rlo, rhi = torch.aminmax(x, dim=1)
            assert torch.equal(_bits(lo), _bits(rlo)) and torch.equal(_bits(hi), _bits(rhi)), trial


def test_per_channel_observer_buffers_unchanged_by_the_shortcut():
    x = torch.randn(6, 5, 7)
    x[2] = 0.0
    x[3, 0, 0] = -0.0
    obs = MinMaxObserver(ch_axis=0)
    obs(x)
    rlo, rhi = torch.aminmax(x.reshape(6, -1), dim=1)
    assert torch.equal(_bits(obs.min_val), _bits(rlo))
    assert torch.equal(_bits(obs.max_val), _bits(rhi))
