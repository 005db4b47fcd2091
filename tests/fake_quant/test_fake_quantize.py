"""FakeQuantize / LearnableFakeQuantize: numerics wiring, state_dict, factories, gradients."""

from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch
from torch import nn

import fxquant
from fxquant.fake_quant import (
    FakeQuantize,
    FakeQuantState,
    LearnableFakeQuantize,
    set_fake_quantize,
)
from fxquant.numerics import (
    PerChannel,
    PerTensor,
    ScaleMath,
    choose_qparams,
    clip_mask,
    fake_quantize,
    fake_quantize_lsq,
    native,
    qint4,
    qint8,
    quint8,
)
from fxquant.observers import (
    FixedScaleObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    ObserverError,
)

QAT, CALIBRATION, VALIDATION = (
    FakeQuantState.QAT,
    FakeQuantState.CALIBRATION,
    FakeQuantState.VALIDATION,
)


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(
        a.detach().view(torch.int32), b.detach().view(torch.int32)
    )


# -- numerics wiring ------------------------------------------------------------------------------
@pytest.mark.parametrize("ch_axis", [0, 1, -1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_qat_matches_numerics(ch_axis, symmetric):
    fq = FakeQuantize(dtype=quint8, symmetric=symmetric, ch_axis=ch_axis)
    assert fq.granularity == PerChannel(ch_axis)
    x = torch.randn(3, 5, 4)
    y = fq(x)
    flat = x.movedim(ch_axis, 0).reshape(x.shape[ch_axis], -1)
    s, z = choose_qparams(flat.amin(1), flat.amax(1), quint8, symmetric)
    assert fq.scale.shape == (x.shape[ch_axis],)
    assert torch.equal(fq.scale, s) and torch.equal(fq.zero_point, z)
    assert bit_equal(y, fake_quantize(x, s, z, quint8, ch_axis))


def test_reciprocal_scale_math_matches_torch_in_qat():
    x = torch.randn(6, 7) * 3
    fq = FakeQuantize(dtype=quint8, symmetric=False, scale_math=ScaleMath.RECIPROCAL)
    y = fq(x)
    ref = torch.fake_quantize_per_tensor_affine(x, fq.scale.item(), int(fq.zero_point), 0, 255)
    assert bit_equal(y, ref)
    fqc = FakeQuantize(ch_axis=1, scale_math=ScaleMath.RECIPROCAL)
    yc = fqc(x)
    assert bit_equal(
        yc, torch.fake_quantize_per_channel_affine(x, fqc.scale, fqc.zero_point, 1, -128, 127)
    )


def test_power_of_two_option():
    fq = FakeQuantize(power_of_two=True)
    fq(torch.tensor([-0.3, 1.1]))
    mantissa, _ = torch.frexp(fq.scale)
    assert mantissa.item() == 0.5 and fq.scale.item() >= 1.1 / 127


def test_ste_gradient_in_qat():
    fq = FakeQuantize(fixed_in_qat=True)
    fq(torch.linspace(-1, 1, 5))  # calibrate on a narrow range
    x = (torch.randn(40) * 2).requires_grad_(True)
    fq(x).sum().backward()
    mask = clip_mask(x.detach(), fq.scale, fq.zero_point, qint8)
    assert torch.equal(x.grad, mask.float()) and 0 < int(mask.sum()) < 40


@pytest.mark.parametrize("ch_axis", [None, 1])
def test_dtype_from_fixed_observer_and_exact_scale(ch_axis):
    observer = FixedScaleObserver.with_args(scale=1.0 / 128, dtype=quint8, zero_point=128)
    fq = FakeQuantize(observer=observer, ch_axis=ch_axis)
    assert fq.dtype == quint8 and fq.observer.ch_axis is None  # ch_axis is not forced on it
    x = torch.linspace(-1, 1, 18).reshape(3, 6)
    y = fq(x)
    assert fq.scale.item() == 1.0 / 128 and int(fq.zero_point) == 128
    assert bit_equal(y, fake_quantize(x, torch.tensor(1.0 / 128), torch.tensor(128), quint8))
    with pytest.raises(ObserverError, match="quint8"):
        FakeQuantize(observer=FixedScaleObserver.with_args(scale=0.1, dtype=quint8), dtype=qint8)(x)


def test_default_dtype_is_qint8():
    assert FakeQuantize().dtype == qint8 and FakeQuantize().granularity == PerTensor()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dtype": "qint8"},
        {"dtype": torch.qint8},
        {"scale_math": "divide"},
        {"observer": "MinMaxObserver"},
    ],
)
def test_bad_arguments_raise_type_error(kwargs):
    with pytest.raises(TypeError):
        FakeQuantize(**kwargs)


