"""``verify`` against files that are not the model's, broken files and wrong batches: an
error before anything runs, naming the file."""

from __future__ import annotations

import os

import pytest
import torch

import fxquant
from fxquant import ConfigError, DataError, VerifyError

from .helpers import example, expect

pytestmark = pytest.mark.timeout(120)


def test_a_file_of_the_same_architecture_with_other_shapes(qmodel, files):
    expect(VerifyError, lambda: fxquant.verify(qmodel, files / "wide.onnx", example()),
           ["wide.onnx", "was not exported from this Net", "'conv.weight_quantized'",
            "[4, 3, 3, 3]"], r"export it again with fxquant\.export_onnx")


def test_a_file_of_another_model(qmodel, files):
    expect(VerifyError, lambda: fxquant.verify(qmodel, files / "linear.onnx", example()),
           ["linear.onnx", "was not exported from this Net", "'0.weight'"],
           "or pass the model it came from")


@pytest.mark.parametrize(("content", "named"), [
    (lambda: os.urandom(1000), "is not an ONNX model"),
    (lambda: b"", "is not an ONNX model"),
    (lambda: (b"\x08\x07" * 50), "is not an ONNX model"),  # a truncated protobuf
])
def test_files_that_are_not_onnx(qmodel, tmp_path, content, named):
    path = tmp_path / "model.onnx"
    path.write_bytes(content())
    err = expect(VerifyError, lambda: fxquant.verify(qmodel, path, example()),
                 ["verify", "model.onnx"], "pass the .onnx file fxquant.export_onnx wrote|not an")
    assert "DecodeError" in str(err) or named in str(err)


def test_missing_file_and_folder(qmodel, tmp_path):
    expect(VerifyError, lambda: fxquant.verify(qmodel, tmp_path / "nope.onnx", example()),
           ["nope.onnx", "No such file"], "check the path")
    expect(VerifyError, lambda: fxquant.verify(qmodel, tmp_path, example()),
           [tmp_path.name], "check the path")


@pytest.mark.parametrize(("batch", "shown"), [
    (torch.randn(2, 5, 8, 8), "the batch gives 2x5x8x8 float32"),
    (torch.randn(2, 3, 8, 8).double(), "float64"),
    (torch.randn(3, 8, 8), "the batch gives 3x8x8"),
    ((example(), example()), "takes 1 input(s)"),
])
def test_batches_the_file_cannot_take(qmodel, files, batch, shown):
    expect(DataError, lambda: fxquant.verify(qmodel, files / "net.onnx", batch),
           ["net.onnx", shown], "like the example inputs|takes 1 input")


def test_verify_arguments(qmodel, files, float_model):
    expect(ConfigError, lambda: fxquant.verify(qmodel, files / "net.onnx", example(),
                                               runtime="tflite"),
           ["runtime", "'tflite'"], "must be one of")
    expect(ConfigError, lambda: fxquant.verify(qmodel, files / "net.onnx", example(),
                                               reference="bitexact"),
           ["reference", "'bitexact'"], "must be one of")
    expect(ConfigError, lambda: fxquant.verify(float_model, files / "net.onnx", example()),
           ["Net", "not a model returned by fxquant.prepare()"], "prepare it first")


def test_the_right_file_still_verifies(qmodel, files):
    assert fxquant.verify(qmodel, files / "net.onnx", example()).ok()
