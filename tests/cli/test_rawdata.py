"""Raw files, shapes, input lists and calibration folders (:mod:`fxquant.cli.rawdata`)."""

from __future__ import annotations

import numpy as np
import pytest

from fxquant.cli.rawdata import (
    InputSpec,
    calib_dir_rows,
    parse_shape,
    raw_file_name,
    read_input_list,
    read_raw,
    resolve_shapes,
    write_raw,
)
from fxquant.errors import ConfigError, DataError

F32 = np.dtype("float32")


@pytest.mark.parametrize("text, expected", [
    ("1,3,224,224", (None, (1, 3, 224, 224))),
    (" 2 , 8 ", (None, (2, 8))),
    ("tokens:1,8", ("tokens", (1, 8))),
    ("a:b:1", ("a:b", (1,))),
])
def test_parse_shape(text, expected):
    assert parse_shape(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1,,2", "1,0", "-1,2", "1.5", ":1,2", "1,2,",
                                  "1," * 9 + "1", "99999,99999,99999"])
def test_parse_shape_rejects(text):
    with pytest.raises(ValueError):
        parse_shape(text)


def test_resolve_shapes_in_order_and_by_name():
    model = [InputSpec("a", (1, 4), F32), InputSpec("b", None, F32)]
    got = resolve_shapes(model, ["b:2,3"])
    assert got[0] == model[0] and got[1] == InputSpec("b", (2, 3), F32, exact=True)
    got = resolve_shapes(model, ["1,4", "5"])
    assert [s.shape for s in got] == [(1, 4), (5,)] and all(s.exact for s in got)
    with pytest.raises(ConfigError, match=r"shape of input.*'b'.*--input-shape"):
        resolve_shapes(model, None)
    with pytest.raises(ConfigError, match="every shape with a name"):
        resolve_shapes(model, ["1,4", "b:2"])


def test_input_list_forms(tmp_path, monkeypatch):
    for n in ("x0", "y0", "x1", "y1"):
        write_raw(str(tmp_path / f"{n}.raw"), np.zeros(4))
    (tmp_path / "list.txt").write_text(
        "%out_b out_a\n# comment\n\nx0.raw y0.raw\n   y:=y1.raw x:=x1.raw  \n")
    monkeypatch.chdir(tmp_path.parent)  # relative paths fall back to the list's folder
    parsed = read_input_list(str(tmp_path / "list.txt"), ["x", "y"])
    assert parsed.outputs == ("out_b", "out_a")
    assert [(r["x"][-6:], r["y"][-6:]) for r in parsed.rows] == [("x0.raw", "y0.raw"),
                                                                 ("x1.raw", "y1.raw")]
    (tmp_path / "late.txt").write_text("x0.raw y0.raw\n%out\n")
    with pytest.raises(DataError, match="line 2: the %output line must come before"):
        read_input_list(str(tmp_path / "late.txt"), ["x", "y"])
    (tmp_path / "twice.txt").write_text("x:=x0.raw x:=x1.raw\n")
    with pytest.raises(DataError, match="input 'x' is given twice"):
        read_input_list(str(tmp_path / "twice.txt"), ["x"])
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="is not a text file"):
        read_input_list(str(tmp_path / "bin.txt"), ["x"])


def test_calib_dir_single_and_multi_input(tmp_path):
    for i in range(2):
        write_raw(str(tmp_path / f"{i}.raw"), np.zeros(2))
    assert [list(r) for r in calib_dir_rows(str(tmp_path), ["x"])] == [["x"], ["x"]]
    for name, count in (("a", 2), ("b", 2)):
        (tmp_path / name).mkdir()
        for i in range(count):
            write_raw(str(tmp_path / name / f"{i}.raw"), np.zeros(2))
    rows = calib_dir_rows(str(tmp_path), ["a", "b"])
    assert [(r["a"][-7:], r["b"][-7:]) for r in rows] == [("a/0.raw", "b/0.raw"),
                                                          ("a/1.raw", "b/1.raw")]
    write_raw(str(tmp_path / "b" / "2.raw"), np.zeros(2))
    with pytest.raises(DataError, match="same number"):
        calib_dir_rows(str(tmp_path), ["a", "b"])
    with pytest.raises(DataError, match="'c' is missing"):
        calib_dir_rows(str(tmp_path), ["a", "c"])


def test_read_raw_shapes_batches_and_dtypes(tmp_path):
    values = np.arange(24, dtype=np.float32)
    path = str(tmp_path / "v.raw")
    write_raw(path, values)
    assert open(path, "rb").read() == values.astype("<f4").tobytes()  # little-endian, no header
    free = InputSpec("x", (1, 2, 3), F32)  # from the model: any batch of 2x3 samples
    np.testing.assert_array_equal(read_raw(path, free), values.reshape(4, 2, 3))
    with pytest.raises(DataError, match=r"holds 96 bytes = 24 float32 values.*needs exactly 6"):
        read_raw(path, InputSpec("x", (1, 2, 3), F32, exact=True))
    with pytest.raises(DataError, match="a multiple of 5 values"):
        read_raw(path, InputSpec("x", (1, 5), F32))
    ids = read_raw(path, InputSpec("t", (1, 24), np.dtype("int64")))
    assert ids.dtype == np.int64 and ids.tolist() == [list(range(24))]
    write_raw(path, np.array([0.5, 1.0]))
    with pytest.raises(DataError, match="non-integer values"):
        read_raw(path, InputSpec("t", (1, 2), np.dtype("int64")))
    (tmp_path / "odd.raw").write_bytes(b"\0" * 7)
    with pytest.raises(DataError, match="7 bytes"):
        read_raw(str(tmp_path / "odd.raw"), free)


def test_raw_file_names_are_safe():
    assert raw_file_name("fc_dequantized") == "fc_dequantized.raw"
    assert raw_file_name("layer1/conv:0") == "layer1_conv_0.raw"
    assert raw_file_name("../../etc") == "_.._etc.raw"
    assert raw_file_name("") == "output.raw"
