"""Hostile encodings files: every one a bounded :class:`EncodingsError` naming the file, none
half-applied; fuzzed with hypothesis (random JSON, random bytes, mutated real files)."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fxquant
from fxquant import ConfigError, EncodingsError
from fxquant.errors import MAX_MESSAGE

from .helpers import Net, calibrated, expect

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def target():
    """A calibrated model the files are loaded into (loads that succeed may change it)."""
    torch.manual_seed(0)
    return calibrated(Net().eval())


@pytest.fixture(scope="module")
def good(target, tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "good.encodings"
    fxquant.export_encodings(target, path)
    return json.loads(path.read_text())


def _write(tmp_path, data, name="bad.encodings"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _mutated(good, **fields):
    data = copy.deepcopy(good)
    data["activation_encodings"]["fc"][0].update(fields)
    return data


def _scales(model):
    return {n: m.scale.clone() for n, m in model.named_modules()
            if isinstance(m, fxquant.FakeQuantize)}


@pytest.mark.parametrize(("fields", "named"), [
    ({"bitwidth": 10**30}, "bitwidth 1000000000000000000000000000000 is outside [1, 64]"),
    ({"bitwidth": -3}, "bitwidth -3"),
    ({"bitwidth": 0}, "bitwidth 0"),
    ({"bitwidth": "8"}, "expected an integer"),
    ({"offset": 10**30}, "offsets [1000000000000000000000000000000]"),
    ({"offset": 2.5}, "expected an integer"),
    ({"scale": 10**400}, "expected a finite number"),
    ({"scale": -1.0}, "scales must be positive"),
    ({"scale": 1e-300}, "scales must be positive"),
    ({"is_symmetric": "maybe"}, "expected True/False"),
])
def test_hostile_values(target, good, tmp_path, fields, named):
    path = _write(tmp_path, _mutated(good, **fields))
    before = _scales(target)
    expect(EncodingsError, lambda: fxquant.load_encodings(target, path),
           ["bad.encodings", "'fc'", named], r"[1-9]|positive|expected|outside")
    after = _scales(target)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-applied


def test_nan_and_infinity_literals(target, good, tmp_path):
    text = json.dumps(_mutated(good, offset=123456789)).replace("123456789", "NaN")
    expect(EncodingsError, lambda: fxquant.load_encodings(target, _write(tmp_path, text)),
           ["'fc'", "offset", "nan"], "expected an integer")
    text = text.replace("NaN", "-Infinity")
    expect(EncodingsError, lambda: fxquant.load_encodings(target, _write(tmp_path, text)),
           ["'fc'", "offset", "-inf"], "expected an integer")


def test_a_wider_bitwidth_with_strict_false_does_not_suggest_strict_false(target, good, tmp_path):
    path = _write(tmp_path, _mutated(good, bitwidth=40))
    err = expect(EncodingsError, lambda: fxquant.load_encodings(target, path, strict=False),
                 ["bad.encodings", "bitwidth 40"], "fxquant quantizers have 2 to 32 bits")
    assert "strict=False" not in str(err)
    err = expect(EncodingsError, lambda: fxquant.load_encodings(target, path),
                 ["bitwidth 40"], "2 to 32 bits")
    assert "strict=False" not in str(err)


def test_deeply_nested_json(target, tmp_path):
    deep = '{"activation_encodings": {"fc": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    expect(EncodingsError, lambda: fxquant.load_encodings(target, _write(tmp_path, deep)),
           ["bad.encodings", "nested too deeply"], "not an encodings file")


def test_a_10_mb_tensor_name(target, good, tmp_path):
    data = copy.deepcopy(good)
    data["activation_encodings"]["n" * 10_000_000] = data["activation_encodings"]["fc"]
    expect(EncodingsError, lambda: fxquant.load_encodings(target, _write(tmp_path, data)),
           ["1 tensor name(s) match no quantizer", "(10000000 chars)"], "written for this model")


def test_100000_unknown_names(target, good, tmp_path):
    entry = json.dumps(good["activation_encodings"]["fc"])
    unknown = ", ".join(f'"t{i}": {entry}' for i in range(100_000))
    text = json.dumps(good).replace('"activation_encodings": {', '"activation_encodings": {'
                                    + unknown + ", ", 1)
    path = _write(tmp_path, text)
    expect(EncodingsError, lambda: fxquant.load_encodings(target, path),
           ["100000 tensor name(s)", "(+99995 more)"], "strict=False loads the names that match")
    with pytest.warns(UserWarning) as warned:
        fxquant.load_encodings(target, path, strict=False)
    assert all(len(str(w.message)) <= MAX_MESSAGE for w in warned)


def test_encodings_of_another_model(target, files):
    expect(EncodingsError, lambda: fxquant.load_encodings(target, files / "wide.encodings"),
           ["wide.encodings", "'conv.weight'", "6 encodings but the quantizer has 4 channels"],
           r"\(axis 0\)")


@pytest.mark.parametrize(("content", "named", "hint"), [
    (os.urandom(2000), "not UTF-8 text", "pass the file export_encodings"),
    (b"\x00" * 64, "not valid JSON", r"line 1, column 1"),
    (b"", "not valid JSON", "line 1"),
    (b"[1, 2, 3]", "expected a JSON object", "got list"),
    (b'{"version": "0.6.1"}', "neither 'activation_encodings'", "param_encodings"),
    (b'{"activation_encodings": {}, "version": 7}', "version 7", r"readable: 0\.6\.1, 1\.0\.0"),
    (b'{"activation_encodings": {}, "param_encodings": []}', "must be dicts or lists", "lists"),
])
def test_files_that_are_no_encodings(target, tmp_path, content, named, hint):
    path = tmp_path / "junk.encodings"
    path.write_bytes(content)
    expect(EncodingsError, lambda: fxquant.load_encodings(target, path),
           ["junk.encodings", named], hint)


def test_missing_file_and_folder(target, tmp_path):
    expect(EncodingsError, lambda: fxquant.load_encodings(target, tmp_path / "nope.json"),
           ["nope.json", "No such file"], "check the path")
    expect(EncodingsError, lambda: fxquant.load_encodings(target, tmp_path),
           [tmp_path.name, "Is a directory"], "check the path")


def test_export_encodings_bad_arguments(qmodel, tmp_path, files):
    expect(ConfigError, lambda: fxquant.export_encodings(qmodel, tmp_path / "e.json",
                                                         version="2.0"),
           ["export_encodings", "'2.0'"], "choose one of", folder=tmp_path)
    expect(EncodingsError, lambda: fxquant.export_encodings(qmodel, tmp_path),
           ["export_encodings", tmp_path.name, "is a folder"], "choose a writable file path",
           folder=tmp_path)
    expect(EncodingsError, lambda: fxquant.export_encodings(qmodel, tmp_path / "no" / "e.json"),
           ["folder", "does not exist"], "choose a writable file path", folder=tmp_path)
    (tmp_path / "rand.onnx").write_bytes(os.urandom(500))
    expect(EncodingsError, lambda: fxquant.export_encodings(qmodel, tmp_path / "e.json",
                                                            onnx_path=tmp_path / "rand.onnx"),
           ["rand.onnx", "cannot be read as an ONNX model"], "pass the file export_onnx wrote",
           folder=tmp_path)
    expect(EncodingsError, lambda: fxquant.export_encodings(qmodel, tmp_path / "e.json",
                                                            onnx_path=files / "linear.onnx"),
           ["linear.onnx", "do not exist"], "exported from this model", folder=tmp_path)


# -- fuzzing: only EncodingsError ever escapes, and its message is bounded ------------------
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
_FIELDS = ("bitwidth", "bw", "offset", "scale", "min", "max", "is_symmetric", "dtype")


def _load_or_encodings_error(model, path, strict=True):
    try:
        fxquant.load_encodings(model, path, strict=strict)
    except EncodingsError as err:
        assert len(str(err)) <= MAX_MESSAGE


@settings(max_examples=60)
@given(data=_JSON)
def test_fuzz_random_json(target, tmp_path, data):
    _load_or_encodings_error(target, _write(tmp_path, data))


@settings(max_examples=40)
@given(content=st.binary(max_size=300))
def test_fuzz_random_bytes(target, tmp_path, content):
    path = tmp_path / "bytes.encodings"
    path.write_bytes(content)
    _load_or_encodings_error(target, path)


@settings(max_examples=80)
@given(field=st.sampled_from(_FIELDS), value=_JSON, section=st.sampled_from(
    ["activation_encodings", "param_encodings"]), strict=st.booleans())
def test_fuzz_mutated_real_files(target, good, tmp_path, field, value, section, strict):
    data = copy.deepcopy(good)
    name = next(iter(data[section]))
    data[section][name][0][field] = value
    _load_or_encodings_error(target, _write(tmp_path, data), strict)


@settings(max_examples=40)
@given(entry=st.dictionaries(st.sampled_from(["name", "bw", "dtype", "enc_type", "is_sym",
                                              "scale", "offset"]), _JSON, max_size=7),
       name=st.sampled_from(["fc", "conv.weight", "x"]))
def test_fuzz_v1_entries(target, tmp_path, entry, name):
    entry.setdefault("name", name)
    data = {"version": "1.0.0", "activation_encodings": [entry], "param_encodings": []}
    _load_or_encodings_error(target, _write(tmp_path, data), strict=False)
