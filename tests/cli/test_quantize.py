"""``fxquant quantize`` options, in-process: int16, AdaRound, QAT, exported programs, data from
the spec, verify failing (exit code 1)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import pytest
import torch

from fxquant.cli.inspect_cmd import read_quantized
from fxquant.cli.main import build_parser, main
from fxquant.export import VerifyReport, export_encodings

from .models import (
    CNN_SOURCE,
    TRANSFORMER_SOURCE,
    write_input_list,
    write_raw_folder,
    write_spec,
)

TRAIN_SOURCE = textwrap.dedent('''
    import torch

    def task():
        torch.manual_seed(1)
        batches = [(torch.randn(2, 3, 12, 12), torch.tensor([0, 3])) for _ in range(2)]

        def loss_fn(model, batch):
            images, labels = batch
            return torch.nn.functional.cross_entropy(model(images), labels)

        return batches, loss_fn
''')

WITH_DATA = CNN_SOURCE + textwrap.dedent('''
    def with_data():
        model, example = build()
        return model, example, [torch.randn(2, 3, 12, 12) for _ in range(3)]
''')


@pytest.fixture
def ws(tmp_path, monkeypatch):
    write_spec(tmp_path, "cnn", WITH_DATA)
    write_spec(tmp_path, "train", TRAIN_SOURCE)
    files = write_raw_folder(tmp_path / "calib", (1, 3, 12, 12), 3)
    write_input_list(tmp_path / "list.txt", [f"calib/{f.name}" for f in files])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _info(folder) -> dict:
    return json.loads((folder / "quantize.json").read_text())


def test_defaults_come_from_the_library():
    args = build_parser().parse_args(["quantize", "m:f", "--backend", "generic", "--out", "o"])
    ok = VerifyReport.ok.__defaults__
    assert (args.max_steps, args.min_identical) == ok
    assert args.encodings_version == export_encodings.__defaults__[-1]
    assert args.runtime == "onnxruntime" and args.adaround_iterations is None


def test_int16_ops_adaround_qat_in_one_run(ws, capsys):
    argv = ["quantize", "cnn.py:build", "--input-list", "list.txt", "--backend", "onnxruntime",
            "--out", "q", "--int16", "conv2,fc", "--adaround", "--adaround-iterations", "3",
            "--qat-epochs", "1", "--encodings-version", "1.0.0", "--quiet"]
    assert main(argv) == 0
    info = _info(ws / "q")
    assert info["int16_ops"] == ["conv2", "fc"] and info["adaround_iterations"] == 3
    assert len(info["qat"]["loss"]) == 1 and np.isfinite(info["qat"]["loss"][0])
    assert "distillation" in info["qat"]["data"] and info["verify"]["ok"]
    rows = {r.name: r for r in read_quantized(str(ws / "q" / "model.onnx"))}
    # conv2's output quantizer sits after its ReLU (conv + relu fuse)
    assert rows["fc"].dtype == "int16" and rows["_generated_relu_1"].dtype == "int16"
    assert rows["_generated_relu_0"].bits == 8 and rows["fc.weight"].bits == 8
    assert onnx.load(str(ws / "q" / "model.onnx")).opset_import[0].version == 21
    enc = json.loads((ws / "q" / "model.encodings").read_text())
    assert enc["version"] == "1.0.0"
    assert {e["name"]: e["bw"] for e in enc["activation_encodings"]}["fc"] == 16
    assert "verify (onnxruntime)" in capsys.readouterr().out


def test_int16_ratio_and_a_task_loss(ws):
    argv = ["quantize", "cnn.py:build", "--calib-dir", "calib", "--backend", "generic",
            "--out", "q", "--int16", "0.5", "--qat-epochs", "1", "--train-spec",
            "train.py:task", "--no-verify", "--quiet"]
    assert main(argv) == 0
    info = _info(ws / "q")
    assert info["int16_ops"] and "verify" not in info
    assert "loss_fn" in info["qat"]["data"]
    assert not (ws / "q" / "verify.txt").exists()
    summary = (ws / "q" / "summary.txt").read_text()
    assert all(any(op in line and "qint16" in line for line in summary.splitlines())
               for op in info["int16_ops"])
    assert "sensitivity" in (ws / "q" / "report.html").read_text().lower()


def test_data_returned_by_the_spec(ws):
    assert main(["quantize", "cnn:with_data", "--backend", "x86", "--out", "q", "--quiet"]) == 0
    info = _info(ws / "q")
    assert info["calibration_calls"] == 3 and "the data of cnn:with_data" in info["calibration"]
    assert info["verify"]["ok"]


def test_exported_program_spec(tmp_path, monkeypatch):
    write_spec(tmp_path, "tiny_tfm", TRANSFORMER_SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import tiny_tfm

    model, example = tiny_tfm.build()
    torch.export.save(torch.export.export(model, (example,)), str(tmp_path / "tfm.pt2"))
    write_raw_folder(tmp_path / "tok", (1, 8), 3, tokens=50)
    argv = ["quantize", "tfm.pt2", "--calib-dir", "tok", "--backend", "onnxruntime", "--out",
            "q", "--quiet"]
    assert main(argv) == 0
    info = _info(tmp_path / "q")
    assert info["verify"]["ok"] and info["inputs"] == {"tokens": "1x8"}
    summary = (tmp_path / "q" / "summary.txt").read_text()
    # the only float ops are those the profile keeps float (ONNX Runtime's softmax input)
    left = summary.split("op(s) left in float", 1)[1].split("capture:", 1)[0].strip()
    assert all("(float_input_ops)" in line for line in left.splitlines()), left
    # the program runs only its exported shapes: a batch of 2 is refused up front
    write_raw_folder(tmp_path / "tok2", (2, 8), 1, tokens=50)
    argv[3] = "tok2"
    assert main(argv) == 2


def test_verify_failure_is_exit_code_1_and_keeps_the_files(tmp_path, monkeypatch, capsys):
    """A transformer for the generic profile at batch 64: ONNX Runtime's float softmax and
    QLinearSoftmax leave outputs one step from the simulation, so --max-steps 0 fails."""
    write_spec(tmp_path, "tiny_tfm", TRANSFORMER_SOURCE)
    write_raw_folder(tmp_path / "tok", (64, 8), 1, tokens=50)
    monkeypatch.chdir(tmp_path)
    argv = ["quantize", "tiny_tfm:build", "--calib-dir", "tok", "--backend", "generic", "--out",
            "q", "--max-steps", "0", "--min-identical", "0", "--quiet"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "FAILED (needs <= 0 step(s)" in out
    info = _info(tmp_path / "q")
    assert not info["verify"]["ok"]
    assert max(o["max_steps"] for o in info["verify"]["outputs"].values()) >= 1
    assert (tmp_path / "q" / "model.onnx").exists() and (tmp_path / "q" / "verify.txt").exists()
