"""``fxquant run`` (raw files through ONNX Runtime / OpenVINO, SNPE's output layout) and
``fxquant compare`` (pairing, SQNR, steps, checks)."""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, save

from fxquant.cli.main import main
from fxquant.cli.netrun import output_files


def _two_in_two_out(path):
    """y = relu(a + b) (float), z = a * b; inputs with a symbolic batch dimension."""
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y:0"]),
             helper.make_node("Mul", ["a", "b"], ["z/out"])]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "g", [vi("a", TensorProto.FLOAT, ["n", 3]), vi("b", TensorProto.FLOAT, ["n", 3])],
        [vi("y:0", TensorProto.FLOAT, ["n", 3]), vi("z/out", TensorProto.FLOAT, ["n", 3])])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


@pytest.fixture
def ws(tmp_path, monkeypatch):
    _two_in_two_out(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for i in range(3):
        for name in ("a", "b"):
            rng.standard_normal((i + 1, 3)).astype("<f4").tofile(tmp_path / "in" / f"{name}{i}.raw")
    (tmp_path / "named.txt").write_text("".join(
        f"b:=in/b{i}.raw a:=in/a{i}.raw\n" for i in range(3)))
    (tmp_path / "plain.txt").write_text("".join(f"in/a{i}.raw in/b{i}.raw\n" for i in range(3)))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _raw(path):
    return np.fromfile(path, dtype="<f4")


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_run_writes_snpe_layout_equal_to_the_runtime(ws, capsys, runtime):
    assert main(["run", "m.onnx", "--input-list", "named.txt", "--output-dir", "out",
                 "--runtime", runtime, "--quiet"]) == 0
    assert "wrote 3 result(s) x 2 output(s)" in capsys.readouterr().out
    files = json.loads((ws / "out" / "outputs.json").read_text())["outputs"]
    assert files == {"y:0": "y_0.raw", "z/out": "z_out.raw"}
    sess = ort.InferenceSession("m.onnx", providers=["CPUExecutionProvider"])
    for i in range(3):  # a batch of i + 1 rows: the free first dimension follows the file
        feeds = {n: _raw(ws / "in" / f"{n}{i}.raw").reshape(i + 1, 3) for n in ("a", "b")}
        y, z = sess.run(None, feeds)
        np.testing.assert_array_equal(_raw(ws / "out" / f"Result_{i}" / "y_0.raw"), y.ravel())
        np.testing.assert_allclose(_raw(ws / "out" / f"Result_{i}" / "z_out.raw"), z.ravel(),
                                   rtol=0, atol=0)


def test_run_selects_outputs_and_exact_shapes(ws, capsys):
    (ws / "sel.txt").write_text("%z/out\n" + (ws / "plain.txt").read_text())
    assert main(["run", "m.onnx", "--input-list", "sel.txt", "--output-dir", "o", "--quiet"]) == 0
    assert sorted(p.name for p in (ws / "o" / "Result_2").iterdir()) == ["z_out.raw"]
    # an exact --input-shape refuses the files of other batch sizes (line 2 has 2 rows)
    assert main(["run", "m.onnx", "--input-list", "plain.txt", "--output-dir", "o2",
                 "--input-shape", "a:1,3", "--input-shape", "b:1,3", "--quiet"]) == 2
    assert "needs exactly 3 values" in capsys.readouterr().err
    assert not (ws / "o2").exists()


def test_output_file_names_unique():
    assert output_files(["a:b", "a/b", "c"]) == {"a:b": "a_b.raw", "a/b": "a_b_1.raw",
                                                 "c": "c.raw"}


def _results(root, name, arrays):
    for i, a in enumerate(arrays):
        (root / f"Result_{i}").mkdir(parents=True, exist_ok=True)
        np.asarray(a, "<f4").tofile(root / f"Result_{i}" / f"{name}.raw")


def test_compare_numbers_and_checks(tmp_path, capsys):
    ref = [np.array([0.0, 1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0, 7.0])]
    out = [ref[0] + [0.0, 0.1, 0.0, 0.0], ref[1] + [0.0, 0.0, -0.25, 0.0]]
    _results(tmp_path / "a", "y", ref)
    _results(tmp_path / "b", "y_dequantized", out)  # the quantized model's output name
    enc = {"version": "0.6.1", "param_encodings": {}, "activation_encodings": {
        "y": [{"bitwidth": 8, "scale": 0.05, "offset": 0, "is_symmetric": "False"}]}}
    (tmp_path / "g.encodings").write_text(json.dumps(enc))
    code = main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--grid",
                 str(tmp_path / "g.encodings"), "--max-steps", "5", "--min-sqnr", "20"])
    text = capsys.readouterr().out
    row = next(ln for ln in text.splitlines() if ln.startswith("y_dequantized")).split()
    r, q = np.concatenate(ref), np.concatenate(out).astype(np.float32).astype(np.float64)
    sqnr = 10 * math.log10((r ** 2).sum() / ((q - r) ** 2).sum())
    assert code == 0 and row[1:3] == ["2", "8"]
    assert float(row[3]) == pytest.approx(0.25, rel=1e-4) and float(row[5]) == pytest.approx(
        sqnr, rel=1e-3)
    assert row[6] == "0.05" and row[7] == "5" and row[8] == "75.00%"  # steps: 0,2,0,0,0,0,-5,0
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--grid",
                 str(tmp_path / "g.encodings"), "--max-steps", "4"]) == 1
    assert "check failed: y_dequantized: 5 steps > 4" in capsys.readouterr().out
    _results(tmp_path / "b", "extra", [[1.0]])
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "1 file(s) only in one folder" in capsys.readouterr().out


def test_compare_pairs_outputs_by_position(tmp_path, capsys):
    _results(tmp_path / "a", "logits", [[1.0, 2.0]])
    _results(tmp_path / "b", "head_7", [[1.0, 2.5]])
    for d, name in (("a", "logits"), ("b", "head_7")):
        (tmp_path / d / "outputs.json").write_text(json.dumps({"outputs": {name: f"{name}.raw"}}))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    text = capsys.readouterr().out
    assert "by output position (outputs.json): logits <-> head_7" in text
    assert "0.5" in text.splitlines()[-1]
