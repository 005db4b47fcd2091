"""Bad data and arguments for calibration and the other data-driven algorithms."""

from __future__ import annotations

import pytest
import torch

import fxquant
from fxquant import ConfigError, DataError, ObserverError

from .helpers import example, expect

pytestmark = pytest.mark.timeout(120)
SETTER = fxquant.default_calibration_qconfig_setter


@pytest.fixture
def fresh(float_model):
    return fxquant.prepare(float_model, example(), SETTER, backend="onnxruntime")


def test_calibrate_a_model_that_was_never_prepared(float_model):
    expect(ConfigError, lambda: fxquant.calibrate(float_model, [example()], progress=False),
           ["calibrate", "Net", "not a model returned by fxquant.prepare()"],
           r"qmodel = fxquant\.prepare\(model")


@pytest.mark.parametrize("data", [[torch.randn(0, 3, 8, 8)], torch.randn(0, 3, 8, 8)])
def test_batches_of_size_zero(fresh, data):
    expect(DataError, lambda: fxquant.calibrate(fresh, data, progress=False),
           ["batch 0 is empty", "tensor[0, 3, 8, 8]"], "at least one sample")


def test_no_batch_at_all(fresh):
    expect(DataError, lambda: fxquant.calibrate(fresh, [], progress=False),
           ["calibrate", "no batch"], "pass at least one batch")


@pytest.mark.parametrize(("data", "shown"), [
    ([torch.tensor(1.0)], "tensor[] float32"),                         # 0-d tensor batch
    (torch.tensor(1.0), "tensor[] float32"),                           # 0-d tensor as data
    ([example(), torch.randn(2, 5, 8, 8)], "batch 1 (tensor[2, 5, 8, 8]"),  # wrong shape
    ([example().long()], "int64"),                                     # integer data
    ([{"image": example()}], "image=tensor[2, 3, 8, 8]"),              # wrong keyword name
])
def test_batches_the_model_cannot_take(fresh, data, shown):
    expect(DataError, lambda: fxquant.calibrate(fresh, data, progress=False),
           ["calibrate", shown], "every batch must be what the model takes")


def test_dict_batches_are_keyword_inputs(fresh):
    assert fxquant.calibrate(fresh, [{"x": example()}], progress=False) is fresh  # not an error


@pytest.mark.parametrize("data", [None, 5, "calib/"])
def test_data_that_is_no_iterable_of_batches(fresh, data):
    expect(DataError, lambda: fxquant.calibrate(fresh, data, progress=False),
           ["data", type(data).__name__], "an iterable of batches")


@pytest.mark.parametrize("bad", [0, -1, 2.5, "2", True])
def test_num_batches(fresh, bad):
    expect(ConfigError,
           lambda: fxquant.calibrate(fresh, [example()], num_batches=bad, progress=False),
           ["num_batches", repr(bad)], r"None \(all batches\) or an int >= 1")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_data_names_the_quantizer(fresh, value):
    x = example()
    x[0, 1, 2, 3] = value
    err = expect(ObserverError, lambda: fxquant.calibrate(fresh, [x], progress=False),
                 ["quantizer 'x'", "NaN or Inf"], "check the model / data")
    assert "observed" in str(err)


def test_per_channel_activation_axis_outside_the_tensor(float_model):
    qc = fxquant.get_qconfig()
    axis7 = fxquant.QConfig(output=fxquant.FakeQuantize.with_args(ch_axis=7), weight=qc.weight)
    q = fxquant.prepare(float_model, example(), {"conv": axis7, "fc": qc})
    expect(ObserverError, lambda: fxquant.calibrate(q, [example()], progress=False),
           ["axis 7", "4-d tensor", "[2, 3, 8, 8]"], r"axis in \[-4, 3\] or ch_axis=None")


@pytest.mark.parametrize(("fn", "name"), [
    (lambda m, d: fxquant.adaround(m, d, num_iterations=1, progress=False), "adaround"),
    (lambda m, d: fxquant.bias_correction(m, d, progress=False), "bias_correction"),
    (lambda m, d: fxquant.reconstruct(m, d, num_iterations=1, progress=False), "reconstruct"),
])
def test_algorithms_on_a_model_that_was_never_prepared(float_model, fn, name):
    expect(ConfigError, lambda: fn(float_model, [example()]),
           [name, "Net", "not a model returned by fxquant.prepare()"], "prepare it first")


def test_algorithm_arguments(qmodel):
    expect(ConfigError, lambda: fxquant.adaround(qmodel, [example()], num_iterations=-1),
           ["num_iterations", "-1"], ">= 0")
    expect(ConfigError, lambda: fxquant.bias_correction(qmodel, [example()], num_batches=0),
           ["num_batches", "0"], "int >= 1")
    expect(ConfigError, lambda: fxquant.sensitivity(qmodel, [example()], metric="top1"),
           ["metric", "'top1'"], "one of .* or a callable")
