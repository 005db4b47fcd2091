"""Exported programs (``torch.export``) as torch-level graphs: same outputs bit for bit, every
op quantized, exported and verified like the module the program came from."""

from __future__ import annotations

import doctest
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant.graph import exported
from fxquant.graph.exported import ATEN_TO_TORCH, from_exported_program

from ..export.models import TinyTransformer


class ZooCNN(nn.Module):
    """conv + BN + ReLU, max pool, residual add, depthwise conv + ReLU6, cat, slicing, average
    pool, hardswish, sigmoid gate, adaptive pool, flatten, linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = F.max_pool2d(F.relu(self.bn(self.c1(x))), 2)
        z = F.relu6(self.dw(self.c2(y) + y))
        z = torch.cat([z, z * 0.5], 1)[:, :8]
        z = F.hardswish(F.avg_pool2d(z, 2))
        z = torch.sigmoid(z) * z
        return self.fc(F.adaptive_avg_pool2d(z, 1).flatten(1))


def test_doctest():
    assert doctest.testmod(exported, raise_on_error=True).attempted > 0


@pytest.mark.parametrize("make", [
    lambda: (ZooCNN(), torch.randn(2, 3, 16, 16)),
    lambda: (TinyTransformer(), torch.randint(0, 50, (2, 12))),
], ids=["cnn", "transformer"])
def test_exported_program_quantizes_like_its_module(make, tmp_path):
    torch.manual_seed(0)
    model, x = make()
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (x,))
    gm = from_exported_program(program)
    aten = [n.target for n in gm.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("aten.")]
    assert aten == []  # every ATen call of these models has a torch-level twin
    assert torch.equal(gm(x), model(x)) and torch.equal(gm(x), program.module()(x))
    gm.eval()  # program.module() would refuse
    data = [x, x.clone()]
    q = fxquant.prepare(gm, (x,), fxquant.default_calibration_qconfig_setter,
                        backend="onnxruntime")
    fxquant.calibrate(q, data, progress=False)
    s = fxquant.summary(q)
    # only what feeds softmax stays float (the onnxruntime profile keeps softmax's input float)
    assert all("float_input_ops" in f.reason for f in s.float_ops), s.float_ops
    assert len(s.quantizers) >= 15
    path = tmp_path / "m.onnx"
    fxquant.export_onnx(q, x, path)
    report = fxquant.verify(q, path, x)
    assert report.ok(max_steps=0, min_identical=1.0), report


def test_table_entries_compute_what_aten_computes():
    """Each one-to-one entry on sample arguments: the torch callable equals the ATen op."""
    torch.manual_seed(0)
    x4, w4 = torch.randn(1, 4, 6, 6), torch.randn(4, 4, 3, 3)
    samples = {
        torch.ops.aten.conv2d.default: (x4, w4, None, [1, 1], [1, 1]),
        torch.ops.aten.linear.default: (torch.randn(2, 5), torch.randn(3, 5)),
        torch.ops.aten.gelu.default: (torch.randn(7),),
        torch.ops.aten.softmax.int: (torch.randn(3, 4), -1),
        torch.ops.aten.mean.dim: (x4, [2, 3], True),
        torch.ops.aten.max_pool2d.default: (x4, [2, 2], [2, 2]),
        torch.ops.aten.avg_pool2d.default: (x4, [3, 3], [1, 1], [1, 1], False, False),
        torch.ops.aten.split.Tensor: (torch.randn(6, 2), 4, 0),
        torch.ops.aten.transpose.int: (x4, 1, 3),
        torch.ops.aten.hardtanh.default: (torch.randn(9), -0.5, 0.5),
        torch.ops.aten.leaky_relu.default: (torch.randn(9), 0.2),
        torch.ops.aten.scaled_dot_product_attention.default: (
            torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)),
    }
    for op, args in samples.items():
        want, got = op(*args), ATEN_TO_TORCH[op](*args)
        want = want if isinstance(want, (tuple, list)) else [want]
        got = got if isinstance(got, (tuple, list)) else [got]
        assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True)), op