def test_extra_repr():
    fq = FakeQuantize(dtype=quint8, symmetric=False)
    fq.name = "layer1.act"
    fq(torch.tensor([0.0, 2.55]))
    text = repr(fq)
    for part in (
        "layer1.act",
        "quint8",
        "affine",
        "per_tensor",
        "state=QAT",
        "scale=0.01",
        "zero_point=0",
    ):
        assert part in text, part


def test_learnable_repr_does_not_warn():
    fq = LearnableFakeQuantize(symmetric=False)
    fq(torch.tensor([-1.0, 2.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = repr(fq)
    assert "scale=" in text and "zero_point=" in text


# -- factories ------------------------------------------------------------------------------------
def test_with_args_factory():
    factory = FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver.with_args(averaging_constant=0.5),
        dtype=quint8,
        symmetric=False,
        ch_axis=1,
    )
    a, b = factory(), factory()
    assert a is not b and a.observer is not b.observer
    assert isinstance(a.observer, MovingAverageMinMaxObserver)
    assert a.observer.averaging_constant == 0.5 and a.observer.ch_axis == 1
    assert a.dtype == quint8 and not a.symmetric and a.ch_axis == 1
    a(torch.randn(2, 3))
    assert bool(a.calibrated) and not bool(b.calibrated) and b.scale.shape == (0,)
    assert factory.with_args(dtype=qint4)().dtype == qint4 and factory().dtype == quint8
    assert factory(symmetric=True).symmetric
    assert "FakeQuantize.with_args(" in repr(factory) and "dtype=quint8" in repr(factory)


def test_observer_kwargs_and_other_factory_forms():
    fq = FakeQuantize(observer=MovingAverageMinMaxObserver, averaging_constant=0.25)
    assert fq.observer.averaging_constant == 0.25
    fq = FakeQuantize(
        observer=functools.partial(MovingAverageMinMaxObserver, averaging_constant=0.125)
    )
    assert fq.observer.averaging_constant == 0.125
    learnable = LearnableFakeQuantize.with_args(symmetric=False)()
    assert isinstance(learnable, LearnableFakeQuantize) and learnable.zero_point.requires_grad


# -- state dict -----------------------------------------------------------------------------------
FACTORIES = {
    "per_tensor": FakeQuantize.with_args(),
    "per_tensor_affine_ma": FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver, symmetric=False, dtype=quint8
    ),
    "per_channel_0": FakeQuantize.with_args(ch_axis=0, is_weight=True),
    "per_channel_1_affine": FakeQuantize.with_args(
        ch_axis=1, symmetric=False, scale_math=ScaleMath.RECIPROCAL
    ),
    "fixed": FakeQuantize.with_args(observer=FixedScaleObserver.with_args(scale=0.05)),
    "learnable": LearnableFakeQuantize.with_args(),
    "learnable_affine_per_channel": LearnableFakeQuantize.with_args(
        symmetric=False, ch_axis=1, dtype=quint8
    ),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_dict_round_trip_is_bit_identical(name):
    factory = FACTORIES[name]
    src = factory()
    for _ in range(3):
        src(torch.randn(4, 6, 5) * 2)
    if isinstance(src, LearnableFakeQuantize):  # move the learned range off its initial value
        src(torch.randn(4, 6, 5)).pow(2).sum().backward()
        with torch.no_grad():
            for p in (src.scale, src.zero_point):
                if p.grad is not None:
                    p -= 1e-3 * p.grad
    src.set_state(VALIDATION)
    state = src.state_dict()

    fresh = factory()
    fresh.load_state_dict(state)
    assert fresh.state is VALIDATION and bool(fresh.calibrated)
    for key, value in state.items():
        assert bit_equal(fresh.state_dict()[key].float(), value.float()), key
    x = torch.randn(4, 6, 5) * 3
    assert bit_equal(fresh(x), src(x))
    # both continue identically in QAT (observer statistics / learned parameters were restored)
    for m in (src, fresh):
        m.set_state(QAT)
    x2 = torch.randn(4, 6, 5) * 4
    assert bit_equal(fresh(x2), src(x2))


def test_state_dict_round_trip_in_a_model():
    def build():
        return nn.Sequential(
            FakeQuantize(),
            nn.Linear(5, 3),
            FakeQuantize(ch_axis=1, symmetric=False),
            LearnableFakeQuantize(ch_axis=1),
        )

    model = build()
    set_fake_quantize(model, CALIBRATION)
    for _ in range(4):
        model(torch.randn(8, 5))
    set_fake_quantize(model, VALIDATION)
    fresh = build()
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(16, 5)
    assert bit_equal(fresh(x), model(x))


# -- learnable ------------------------------------------------------------------------------------
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("ch_axis", [None, 1])
def test_learnable_gets_gradients_on_scale_and_zero_point(symmetric, ch_axis):
    fq = LearnableFakeQuantize(dtype=quint8, symmetric=symmetric, ch_axis=ch_axis)
    fq(torch.randn(8, 4))  # first QAT batch initialises the range from the observer
    assert isinstance(fq.scale, nn.Parameter) and isinstance(fq.zero_point, nn.Parameter)
    assert fq.scale.shape == (() if ch_axis is None else (4,))
    assert fq.zero_point.requires_grad is (not symmetric)
    stats = (fq.observer.min_val.clone(), fq.observer.max_val.clone())

    x = (torch.randn(8, 4) * 3).requires_grad_(True)  # wider than calibration: some values clip
    y = fq(x)
    upstream = torch.randn(8, 4)
    y.backward(upstream)
    assert torch.equal(fq.observer.min_val, stats[0])  # learned now: nothing observed
    assert fq.scale.grad is not None and bool((fq.scale.grad != 0).any())
    if symmetric:
        assert fq.zero_point.grad is None
    else:
        assert fq.zero_point.grad is not None and bool((fq.zero_point.grad != 0).any())

    # the gradients are those of fake_quantize_lsq with the LSQ grad factor 1/sqrt(n * qmax)
    n = x.numel() // max(1, fq.scale.numel())
    s = fq.scale.detach().clone().requires_grad_(True)
    z = fq.zero_point.detach().clone().requires_grad_(not symmetric)
    xr = x.detach().clone().requires_grad_(True)
    ref = fake_quantize_lsq(
        xr, s, z, quint8, ch_axis, ScaleMath.DIVIDE, 1.0 / math.sqrt(n * quint8.qmax)
    )
    ref.backward(upstream)
    assert bit_equal(y, ref) and torch.equal(x.grad, xr.grad) and torch.equal(fq.scale.grad, s.grad)
    if not symmetric:
        assert torch.equal(fq.zero_point.grad, z.grad)


def test_learnable_training_step_moves_the_range():
    fq = LearnableFakeQuantize()
    fq(torch.randn(100) * 0.1)
    opt = torch.optim.SGD(fq.parameters(), lr=0.1)
    before = fq.scale.item()
    target = torch.randn(100) * 4
    for _ in range(5):
        opt.zero_grad()
        (fq(target) - target).pow(2).mean().backward()
        opt.step()
    assert fq.scale.item() > before  # clipping error pulls the step size up


def test_learnable_validation_and_calibration():
    fq = LearnableFakeQuantize(symmetric=False)
    fq.set_state(CALIBRATION)
    x = torch.randn(50)
    assert fq(x) is x
    fq.set_state(VALIDATION)
    s, z = choose_qparams(x.min(), x.max(), qint8, symmetric=False)
    assert torch.equal(fq.scale.detach(), s) and torch.equal(fq.zero_point.detach(), z.float())
    assert bit_equal(fq(x), fake_quantize(x, s, z, qint8))


# -- the native observe + qparams call gives the Python path's bits -----------------------------
def _all_bits(module) -> dict:
    out = {}
    for k, v in module.state_dict().items():
        v = v.detach()
        out[k] = v.contiguous().view(torch.int32) if v.dtype == torch.float32 else v.clone()
    return out


@pytest.mark.parametrize("observer", ["minmax", "moving"])
@pytest.mark.parametrize("ch_axis", [None, 0, 1])
@pytest.mark.parametrize("grid", ["qint8 sym", "quint8 sym", "qint8 affine", "qint4 pow2",
                                  "qint16 sym eps-tiny"])
def test_native_observation_is_the_python_observation(observer, ch_axis, grid):
    dtype = {"qint8": fxquant.qint8, "quint8": fxquant.quint8, "qint4": fxquant.qint4,
             "qint16": fxquant.qint16}[grid.split()[0]]
    kw = dict(dtype=dtype, symmetric="affine" not in grid, power_of_two="pow2" in grid,
              eps=torch.finfo(torch.float32).tiny if "eps-tiny" in grid
              else fxquant.numerics.DEFAULT_EPS, ch_axis=ch_axis,
              observer=MinMaxObserver if observer == "minmax"
              else MovingAverageMinMaxObserver.with_args(averaging_constant=0.1))
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 6, 5, generator=gen) * s + o
               for s, o in ((1, 0), (3, 1), (0.5, -2), (2, 0))]
    batches[2][0, 1, :] = 0.0  # a zero minimum / maximum in some channels (signed zeros)
    batches[3][1, 2, 3] = -0.0
    results = []
    for on in (True, False):
        fq = FakeQuantize(**kw)
        outs = []
        with native.native_kernels(on):
            fq.set_state(FakeQuantState.CALIBRATION)
            fq(batches[0])
            fq.set_state(FakeQuantState.QAT)
            for b in batches[1:]:
                xb = b.clone().requires_grad_(True)
                y = fq(xb)
                y.backward(torch.ones_like(y))
                outs += [y.detach().view(torch.int32), xb.grad.view(torch.int32)]
        results.append((_all_bits(fq), outs, fq._dirty, bool(fq.calibrated)))
    (a, oa, da, ca), (b, ob, db, cb) = results
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert all(torch.equal(x, y) for x, y in zip(oa, ob, strict=True))
    assert (da, ca) == (db, cb)


