"""The SNPE-style flow in real processes: raw files -> quantize -> inspect -> run -> compare.

Each step is the installed ``fxquant`` command run with :mod:`subprocess` in a fresh folder,
for a CNN (``file.py:function`` spec, input list) and a transformer (``module:function``
resolved from the current folder, token ids as float32 raw files in a calibration folder).
The outputs of ``fxquant run`` are checked bit for bit against ONNX Runtime called directly,
and ``compare``'s numbers against NumPy on the same files.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort

from .models import CNN_SOURCE, TRANSFORMER_SOURCE, write_input_list, write_raw_folder, write_spec

_SCRIPT = pathlib.Path(sys.executable).with_name("fxquant")
FXQUANT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "fxquant"]


def fxquant(cwd: pathlib.Path, *args: str, code: int = 0) -> str:
    """Run ``fxquant ARGS`` in ``cwd``; check the exit code and that no traceback shows."""
    done = subprocess.run([*FXQUANT, *args], cwd=cwd, capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def ort_outputs(model: pathlib.Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _raw(path: pathlib.Path) -> np.ndarray:
    return np.fromfile(path, dtype="<f4")


def _table_row(text: str, name: str) -> list[str]:
    # the last match: a table whose first column is named "output" has a header line too
    line = [row for row in text.splitlines() if row.startswith(name + " ")][-1]
    return re.sub(r"^(\S+) \(= [^)]*\)", r"\1", line).split()  # "fc (= output)": an alias


def test_cnn_from_raw_files_to_verified_int8(tmp_path):
    write_spec(tmp_path, "cnn", CNN_SOURCE)
    files = write_raw_folder(tmp_path / "calib", (1, 3, 12, 12), 4)
    write_input_list(tmp_path / "calib.txt", [f"calib/{f.name}" for f in files],
                     header="# calibration images, one per line\n")
    out = fxquant(tmp_path, "quantize", "cnn.py:build", "--input-list", "calib.txt",
                  "--backend", "onnxruntime", "--out", "int8", "--quiet")
    int8 = tmp_path / "int8"
    assert {"model.onnx", "model_float.onnx", "model.encodings", "summary.txt", "report.html",
            "verify.txt", "quantize.json"} <= set(os.listdir(int8))
    assert "-> OK" in out
    info = json.loads((int8 / "quantize.json").read_text())
    assert info["verify"]["ok"] and info["calibration_calls"] == 4
    assert all(o["max_steps"] == 0 for o in info["verify"]["outputs"].values())
    onnx.checker.check_model(str(int8 / "model.onnx"))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no staging left

    # inspect: every activation of the encodings file, with its scale, in the ONNX listing
    listing = fxquant(tmp_path, "inspect", "int8/model.onnx")
    encodings = json.loads((int8 / "model.encodings").read_text())
    assert encodings["activation_encodings"]
    for name, (enc,) in encodings["activation_encodings"].items():
        row = _table_row(listing, name)
        assert row[1] == "activation" and row[2] == "uint8" and row[3] == "8"
        assert math.isclose(float(row[6]), enc["scale"], rel_tol=1e-5)
        assert int(row[7]) == -enc["offset"]  # AIMET offset = -zero point (unsigned grid)

    # run: SNPE-style named entries, a comment and a %output header
    outputs = [o.name for o in onnx.load(str(int8 / "model.onnx")).graph.output]
    write_input_list(tmp_path / "run.txt", [f"image:=calib/{f.name}" for f in files],
                     header=f"%{' '.join(outputs)}\n# same images\n")
    fxquant(tmp_path, "run", "int8/model.onnx", "--input-list", "run.txt",
            "--output-dir", "res_int8", "--quiet")
    write_input_list(tmp_path / "run_float.txt", [f"calib/{f.name}" for f in files])
    fxquant(tmp_path, "run", "int8/model_float.onnx", "--input-list", "run_float.txt",
            "--output-dir", "res_float", "--quiet")
    (out_name,) = outputs
    for i, f in enumerate(files):
        feeds = {"image": _raw(f).reshape(1, 3, 12, 12)}
        (expected,) = ort_outputs(int8 / "model.onnx", feeds)
        got = _raw(tmp_path / "res_int8" / f"Result_{i}" / f"{out_name}.raw")
        np.testing.assert_array_equal(got, expected.ravel())

    # compare float vs int8: SQNR and steps as NumPy computes them from the same files
    report = fxquant(tmp_path, "compare", "res_float", "res_int8", "--grid", "int8/model.onnx",
                     "--min-sqnr", "20")
    ref = np.concatenate([_raw(tmp_path / "res_float" / f"Result_{i}" /
                               f"{out_name.removesuffix('_dequantized')}.raw")
                          for i in range(4)]).astype(np.float64)
    q = np.concatenate([_raw(tmp_path / "res_int8" / f"Result_{i}" / f"{out_name}.raw")
                        for i in range(4)]).astype(np.float64)
    sqnr = 10 * math.log10((ref ** 2).sum() / ((q - ref) ** 2).sum())
    carrier = re.search(rf"^(\S+) \(= {out_name}\)", listing, re.M)  # the tensor it aliases
    step = encodings["activation_encodings"][carrier.group(1) if carrier else out_name][0]["scale"]
    row = _table_row(report, out_name)
    assert math.isclose(float(row[5]), sqnr, rel_tol=1e-3)
    assert int(row[7]) == int(np.abs(np.rint((q - ref) / step)).max())
    assert "checks passed" in report


def test_transformer_module_spec_from_the_current_folder(tmp_path):
    write_spec(tmp_path, "tiny_tfm", TRANSFORMER_SOURCE)
    write_raw_folder(tmp_path / "tokens", (1, 8), 4, tokens=50)
    out = fxquant(tmp_path, "quantize", "tiny_tfm:build", "--calib-dir", "tokens",
                  "--backend", "openvino", "--runtime", "openvino", "--out", "int8", "--quiet")
    assert "verify (openvino)" in out and "-> OK" in out
    listing = fxquant(tmp_path, "inspect", "int8/model.encodings", "--json")
    rows = {r["name"]: r for r in json.loads(listing)}
    assert rows["head"]["kind"] == "activation" and rows["head.weight"]["kind"] == "param"
    assert len(rows["head.weight"]["scales"]) == 5  # per channel

    files = sorted((tmp_path / "tokens").iterdir())
    write_input_list(tmp_path / "run.txt", [f"tokens/{f.name}" for f in files])
    fxquant(tmp_path, "run", "int8/model.onnx", "--input-list", "run.txt", "--output-dir",
            "ort", "--quiet")
    fxquant(tmp_path, "run", "int8/model.onnx", "--input-list", "run.txt", "--output-dir",
            "ov", "--runtime", "openvino", "--quiet")
    feeds = {"tokens": _raw(files[0]).reshape(1, 8).astype(np.int64)}
    (expected,) = ort_outputs(tmp_path / "int8" / "model.onnx", feeds)
    (got,) = (tmp_path / "ort" / "Result_0").glob("*.raw")
    np.testing.assert_array_equal(_raw(got), expected.ravel())
    # the graph output "output" aliases the last quantized tensor: the ONNX file knows that
    report = fxquant(tmp_path, "compare", "ort", "ov", "--grid", "int8/model.onnx",
                     "--max-steps", "2")
    assert re.search(r"output\s+4\s+20\s", report), report
    assert "checks passed" in report


def test_a_mistake_in_a_real_process_is_one_line(tmp_path):
    args = ["quantize", "nomodule:build", "--calib-dir", ".", "--backend", "generic", "--out",
            "o"]
    done = subprocess.run([*FXQUANT, *args], cwd=tmp_path, capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "no module 'nomodule' in the current folder" in lines[0]
    assert os.listdir(tmp_path) == []
