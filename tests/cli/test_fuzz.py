"""Fuzzed command lines: whatever the arguments, an exit code in {0, 1, 2} and never a
traceback (in-process ``main(argv)``; hypothesis with a fixed seed and bounded examples).

The vocabulary mixes every option of the commands with good and bad values; model specs in it
never resolve to a model, so no example starts a long quantization.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from fxquant.cli.main import main

from .models import write_input_list, write_raw_folder

COMMANDS = ["quantize", "inspect", "run", "compare", "sensitivity", "report"]
OPTIONS = [
    "--input-list", "--calib-dir", "--backend", "--out", "--input-shape", "--batches", "--int16",
    "--adaround", "--adaround-iterations", "--qat-epochs", "--train-spec", "--lr", "--runtime",
    "--max-steps", "--no-verify", "--encodings-version", "--seed", "--quiet", "--output-dir",
    "--threads", "--grid", "--min-sqnr", "--channels", "--json", "--metric", "--mode",
    "--embed", "--traceback", "--", "-",
]
VALUES = [
    "0", "-1", "1", "2", "abc", "1e9", "nan", "inf", "-inf", "0.5", "1,3,4,4", "1,0", "x:1,2",
    "::", "", " ", "a" * 300, "list.txt", "nope.txt", "tiny.onnx", "junk.onnx", "enc.json",
    "res", "a_file", "a_file/x", "nowhere", "out", "generic", "onnxruntime", "openvino",
    "nomod:build", "bad.py:nothere", "nope.py:f", "x.pt2", ":", "m:", ":f", "conv1,fc",
    "in\x00valid", "../..", "/", "%out", "x:=y",
]


@pytest.fixture
def ws(tmp_path_factory, monkeypatch):
    """Files the vocabulary names (a tiny ONNX model, encodings, raw files, result folders)."""
    import onnx
    from onnx import TensorProto, helper

    root = tmp_path_factory.mktemp("fuzz")
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["batch", 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["batch", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
              str(root / "tiny.onnx"))
    (root / "junk.onnx").write_bytes(b"\x08\x01garbage")
    (root / "enc.json").write_text(json.dumps({"version": "0.6.1", "activation_encodings": {
        "y": [{"bitwidth": 8, "scale": 0.1, "offset": -128, "is_symmetric": "True"}]},
        "param_encodings": {}}))
    (root / "bad.py").write_text("def f():\n    return 1\n")
    (root / "a_file").write_text("x")
    files = write_raw_folder(root / "raw", (1, 4), 2)
    write_input_list(root / "list.txt", [f"raw/{f.name}" for f in files])
    (root / "res" / "Result_0").mkdir(parents=True)
    np.ones(4, "<f4").tofile(root / "res" / "Result_0" / "y.raw")
    monkeypatch.chdir(root)
    return root


# per command: what its positionals are drawn from, and its options with good and bad values
SPECS = ["nomod:build", "bad.py:nothere", "bad.py:f", "nope.py:f", "x.pt2", ":", "m:", ":f",
         "a-b:c", "bad:f", "in\x00valid:f"]
PATHS = ["tiny.onnx", "junk.onnx", "enc.json", "nope.onnx", "a_file", "raw", "list.txt",
         "in\x00valid", "/", ""]
OUTS = ["out", "a_file", "a_file/x", "/proc/x", "res", "in\x00valid", "", "out/deeper/still"]
NUMBERS = ["0", "1", "2", "-1", "abc", "1e9", "nan", "inf", "0.5", "", "99999999999999999999"]
SHAPES = ["1,4", "2,4", "1,3", "4", "x:1,4", "y:1,4", "1,0", "abc", "1,4,", ":1,4", "x:", "1,4"]
LISTS = ["list.txt", "nope.txt", "a_file", "raw", "bad.py", "enc.json", ""]
VALUES_OF = {
    "--input-list": LISTS, "--calib-dir": ["raw", "nope", "a_file", "res"],
    "--backend": ["generic", "onnxruntime", "tpu", ""], "--out": OUTS, "--output-dir": OUTS,
    "--input-shape": SHAPES, "--batches": NUMBERS, "--int16": ["0.1", "1", "2", "0", "fc", ","],
    "--adaround-iterations": NUMBERS, "--qat-epochs": NUMBERS, "--train-spec": SPECS,
    "--lr": NUMBERS, "--runtime": ["onnxruntime", "openvino", "tvm"], "--max-steps": NUMBERS,
    "--encodings-version": ["0.6.1", "1.0.0", "2"], "--seed": NUMBERS, "--threads": NUMBERS,
    "--grid": PATHS, "--min-sqnr": NUMBERS, "--metric": ["L1", "x"], "--mode": ["one_on", "x"],
}
FLAGS = ["--quiet", "--json", "--channels", "--adaround", "--no-verify", "--embed", "--help"]
DIRS = ["res", "raw", "nope", "a_file"]
POSITIONALS = {"quantize": [SPECS], "sensitivity": [SPECS], "report": [SPECS],
               "inspect": [PATHS], "run": [PATHS], "compare": [DIRS, DIRS]}


@st.composite
def command_lines(draw):
    """A command with drawn positionals and options (values good, bad or random text); now
    and then raw tokens instead, to exercise argparse itself."""
    command = draw(st.sampled_from(COMMANDS))
    if draw(st.integers(0, 9)) == 0:
        tokens = st.one_of(st.sampled_from(OPTIONS), st.sampled_from(VALUES), st.text(max_size=8))
        return [command, *draw(st.lists(tokens, max_size=8))]
    argv = [command] + [draw(st.sampled_from(pool)) for pool in POSITIONALS[command]]
    for _ in range(draw(st.integers(0, 5))):
        option = draw(st.sampled_from([*VALUES_OF, *FLAGS]))
        if option in FLAGS:
            argv.append(option)
        else:
            value = draw(st.one_of(st.sampled_from(VALUES_OF[option]), st.text(max_size=6)))
            argv += [option, value]
    return argv


@seed(20261122)
@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines())
def test_any_command_line_exits_0_1_2_without_traceback(ws, capsys, argv):
    code = main(argv)
    _, err = capsys.readouterr()
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fxquant"), err
        assert len(lines[0]) < 1000