@pytest.mark.parametrize("observer", ["minmax", "moving"])
def test_native_observation_of_large_tensors_is_the_python_observation(observer):
    """Tensors that several threads reduce: ReLU-like batches whose minimum is a zero, with
    and without a -0.0 among them, and ordinary ones; the same bits as the Python path."""
    obs = MinMaxObserver if observer == "minmax" else MovingAverageMinMaxObserver
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(8, 16, 30, 30, generator=gen) * s for s in (1.0, 2.0, 0.5, 3.0)]
    batches[1] = batches[1].clamp(min=0.0)
    batches[2] = batches[2].clamp(max=0.0)
    batches[2][3, 4, 5, 6] = -0.0
    results = []
    for on in (True, False):
        fq = FakeQuantize(obs)
        with native.native_kernels(on):
            fq.set_state(FakeQuantState.QAT)
            outs = [fq(b).view(torch.int32) for b in batches]
        results.append((_all_bits(fq), outs))
    (a, oa), (b, ob) = results
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(oa, ob, strict=True))


def test_native_observation_leaves_nan_to_the_python_error():
    fq = FakeQuantize()
    fq(torch.randn(8))
    before = _all_bits(fq)
    with native.native_kernels(True), pytest.raises(ObserverError, match="NaN or Inf"):
        fq(torch.tensor([1.0, float("nan")]))
    big = torch.randn(200_000)
    big[123_456] = float("nan")  # in the second thread's chunk
    with native.native_kernels(True), pytest.raises(ObserverError, match="NaN or Inf"):
        fq(big)
    after = _all_bits(fq)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_calibration_skips_a_weight_the_min_max_observer_already_holds_bit_for_bit():
    from fxquant.observers import MovingAverageMinMaxObserver

    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3)
    fq = FakeQuantize(MinMaxObserver, ch_axis=0, is_weight=True)
    fq.set_state(FakeQuantState.CALIBRATION)
    with torch.no_grad():
        fq(w)
        assert fq._seen is not None
        ref = fq.observer.min_val.clone(), fq.observer.max_val.clone()
        fq(w)  # the same bytes: nothing observed, nothing changed
        assert torch.equal(fq.observer.min_val, ref[0]) and torch.equal(fq.observer.max_val,
                                                                        ref[1])
        w[2, 0, 0, 0] = -50.0  # in place: observed again
        fq(w)
        assert float(fq.observer.min_val[2]) == -50.0
        fq.observer.reset()  # a reset observer is filled again by the same weight
        fq(w)
        assert torch.equal(fq.observer.min_val, w.flatten(1).amin(1))
        fq.set_state(FakeQuantState.VALIDATION)
        assert torch.equal(fq.scale, fq.observer.calculate_qparams(qint8, True)[0])
    # a moving average changes with every repetition: never skipped
    ma = FakeQuantize(MovingAverageMinMaxObserver, is_weight=True)
    ma.set_state(FakeQuantState.CALIBRATION)
    with torch.no_grad():
        ma(w)
        ma(w)
    assert ma._seen is None


