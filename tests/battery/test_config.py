"""Bad arguments to the configuration objects: dtypes, quantizer / observer specs, qconfigs,
states.  Validated where they are created, long before a model runs."""

from __future__ import annotations

import pytest
import torch

import fxquant
from fxquant import ConfigError

from .helpers import expect

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("bits", [40, 0, 1, -8, 2.5, True, "8"])
def test_qdtype_bits(bits):
    expect(ConfigError, lambda: fxquant.QDType(bits=bits), ["QDType.bits", repr(bits)],
           r"an int in \[2, 32\]")


def test_qdtype_signed_must_be_a_bool():
    expect(ConfigError, lambda: fxquant.QDType(8, "yes"), ["QDType.signed", "'yes'"],
           "True or False")


@pytest.mark.parametrize(("scale", "shown"), [
    (float("inf"), "inf"), (float("nan"), "nan"), (1e-45, "1e-45"), (0.0, "0.0"),
    (-0.5, "-0.5"), (1e39, "1e+39"), (10**400, "1000"),
])
def test_fixed_scale_finite_positive_within_float32(scale, shown):
    expect(ConfigError, lambda: fxquant.get_qconfig(fixed_scale=scale),
           ["fixed scale", shown], r"finite positive scale within float32")
    expect(ConfigError, lambda: fxquant.FixedScaleObserver(scale=scale),
           ["FixedScaleObserver: scale"], r"finite positive scale within float32")


@pytest.mark.parametrize("scale", [True, "0.1", [0.1], torch.ones(2)])
def test_fixed_scale_must_be_a_number(scale):
    expect(ConfigError, lambda: fxquant.get_qconfig(fixed_scale=scale),
           ["fixed scale"], "must be a number")


def test_fixed_zero_point_must_be_an_int32():
    expect(ConfigError, lambda: fxquant.FixedScaleObserver(scale=0.1, zero_point=2**40),
           ["FixedScaleObserver: zero_point", str(2**40)], "an int32 integer")


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"eps": 0.0}, "eps"),
    ({"observer": fxquant.FixedScaleObserver.with_args(scale=0.0)}, "fixed scale"),
])
def test_lsq_with_zero_scale(kwargs, named):
    expect(ConfigError, lambda: fxquant.LearnableFakeQuantize.with_args(**kwargs),
           [named, "0.0"], r"finite positive scale")


@pytest.mark.parametrize(("kwargs", "named", "hint"), [
    ({"ch_axis": "0"}, "ch_axis", r"None \(per tensor\) or an int"),
    ({"ch_axis": 1.0}, "ch_axis", r"None \(per tensor\) or an int"),
    ({"dtype": "int8"}, "dtype", r"a QDType \(e\.g\. fxquant\.qint8\)"),
    ({"dtype": torch.qint8}, "dtype", r"a QDType \(e\.g\. fxquant\.qint8\)"),
    ({"observer": "minmax"}, "observer", r"Observer class or Observer\.with_args"),
    ({"symmetric": "yes"}, "symmetric", "True or False"),
    ({"scale_math": "fast"}, "scale_math", "must be a ScaleMath"),
    ({"averaging_constant": 2.0}, "averaging_constant", r"unknown argument|in \(0, 1\]"),
])
def test_quantizer_spec_arguments(kwargs, named, hint):
    expect(ConfigError, lambda: fxquant.FakeQuantize.with_args(**kwargs), [named], hint)


@pytest.mark.parametrize(("make", "named", "hint"), [
    (lambda: fxquant.FakeQuantize(dtype="qint8"), "FakeQuantize: dtype", "a QDType"),
    (lambda: fxquant.FakeQuantize(ch_axis="0"), "FakeQuantize: ch_axis", "or an int axis"),
    (lambda: fxquant.FakeQuantize(eps=float("nan")), "FakeQuantize: eps", "finite positive"),
    (lambda: fxquant.MinMaxObserver(ch_axis="a"), "MinMaxObserver: ch_axis", "or an int axis"),
    (lambda: fxquant.MovingAverageMinMaxObserver(averaging_constant=2.0),
     "averaging_constant", r"in \(0, 1\]"),
    (lambda: fxquant.HistogramObserver(bins=100), "HistogramObserver: bins", "a power of two"),
    (lambda: fxquant.HistogramObserver(method="kl"), "'kl'", "valid: 'percentile'"),
    (lambda: fxquant.PercentileObserver(percentile=150.0), "percentile", r"in \(0, 100\]"),
])
def test_quantizer_and_observer_constructors(make, named, hint):
    expect(ConfigError, make, [named], hint)


def test_qconfig_fields_and_get_qconfig():
    expect(ConfigError, lambda: fxquant.QConfig(output=5), ["QConfig.output", "5"],
           r"must build a FakeQuantize \(e\.g\. FakeQuantize\.with_args")
    expect(ConfigError, lambda: fxquant.get_qconfig(weight_dtype="int8"), ["dtype", "'int8'"],
           "a QDType")
    expect(ConfigError, lambda: fxquant.get_qconfig(fix_scale=0.05), ["fix_scale"], "fixed_scale")


@pytest.mark.parametrize(("state", "hint"), [
    ("QAT", r"use fxquant\.FakeQuantState\.QAT"),
    ("qat", r"use fxquant\.FakeQuantState\.QAT"),
    (3, r"QAT, CALIBRATION, VALIDATION, FLOAT"),
])
def test_set_fake_quantize_states(qmodel, state, hint):
    expect(ConfigError, lambda: fxquant.set_fake_quantize(qmodel, state),
           ["set_fake_quantize", "state", repr(state)], hint)
    expect(ConfigError, lambda: fxquant.fake_quantize_state(qmodel, state).__enter__(),
           ["state", repr(state)], hint)


def test_set_fake_quantize_on_a_non_module():
    expect(ConfigError, lambda: fxquant.set_fake_quantize("model", fxquant.FakeQuantState.QAT),
           ["set_fake_quantize", "str"], "a prepared model or a submodule")


@pytest.mark.parametrize("backend", ["tpu", 5, None])
def test_unknown_backend_profiles(backend):
    expect(ConfigError, lambda: fxquant.get_profile(backend), ["backend", repr(backend)],
           "choose one of")


def test_not_prepared_models_everywhere(float_model):
    for fn in (fxquant.summary, fxquant.convert,
               lambda m: fxquant.compare(None, m, torch.randn(1, 3, 8, 8))):
        expect(ConfigError, lambda fn=fn: fn(float_model),
               ["Net", "not a model returned by fxquant.prepare()"], "prepare it first")
