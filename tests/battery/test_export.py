"""Bad arguments to ``export_onnx`` and ``convert``: refused before any export work, naming the
argument / op / quantizer, with no file written."""

from __future__ import annotations

import sys

import pytest
import torch

import fxquant
from fxquant import ConfigError, DataError, ExportError, MissingDependencyError

from .helpers import example, expect

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(("inputs", "shown"), [
    (torch.randn(2, 5, 8, 8), "tensor[2, 5, 8, 8] float32"),
    (torch.randn(2, 3, 8, 8).double(), "float64"),
    ((torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)), "tensor[2, 3, 8, 8] float32, tensor"),
])
def test_example_inputs_the_model_cannot_take(qmodel, tmp_path, inputs, shown):
    expect(DataError, lambda: fxquant.export_onnx(qmodel, inputs, tmp_path / "m.onnx"),
           ["export_onnx", shown], "pass one batch the model accepts", folder=tmp_path)


def test_keep_float_names(qmodel, tmp_path):
    expect(ConfigError, lambda: fxquant.export_onnx(qmodel, example(), tmp_path / "m.onnx",
                                                    keep_float="conv"),
           ["keep_float", "str"], r"a list of op names \(e\.g\. \['conv'\]\)", folder=tmp_path)
    expect(ExportError, lambda: fxquant.export_onnx(qmodel, example(), tmp_path / "m.onnx",
                                                    keep_float=["convv"]),
           ["keep_float", "'convv'"], "did you mean 'conv'", folder=tmp_path)


def test_uncalibrated_and_unprepared(float_model, tmp_path):
    fresh = fxquant.prepare(float_model, example(), fxquant.default_calibration_qconfig_setter)
    expect(ExportError, lambda: fxquant.export_onnx(fresh, example(), tmp_path / "m.onnx"),
           ["no scale yet", "'x.output_fake_quant'"], r"fxquant\.calibrate",
           folder=tmp_path)
    expect(ExportError, lambda: fxquant.export_onnx(float_model, example(), tmp_path / "m.onnx"),
           ["export_onnx", "Net is not a model returned by fxquant.prepare()"],
           "prepare it first", folder=tmp_path)


def test_opset(qmodel, tmp_path):
    expect(ExportError, lambda: fxquant.export_onnx(qmodel, example(), tmp_path / "m.onnx",
                                                    opset=5),
           ["opset=5"], "13", folder=tmp_path)


def test_missing_onnx(qmodel, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    expect(MissingDependencyError,
           lambda: fxquant.export_onnx(qmodel, example(), tmp_path / "m.onnx"),
           ["export_onnx", "'onnx'"], r"pip install 'fxquant\[onnx\]'", folder=tmp_path)


def test_convert_arguments(qmodel, float_model):
    expect(ConfigError, lambda: fxquant.convert(qmodel, backend="tensorrt"),
           ["'tensorrt'", "no torch quantized engine"], "choose one of")
    expect(ConfigError, lambda: fxquant.convert(qmodel, backend="cuda"),
           ["'cuda'"], "choose one of")
    fresh = fxquant.prepare(float_model, example(), fxquant.default_calibration_qconfig_setter,
                            backend="x86")
    expect(fxquant.ConvertError, lambda: fxquant.convert(fresh),
           ["have no scale yet", "(x.output_fake_quant)"], r"run fxquant\.calibrate")
