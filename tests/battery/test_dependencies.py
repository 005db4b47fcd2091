"""A missing optional package (onnx, onnxruntime, openvino, matplotlib) is a
:class:`MissingDependencyError` naming the extra to install, raised before any work: the model
is never run, no file is written.  The import is made to fail with
``monkeypatch.setitem(sys.modules, name, None)``."""

from __future__ import annotations

import contextlib
import sys

import pytest

import fxquant
from fxquant import MissingDependencyError
from fxquant.cli.main import main

from .helpers import example, expect

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def calls(qmodel):
    """How often ``qmodel`` ran while the test did (0: nothing was computed)."""
    count = [0]
    handle = qmodel.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    yield count
    handle.remove()


def _missing(monkeypatch, *modules):
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


@pytest.mark.parametrize(("module", "runtime", "extra"), [
    ("onnxruntime", "onnxruntime", "onnx"),
    ("onnx", "onnxruntime", "onnx"),
    ("openvino", "openvino", "openvino"),
])
def test_verify(qmodel, files, calls, monkeypatch, module, runtime, extra):
    _missing(monkeypatch, module)
    with pytest.warns(UserWarning) if runtime == "openvino" else contextlib.nullcontext():
        expect(MissingDependencyError,
               lambda: fxquant.verify(qmodel, files / "net.onnx", example(), runtime=runtime),
               ["verify", f"'{module}'"], rf"pip install 'fxquant\[{extra}\]'")
    assert calls[0] == 0


def test_compare_runtime_stage(qmodel, float_model, calls, monkeypatch):
    _missing(monkeypatch, "onnxruntime")
    expect(MissingDependencyError,
           lambda: fxquant.compare(float_model, qmodel, example(), ("sim", "onnxruntime")),
           ["compare", "'onnxruntime'"], r"pip install 'fxquant\[onnx\]'")
    assert calls[0] == 0


def test_report(qmodel, float_model, tmp_path, monkeypatch):
    table = fxquant.compare(float_model, qmodel, example())
    _missing(monkeypatch, "matplotlib")
    expect(MissingDependencyError, lambda: fxquant.report(tmp_path / "r.html", compare=table),
           ["fxquant.report", "'matplotlib'"], r"pip install 'fxquant\[report\]'",
           folder=tmp_path)


def test_export_encodings_with_onnx_path(qmodel, files, tmp_path, monkeypatch):
    _missing(monkeypatch, "onnx")
    expect(MissingDependencyError,
           lambda: fxquant.export_encodings(qmodel, tmp_path / "e.json",
                                            onnx_path=files / "net.onnx"),
           ["export_encodings", "'onnx'"], r"pip install 'fxquant\[onnx\]'", folder=tmp_path)


def test_cli_report_checks_before_running_the_factory(tmp_path, monkeypatch, capsys):
    (tmp_path / "spec.py").write_text(
        "import pathlib, torch\n"
        "def build():\n"
        "    pathlib.Path('factory_ran').write_text('yes')\n"
        "    return torch.nn.Linear(4, 2), torch.randn(1, 4)\n")
    monkeypatch.chdir(tmp_path)
    _missing(monkeypatch, "matplotlib")
    assert main(["report", "spec.py:build", "--out", "r.html", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'fxquant[report]'" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.py"]  # the factory never ran

