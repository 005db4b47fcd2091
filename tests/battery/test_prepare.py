"""Bad inputs to ``fxquant.prepare``: the model, its example inputs, setters, options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxquant
from fxquant import CaptureError, ConfigError, DataError, UnknownOpNameError

from .helpers import example, expect

pytestmark = pytest.mark.timeout(120)
SETTER = fxquant.default_calibration_qconfig_setter


def test_prepare_twice_is_a_capture_error(qmodel):
    expect(CaptureError, lambda: fxquant.prepare(qmodel, example(), SETTER),
           ["Net", "already prepared"], "pass the float model")


def test_a_model_prepared_in_place_cannot_be_prepared_again():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    fxquant.prepare(model, example(), SETTER, inplace=True)  # its ReLU gains a quantizer
    expect(CaptureError, lambda: fxquant.prepare(model, example(), SETTER),
           ["Sequential", "already prepared", "'1.output_fake_quant'"], "pass the float model")


def test_not_a_module():
    expect(ConfigError, lambda: fxquant.prepare(lambda x: x * 2, example()),
           ["model", "torch.nn.Module", "function"], "wrap .* in an nn.Module")


@pytest.mark.parametrize(("inputs", "shown"), [
    (torch.randn(2, 5, 8, 8), "tensor[2, 5, 8, 8] float32"),       # wrong channel count
    (torch.randn(2, 3, 8, 8).double(), "float64"),                  # wrong dtype
    (torch.ones(2, 3, 8, 8, dtype=torch.int64), "int64"),           # integer data
    (torch.randn(3, 8, 8, 8, 8), "tensor[3, 8, 8, 8, 8]"),          # wrong rank
    (5, "(int)"),                                                    # not a tensor
])
def test_example_inputs_the_model_cannot_take(float_model, inputs, shown):
    expect(DataError, lambda: fxquant.prepare(float_model, inputs, SETTER),
           ["example inputs", shown, "module 'conv' (Conv2d)"], "pass one batch the model accepts")


@pytest.mark.parametrize("inputs", [None, "images.png", b"\x00"])
def test_example_inputs_that_are_no_batch(float_model, inputs):
    expect(DataError, lambda: fxquant.prepare(float_model, inputs, SETTER),
           ["batch", type(inputs).__name__], "a tensor, a tuple")


def test_keyword_inputs_with_a_wrong_name(float_model):
    expect(DataError, lambda: fxquant.prepare(float_model, {"image": example()}, SETTER),
           ["Net.forward(x", "missing a required argument: 'x'"],
           "pass keyword inputs by the names")


@pytest.mark.parametrize(("setter", "named"), [
    ("default", "'default'"),                   # a preset's name instead of the preset
    (5, "5"),
    (None, "None"),
    ((SETTER, 3.5), "3.5"),                     # junk inside a tuple of setters
    (fxquant.QConfig, "QConfig"),               # the class, not an instance
])
def test_setters_that_are_not_setters(float_model, setter, named):
    expect(ConfigError, lambda: fxquant.prepare(float_model, example(), setter),
           ["qconfig_setter", named], r"a qconfig setter is a QConfig")


def test_a_setter_returning_garbage_is_named_with_the_op(float_model):
    def setter(op, ctx):
        return "int8"

    expect(ConfigError, lambda: fxquant.prepare(float_model, example(), setter),
           ["returned 'int8'", "op 'x'"], "returns a QConfig or None")


@pytest.mark.parametrize(("qconfigs", "named"), [
    ({"conv": "int8"}, "ModuleNameQconfigSetter['conv']"),
    ({5: fxquant.get_qconfig()}, "keys are op names"),
])
def test_name_setters_with_bad_entries(float_model, qconfigs, named):
    expect(ConfigError, lambda: fxquant.prepare(float_model, example(), qconfigs),
           [named], r"QConfig|str")


def test_a_name_setter_key_that_matches_no_op(float_model):
    setter = fxquant.ModuleNameQconfigSetter({"convv": fxquant.get_qconfig()})
    expect(UnknownOpNameError, lambda: fxquant.prepare(float_model, example(), (setter, SETTER)),
           ["'convv'", "'conv'"], r"fxquant\.summary")


def test_unknown_backend(float_model):
    expect(ConfigError, lambda: fxquant.prepare(float_model, example(), backend="tpu"),
           ["'tpu'", "x86"], "choose one of")


@pytest.mark.parametrize("arg", ["leaf_modules", "skip_modules"])
def test_module_paths_that_do_not_exist(float_model, arg):
    expect(UnknownOpNameError,
           lambda: fxquant.prepare(float_model, example(), SETTER, **{arg: ["conv1"]}),
           [arg, "'conv1'"], "did you mean 'conv'")


def test_module_paths_given_as_one_string(float_model):
    # "conv" would silently become {"c", "o", "n", "v"}
    expect(ConfigError, lambda: fxquant.prepare(float_model, example(), skip_modules="conv"),
           ["skip_modules", "str"], r"a list of module paths \(e\.g\. \['conv'\]\)")


def test_weight_ch_axis_outside_the_weight(float_model):
    qc = fxquant.get_qconfig()
    bad = fxquant.QConfig(output=qc.output, weight=fxquant.FakeQuantize.with_args(ch_axis=5))
    expect(ConfigError, lambda: fxquant.prepare(float_model, example(), {"conv": bad}),
           ["op 'conv'", "ch_axis=5", "4-d weight"], "give ch_axis=0")


def test_eager_capture_path_checks_inputs_too():
    class Branchy(nn.Module):  # untraceable forward: prepare falls back to eager capture
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else self.fc(-x)

    expect(DataError, lambda: fxquant.prepare(Branchy().eval(), torch.randn(2, 7), SETTER),
           ["Branchy", "tensor[2, 7] float32", "module 'fc' (Linear)"], "pass one batch")
