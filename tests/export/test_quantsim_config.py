"""export_quantsim_config: the AIMET quantsim config that matches the encodings (the real AIMET
loading it strictly is tested in tests/compat/test_aimet.py)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.conv(x))
        return self.fc(F.max_pool2d(x, 2).mean((2, 3)))


@pytest.mark.parametrize("backend,act_sym", [("generic", True), ("onnxruntime", False)])
def test_config_matches_the_encodings(tmp_path, backend, act_sym):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    q = fxquant.prepare(_Net().eval(), x, fxquant.default_calibration_qconfig_setter,
                        backend=backend)
    fxquant.calibrate(q, [x], progress=False)
    onnx_path = tmp_path / "m.onnx"
    fxquant.export_onnx(q, x, onnx_path, quantize=False)
    cfg = fxquant.export_quantsim_config(q, tmp_path / "cfg.json", onnx_path=onnx_path)
    assert json.loads((tmp_path / "cfg.json").read_text()) == cfg
    d = cfg["defaults"]
    assert d["ops"]["is_symmetric"] == str(act_sym)
    assert d["params"]["is_symmetric"] == "True"
    assert d["per_channel_quantization"] == "True" and d["unsigned_symmetric"] == "False"
    assert d["strict_symmetric"] == "False"
    assert cfg["op_type"]["Conv"] == {"is_output_quantized": "False"}  # fused with its relu
    assert cfg["op_type"]["MaxPool"] == {"is_output_quantized": "False"}  # shares its input's
    assert cfg["model_input"] == {"is_input_quantized": "True"}
    assert {"op_list": ["Conv", "Relu"]} in cfg["supergroups"]
    enc = fxquant.export_encodings(q, None, onnx_path=onnx_path)
    assert all(e[0]["is_symmetric"] == str(act_sym)
               for e in enc["activation_encodings"].values())


def test_without_onnx_only_defaults(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    q = fxquant.prepare(_Net().eval(), x, fxquant.default_calibration_qconfig_setter,
                        backend="tensorrt")
    fxquant.calibrate(q, [x], progress=False)
    cfg = fxquant.export_quantsim_config(q, None)
    assert cfg["op_type"] == {} and cfg["defaults"]["ops"]["is_symmetric"] == "True"
    # narrow weights next to full-range activations: AIMET's one switch stays off
    assert cfg["defaults"]["strict_symmetric"] == "False"
