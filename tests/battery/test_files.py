"""Where fxquant writes: folders, missing folders, read-only files, paths under a file.  Each
refused before any work, naming the path, with nothing written (or half-written)."""

from __future__ import annotations

import os
import stat

import pytest

import fxquant
from fxquant import ConfigError, EncodingsError, ExportError

from .helpers import example, expect

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def out(tmp_path):
    """A folder with an existing read-only file ``ro.onnx`` and a plain file ``file``."""
    (tmp_path / "ro.onnx").write_bytes(b"keep me")
    os.chmod(tmp_path / "ro.onnx", stat.S_IRUSR | stat.S_IRGRP)
    (tmp_path / "file").write_text("a file, not a folder")
    yield tmp_path
    os.chmod(tmp_path / "ro.onnx", stat.S_IRUSR | stat.S_IWUSR)


def _bad_paths(folder):
    return [
        (folder, "is a folder"),
        (folder / "missing" / "m.onnx", "does not exist"),
        (folder / "file" / "m.onnx", "is a file, not a folder"),
        (folder / "ro.onnx", "exists and is read-only"),
    ]


def test_export_onnx(qmodel, out):
    for path, why in _bad_paths(out):
        expect(ExportError, lambda path=path: fxquant.export_onnx(qmodel, example(), path),
               [os.path.basename(path), why], "ONNX file|writable", folder=out)


def test_export_encodings(qmodel, out):
    for path, why in _bad_paths(out):
        expect(EncodingsError, lambda path=path: fxquant.export_encodings(qmodel, path),
               [os.path.basename(path), why], "choose a writable file path", folder=out)


def test_report(qmodel, float_model, out):
    table = fxquant.compare(float_model, qmodel, example())
    for path, why in _bad_paths(out):
        expect(ConfigError, lambda path=path: fxquant.report(path, compare=table),
               ["report: path", why], "choose a writable file path", folder=out)
    expect(ConfigError, lambda: fxquant.report(out / "r.html"),
           ["report", "compare=, sensitivity=, search="], "give at least one", folder=out)


def test_export_quantsim_config(qmodel, out):
    for path, why in _bad_paths(out):
        expect(ExportError, lambda path=path: fxquant.export_quantsim_config(qmodel, path),
               ["export_quantsim_config", os.path.basename(path), why],
               "choose a writable file path", folder=out)
    (out / "junk.onnx").write_bytes(os.urandom(300))
    expect(EncodingsError, lambda: fxquant.export_quantsim_config(qmodel, out / "q.json",
                                                                  onnx_path=out / "junk.onnx"),
           ["junk.onnx", "cannot be read as an ONNX model"], "pass the file export_onnx wrote",
           folder=out)


def test_sensitivity_tables_that_are_not_tables(tmp_path):
    junk = tmp_path / "table.pt"
    junk.write_bytes(os.urandom(200))
    setter = fxquant.sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter
    expect(fxquant.CheckpointError, lambda: setter(junk, ratio=0.1),
           ["table.pt", "is not a sensitivity table saved by fxquant"],
           "SensitivityTable.save wrote")
    expect(fxquant.CheckpointError, lambda: setter(tmp_path / "nope.pt", ratio=0.1),
           ["nope.pt", "No such file"], "check the path")
    expect(ConfigError, lambda: setter([["conv", "weight"]], ratio=5),
           ["ratio", "5"], r"in \[0, 1\]")


def test_convert_keep_float_is_a_flag(qmodel):
    expect(ConfigError, lambda: fxquant.convert(qmodel, keep_float=["conv"]),
           ["keep_float", "['conv']"], r"prepare them with fxquant\.FLOAT")
