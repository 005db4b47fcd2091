"""``fxquant inspect``: the rows of an ONNX file and of its encodings equal, bit for bit, the
grids the quantizers apply (``FakeQuantize.qparams()``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import fxquant
from fxquant.cli.inspect_cmd import read_quantized
from fxquant.cli.main import main


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, image):
        return self.fc(torch.relu(self.conv(image)).mean((2, 3)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("inspect")
    data = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    setter = (fxquant.ModuleNameQconfigSetter(
        {"fc": fxquant.get_qconfig(out_dtype=fxquant.qint16)}),
        fxquant.default_calibration_qconfig_setter)
    qmodel = fxquant.prepare(Net().eval(), data[0], setter, backend="onnxruntime")
    fxquant.calibrate(qmodel, data, progress=False)
    result = fxquant.export_onnx(qmodel, data[0], folder / "m.onnx")
    fxquant.export_encodings(qmodel, folder / "m.encodings", onnx_path=result.path)
    return qmodel, result, folder


def test_onnx_rows_are_the_applied_grids(exported):
    qmodel, result, folder = exported
    rows = {r.name: r for r in read_quantized(str(folder / "m.onnx"))}
    checked = 0
    for path, tensor in result.tensor_names.items():
        qp = qmodel.get_submodule(path).qparams()
        row = rows[tensor]
        scales = np.atleast_1d(qp.scale.numpy()).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(row.scales, np.float32), scales)
        assert list(row.zero_points) == np.atleast_1d(qp.zero_point.numpy()).tolist()
        assert row.bits == qp.dtype.bits
        assert row.kind == ("param" if tensor.endswith(".weight") else "activation")
        assert row.axis == (0 if scales.size > 1 else None)
        lo = (qp.dtype.qmin if not qp.dtype.narrow_range else qp.dtype.qmin - 1)
        assert row.ranges[0][0] == pytest.approx(float((lo - row.zero_points[0]) * scales[0]))
        checked += 1
    assert checked == len(result.tensor_names) >= 5
    assert rows["fc"].dtype == "int16" and rows["fc"].symmetric
    assert rows["conv.weight"].dtype == "int8" and len(rows["conv.weight"].scales) == 6
    assert rows["conv.bias"].dtype == "int32"  # the int32 bias of the onnxruntime profile
    assert rows["fc"].aliases == ("output",)  # the graph output: an Identity of fc_dequantized


def test_encodings_rows_are_the_file(exported):
    _, _, folder = exported
    data = json.loads((folder / "m.encodings").read_text())
    rows = {r.name: r for r in read_quantized(str(folder / "m.encodings"))}
    for section, kind in (("activation_encodings", "activation"), ("param_encodings", "param")):
        for name, entries in data[section].items():
            row = rows[name]
            assert row.kind == kind and row.bits == entries[0]["bitwidth"]
            assert list(row.scales) == [e["scale"] for e in entries]
            assert list(row.zero_points) == [e["offset"] for e in entries]
            assert row.ranges[0] == pytest.approx((entries[0]["min"], entries[0]["max"]))
    assert rows["fc"].symmetric and rows["fc"].zero_point_label == "offset"


def test_inspect_command_table_channels_json(exported, capsys):
    _, _, folder = exported
    assert main(["inspect", str(folder / "m.onnx")]) == 0
    table = capsys.readouterr().out
    assert "per-channel(6, axis 0)" in table and "zero point" in table.splitlines()[1]
    assert main(["inspect", str(folder / "m.onnx"), "--channels"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum("channel " in ln for ln in lines) == 6 + 6 + 4 + 4  # weights and biases
    assert main(["inspect", str(folder / "m.encodings"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"fc", "conv.weight", "fc.weight"}
