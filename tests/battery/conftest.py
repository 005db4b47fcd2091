"""Shared models and files of the bad-input battery (small, built once per session)."""

from __future__ import annotations

import pathlib

import pytest
import torch
from torch import nn

import fxquant

from .helpers import Net, calibrated, example


@pytest.fixture(scope="session")
def float_model() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="session")
def qmodel(float_model: nn.Module) -> nn.Module:
    """Prepared for ONNX Runtime and calibrated; tests must not change it."""
    return calibrated(float_model)


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory, qmodel: nn.Module) -> pathlib.Path:
    """A folder with ``net.onnx`` / ``net.encodings`` exported from ``qmodel``, the same for a
    model with the same op names but more channels (``wide.*``), and ``linear.onnx`` of an
    unrelated model."""
    d = tmp_path_factory.mktemp("battery_files")
    fxquant.export_onnx(qmodel, example(), d / "net.onnx")
    fxquant.export_encodings(qmodel, d / "net.encodings")
    torch.manual_seed(1)
    wide = calibrated(Net(channels=6).eval())
    fxquant.export_onnx(wide, example(), d / "wide.onnx")
    fxquant.export_encodings(wide, d / "wide.encodings")
    lin = fxquant.prepare(nn.Sequential(nn.Linear(8, 3)).eval(), torch.randn(2, 8),
                          fxquant.default_calibration_qconfig_setter, backend="onnxruntime")
    fxquant.calibrate(lin, [torch.randn(4, 8)], progress=False)
    fxquant.export_onnx(lin, torch.randn(2, 8), d / "linear.onnx")
    return d
