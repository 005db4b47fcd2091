"""fxquant.nn's eager-style markers: QuantStub / DeQuantStub / FloatFunctional in prepare,
convert and export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxquant
from fxquant.graph import get_report
from fxquant.nn import DeQuantStub, FloatFunctional, QuantStub


class _Eager(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.ff = FloatFunctional()
        self.dequant = DeQuantStub()

    def forward(self, x):
        y = self.conv(self.quant(x))
        y = self.ff.add_relu(y, y)
        y = self.ff.mul_scalar(self.ff.cat([y, y], 1), 0.5)
        return torch.sigmoid(self.dequant(y))


def test_stubs_and_float_functional_in_prepare_and_convert():
    torch.manual_seed(0)
    model, x = _Eager().eval(), torch.randn(2, 3, 6, 6)
    q = fxquant.prepare(model, x, fxquant.default_calibration_qconfig_setter, backend="x86")
    ops = get_report(q).ops
    assert ops["quant"].kind.value == "quant_stub" and "output" in ops["quant"].quantizers
    assert ops["dequant"].kind.value == "dequant_stub"
    assert {"ff", "ff_1", "ff_2"} <= set(ops)  # FloatFunctional calls named after the module
    fxquant.calibrate(q, [x], progress=False)
    assert torch.allclose(q(x), model(x), atol=0.05)
    int8 = fxquant.convert(q, backend="x86", keep_float=True)
    assert int8(x).shape == (2, 8, 6, 6)
    with pytest.raises(RuntimeError, match="methods"):
        FloatFunctional()(x)


def test_matmul_and_plain_methods_are_the_float_ops():
    ff = FloatFunctional()
    a, b = torch.randn(3, 4), torch.randn(4, 2)
    assert torch.equal(ff.matmul(a, b), a @ b)
    assert torch.equal(ff.add(a, a), a + a) and torch.equal(ff.mul(a, a), a * a)
    assert torch.equal(ff.add_scalar(a, 2.0), a + 2.0)
