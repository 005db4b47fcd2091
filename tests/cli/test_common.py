"""Output folders that appear complete or not at all; one-line messages; argument types."""

from __future__ import annotations

import argparse
import os

import pytest

from fxquant.cli.common import StagedOutput, one_line, positive_float, positive_int
from fxquant.errors import ConfigError


def _hidden(folder):
    return [p for p in os.listdir(folder) if p.startswith(".")]


def test_new_folder_appears_at_commit(tmp_path):
    with StagedOutput(str(tmp_path / "a" / "b"), "--out") as out:
        with open(out.file("Result_0", "y.raw"), "wb") as f:
            f.write(b"1234")
        assert not (tmp_path / "a" / "b").exists()  # nothing visible before commit
        assert out.final("Result_0", "y.raw") == str(tmp_path / "a" / "b" / "Result_0" / "y.raw")
        out.commit()
    assert (tmp_path / "a" / "b" / "Result_0" / "y.raw").read_bytes() == b"1234"
    assert not _hidden(tmp_path) and not _hidden(tmp_path / "a")


def test_existing_folder_keeps_other_files(tmp_path):
    (tmp_path / "o" / "Result_0").mkdir(parents=True)
    (tmp_path / "o" / "mine.txt").write_text("keep")
    (tmp_path / "o" / "Result_0" / "old.raw").write_text("old")
    (tmp_path / "o" / "model.onnx").write_text("previous")
    with StagedOutput(str(tmp_path / "o"), "--out") as out:
        for name in ("model.onnx", "Result_0/new.raw"):
            with open(out.file(*name.split("/")), "w") as f:
                f.write("new")
        out.commit()
    assert (tmp_path / "o" / "mine.txt").read_text() == "keep"
    assert (tmp_path / "o" / "model.onnx").read_text() == "new"
    assert sorted(os.listdir(tmp_path / "o" / "Result_0")) == ["new.raw", "old.raw"]
    assert not _hidden(tmp_path) and not _hidden(tmp_path / "o")


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), StagedOutput(str(tmp_path / "o"), "--out") as out:
        with open(out.file("model.onnx"), "w") as f:
            f.write("half")
        raise RuntimeError("the work failed")
    assert os.listdir(tmp_path) == []


def test_clash_of_file_and_folder_is_refused_before_moving(tmp_path):
    (tmp_path / "o" / "model.onnx").mkdir(parents=True)
    with StagedOutput(str(tmp_path / "o"), "--out") as out:
        for name in ("a.txt", "model.onnx"):
            with open(out.file(name), "w") as f:
                f.write("x")
        with pytest.raises(ConfigError, match=r"cannot replace .*model\.onnx"):
            out.commit()
    assert os.listdir(tmp_path / "o") == ["model.onnx"] and not _hidden(tmp_path)


@pytest.mark.parametrize("where, message", [
    ("file", "is a file; give a folder"),
    ("file/sub", "is a file, so no folder can be created below it"),
    ("\0bad", "is not writable"),
])
def test_unwritable_is_a_config_error(tmp_path, where, message):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=message):
        StagedOutput(str(tmp_path / where), "--out")
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_one_line_and_number_types():
    assert one_line("a\n  b\r\nc\x1b[0m\t") == "a; b; c\\x1b[0m"
    assert positive_int("3") == 3 and positive_float("0.5") == 0.5
    for bad in ("0", "-2", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(bad)
    for bad in ("0", "nan", "inf", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float(bad)