@pytest.mark.parametrize("setter", ["minmax", "histogram", "qat"])
def test_calibration_under_inference_mode_leaves_state_usable_outside_it(setter):
    """A batch observed under torch.inference_mode must not leave inference tensors as
    statistics or scales: later calibration, evaluation, load_state_dict and QAT touch them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(288, 4)).eval()
    x = torch.randn(2, 3, 8, 8)
    qc = {"minmax": fxquant.get_qconfig(), "histogram": fxquant.default_calibration_qconfig_setter,
          "qat": fxquant.default_qat_qconfig_setter}[setter]
    qm = fxquant.prepare(model, x, qc)
    fxquant.set_fake_quantize(qm, FakeQuantState.CALIBRATION)
    with torch.inference_mode():
        qm(x)
        qm(x * 2)
    with torch.no_grad():
        qm(x * 3)  # in-place statistics updates outside the mode
    fxquant.set_fake_quantize(qm, FakeQuantState.VALIDATION)
    for t in qm.state_dict().values():
        assert not t.is_inference()
    with torch.no_grad():
        ref = qm(x)
    assert torch.equal(qm(x), ref)
    qm.load_state_dict(qm.state_dict())
    qm.train()
    fxquant.set_fake_quantize(qm, FakeQuantState.QAT)
    qm(x).sum().backward()
    torch.optim.SGD(qm.parameters(), lr=0.1).step()
