"""Every class of user mistake: exit code 2, one clear line on stderr, no traceback, nothing
written.  In-process (``main(argv)``); ``test_workflow`` repeats two in a real process."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

from fxquant.cli.main import main

from .models import CNN_SOURCE, write_input_list, write_raw_folder, write_spec

BAD_SPECS = '''
import pathlib
import torch
from torch import nn

def not_a_module():
    return 42

def raises():
    raise RuntimeError("boom in the user's factory")

def wrong_example():
    return nn.Linear(2, 2), "not a tensor"

def touches():  # leaves a marker: proves the factory ran
    pathlib.Path("factory_ran").write_text("yes")
    return nn.Linear(4, 2), torch.randn(1, 4)

class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, image):  # an `if` on a tensor's value: prepares (eagerly), cannot export
        y = self.conv(image)
        if y.mean() > 0:
            return torch.relu(y)
        return y

def unexportable():
    return Branchy(), torch.randn(1, 3, 12, 12)
'''


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A folder with cnn.py, bad.py, 3 calibration raw files and input lists; cwd there."""
    write_spec(tmp_path, "cnn", CNN_SOURCE)
    write_spec(tmp_path, "bad", BAD_SPECS)
    files = write_raw_folder(tmp_path / "calib", (1, 3, 12, 12), 3)
    write_input_list(tmp_path / "list.txt", [f"calib/{f.name}" for f in files])
    (tmp_path / "short.raw").write_bytes(b"\0" * 100)
    write_input_list(tmp_path / "short.txt", ["calib/000.raw", "short.raw"])
    write_input_list(tmp_path / "two.txt", ["calib/000.raw calib/001.raw"])
    write_input_list(tmp_path / "named.txt", ["pixels:=calib/000.raw"])
    write_input_list(tmp_path / "mixed.txt", ["image:=calib/000.raw calib/001.raw"])
    write_input_list(tmp_path / "missing.txt", ["calib/000.raw", "calib/nope.raw"])
    write_input_list(tmp_path / "outs.txt", ["calib/000.raw"], header="%no_such_output\n")
    write_input_list(tmp_path / "empty.txt", ["# only a comment"])
    (tmp_path / "junk.onnx").write_bytes(os.urandom(300))
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "bogus.pt2").write_text("not an exported program")
    (tmp_path / "deep.encodings").write_text("{" + '"a":[' * 5000 + "]" * 5000 + "}")
    (tmp_path / "huge_bw.encodings").write_text(json.dumps(
        {"version": "0.6.1", "activation_encodings": {"t": [
            {"bitwidth": 10 ** 30, "scale": 1.0, "offset": 0}]}, "param_encodings": {}}))
    (tmp_path / "res_a" / "Result_0").mkdir(parents=True)
    (tmp_path / "res_b" / "Result_0").mkdir(parents=True)
    np.zeros(4, "<f4").tofile(tmp_path / "res_a" / "Result_0" / "y.raw")
    np.zeros(5, "<f4").tofile(tmp_path / "res_b" / "Result_0" / "y.raw")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _tree(root: pathlib.Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


Q = ["quantize", "cnn.py:build", "--input-list", "list.txt", "--backend", "onnxruntime",
     "--out", "int8", "--quiet"]

MISTAKES = {
    # bad shape
    "shape not numbers": ([*Q, "--input-shape", "abc"], "--input-shape: expected comma"),
    "shape with zero": ([*Q, "--input-shape", "1,0,12,12"], "must be >= 1"),
    "shape the model cannot run": ([*Q, "--input-shape", "1,432"], "cannot run on the inputs"),
    "shape unknown input name": ([*Q, "--input-shape", "x:1,3,12,12"], "has no input 'x'"),
    "two shapes, one input": ([*Q, "--input-shape", "1,3,12,12", "--input-shape", "1,3"],
                              "1 input(s)"),
    "file size not the shape": ([*Q[:3], "short.txt", *Q[4:]], "holds 100 bytes"),
    "run: wrong exact shape": (["run", "junk.onnx", "--input-list", "list.txt",
                                "--input-shape", "1,x"], "argument --input-shape: expected comma"),
    # missing files
    "missing input list": ([*Q[:3], "nope.txt", *Q[4:]], "no such file 'nope.txt'"),
    "missing raw file": ([*Q[:3], "missing.txt", *Q[4:]], "no such file 'calib/nope.raw'"),
    "missing calib dir": ([*Q[:2], "--calib-dir", "nowhere", *Q[4:]], "no such folder"),
    "empty input list": ([*Q[:3], "empty.txt", *Q[4:]], "lists no input files"),
    "missing model file": (["run", "nope.onnx", "--input-list", "list.txt"], "no such file"),
    "missing inspect file": (["inspect", "nope.onnx"], "no such file 'nope.onnx'"),
    "missing compare folder": (["compare", "res_a", "nowhere"], "DIR_B: no such folder"),
    "missing grid file": (["compare", "res_a", "res_a", "--grid", "nope.onnx"],
                          "--grid: no such file"),
    # bad numbers
    "batches 0": ([*Q, "--batches", "0"], "argument --batches: must be >= 1"),
    "batches not a number": ([*Q, "--batches", "abc"], "argument --batches: expected a whole"),
    "qat epochs negative": ([*Q, "--qat-epochs", "-1"], "argument --qat-epochs: must be >= 0"),
    "lr nan": ([*Q, "--lr", "nan"], "argument --lr: must be a finite number > 0"),
    "int16 ratio above 1": ([*Q, "--int16", "2"], "--int16 '2': a ratio must be in (0, 1]"),
    "int16 empty op name": ([*Q, "--int16", "fc,,conv1"], "--int16"),
    "max steps not a number": ([*Q, "--max-steps", "two"], "argument --max-steps"),
    "min sqnr not a number": (["compare", "res_a", "res_a", "--min-sqnr", "lots"],
                              "argument --min-sqnr"),
    "threads 0": (["run", "junk.onnx", "--input-list", "list.txt", "--threads", "0"],
                  "argument --threads"),
    "demo epochs negative": (["demo", "--epochs", "-1"], "must be >= 0"),
    # unwritable output
    "out below a file": ([*Q[:-2], "a_file/int8", "--quiet"], "is a file, so no folder"),
    "out is a file": ([*Q[:-2], "a_file", "--quiet"], "--out 'a_file' is a file"),
    "run output below a file": (["run", "junk.onnx", "--input-list", "list.txt",
                                 "--output-dir", "a_file/x"], "is a file, so no folder"),
    "sensitivity out below a file": (["sensitivity", "cnn:build", "--quiet", "--out",
                                      "a_file/t.pt"], "--out: cannot write"),
    "report out below a file": (["report", "cnn:build", "--quiet", "--out", "a_file/r.html"],
                                "--out: cannot write"),
    # model specs that do not resolve
    "module not in the folder": (["quantize", "nomod:build", *Q[2:]],
                                 "no module 'nomod' in the current folder"),
    "function not in module": (["quantize", "cnn:nothere", *Q[2:]], "has no 'nothere'"),
    "function not in file": (["quantize", "cnn.py:nothere", *Q[2:]], "has no 'nothere'"),
    "missing spec file": (["quantize", "nope.py:build", *Q[2:]], "no such file 'nope.py'"),
    "spec without a colon": (["quantize", "cnn", *Q[2:]], "must look like file.py:function"),
    "spec not a module name": (["quantize", "a-b:build", *Q[2:]], "neither a .py file"),
    "missing exported program": (["quantize", "nope.pt2", *Q[2:]], "no such file 'nope.pt2'"),
    "exported program not one": (["quantize", "bogus.pt2", *Q[2:]],
                                 "is not a program saved with torch.export.save"),
    "sensitivity spec": (["sensitivity", "nomod:build", "--quiet"], "no module 'nomod'"),
    # factories that do not give a module
    "factory returns an int": (["quantize", "bad.py:not_a_module", *Q[2:]],
                               "returned an object of type int; it must return a torch.nn"),
    "factory raises": (["quantize", "bad:raises", *Q[2:]],
                       "raised RuntimeError: boom in the user's factory"),
    "factory example not a tensor": (["quantize", "bad.py:wrong_example", *Q[2:]],
                                     "example inputs of type str"),
    "report factory returns an int": (["report", "bad:not_a_module", "--quiet"],
                                      "must return a torch.nn.Module"),
    "train spec not a function result": (
        [*Q, "--qat-epochs", "1", "--train-spec", "bad.py:not_a_module"], "--train-spec"),
    "train spec without epochs": ([*Q, "--train-spec", "bad.py:touches"],
                                  "--train-spec needs --qat-epochs"),
    # input lists and run / inspect / compare inputs
    "paths per line": ([*Q[:3], "two.txt", *Q[4:]], "2 path(s) for a model with 1 input(s)"),
    "unknown input name": ([*Q[:3], "named.txt", *Q[4:]], "has no input 'pixels'"),
    "mixed entries": ([*Q[:3], "mixed.txt", *Q[4:]], "mixes name:=path entries"),
    "unknown int16 op": ([*Q, "--int16", "conv1,nosuchop"], "--int16: "),
    "bad backend": ([*Q[:5], "tpu", *Q[6:]], "argument --backend: invalid choice: 'tpu'"),
    "not an onnx model": (["run", "junk.onnx", "--input-list", "list.txt"],
                          "cannot load 'junk.onnx'"),
    "inspect junk": (["inspect", "junk.onnx"], "neither an ONNX model nor an encodings"),
    "inspect folder": (["inspect", "calib"], "is a folder, not a file"),
    "inspect deep json": (["inspect", "deep.encodings"], "deep.encodings"),
    "inspect huge bitwidth": (["inspect", "huge_bw.encodings"], "bitwidth"),
    "compare sizes differ": (["compare", "res_a", "res_b"], "holds 4 values in DIR_A but 5"),
    "compare a file": (["compare", "calib", "a_file"], "DIR_B: 'a_file' is a file"),
    "compare no raw files": (["compare", "res_a", "."], "share no output files"),
    "unknown command": (["quantise"], "invalid choice: 'quantise'"),
    "missing required option": (["quantize", "cnn.py:build"], "required: --backend, --out"),
}


@pytest.mark.parametrize("name", list(MISTAKES))
def test_mistake_is_one_line_exit_2_nothing_written(ws, capsys, name):
    argv, needle = MISTAKES[name]
    before = _tree(ws)
    assert main(argv) == 2
    _out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err and "internal error" not in err
    assert len(lines[0]) < 700
    assert all("__pycache__" in p for p in _tree(ws) - before), _tree(ws) - before
    assert not os.path.exists("factory_ran")


def test_output_checked_before_any_work(ws, capsys):
    """The factory (the first piece of work) never runs when --out cannot be written."""
    argv = ["quantize", "bad.py:touches", "--input-list", "list.txt", "--backend", "generic",
            "--out", "a_file/out", "--quiet"]
    assert main(argv) == 2
    assert "is a file" in capsys.readouterr().err
    assert not (ws / "factory_ran").exists()


def test_failure_after_the_work_leaves_nothing(ws, capsys):
    """An export error after prepare + calibrate: no --out folder, no staging folder."""
    argv = ["quantize", "bad.py:unexportable", "--input-list", "list.txt", "--backend",
            "generic", "--out", "int8", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "data-dependent" in err and "bad.py" in err and len(err.splitlines()) == 1
    assert not (ws / "int8").exists()
    assert not [p for p in os.listdir(ws) if p.startswith(".")]


def test_run_failure_on_a_later_line_leaves_nothing(ws, capsys):
    """``run`` fails on the second line (file size): the first result is not left behind, and
    an existing output folder keeps its content."""
    assert main(Q) == 0
    capsys.readouterr()
    (ws / "results").mkdir()
    (ws / "results" / "keep.txt").write_text("mine")
    argv = ["run", "int8/model.onnx", "--input-list", "short.txt", "--output-dir", "results",
            "--quiet"]
    assert main(argv) == 2
    assert "short.raw" in capsys.readouterr().err
    assert os.listdir(ws / "results") == ["keep.txt"]
