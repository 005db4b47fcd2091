"""TFLite / XNNPACK arithmetic (fxquant.runtime_math.tflite) code for code against LiteRT."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import fxquant
from fxquant.runtime_math import tflite as T
from fxquant.runtimes.litert_runtime import LiteRTSession

pytest.importorskip("ai_edge_litert")


class _Add(nn.Module):
    def forward(self, x, y):
        return x + y


def test_quantize_multiplier():
    assert T.quantize_multiplier(0.5) == (2**30, 0)
    q, s = T.quantize_multiplier(0.0123)
    assert 2**30 <= q < 2**31 and abs(q * 2.0 ** (s - 31) - 0.0123) < 1e-9
    x = torch.tensor([-(2**20), -5, 0, 7, 2**20], dtype=torch.int64)
    exact = x.double() * 0.0123
    got = T.multiply_by_quantized_multiplier(x, q, s)
    assert (got.double() - exact).abs().max() <= 0.5 + 1e-9


@pytest.mark.parametrize("kernels", ["xnnpack", "builtin"])
def test_add_code_for_code(tmp_path, kernels):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 8, 12, 12, generator=g), 3 * torch.randn(4, 8, 12, 12, generator=g)
    q = fxquant.prepare(_Add().eval(), (x, y), fxquant.default_calibration_qconfig_setter,
                        backend="tflite")
    fxquant.calibrate(q, [(x, y)], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fxquant.export_tflite(q, (x, y), tmp_path / "add.tflite")
    qa, qb = q.x.output_fake_quant.qparams(), q.y.output_fake_quant.qparams()
    qo = next(m for n, m in q.named_modules()
              if "add" in n and isinstance(m, fxquant.FakeQuantize)).qparams()
    got = qo.quantize(LiteRTSession(tmp_path / "add.tflite", kernels=kernels).run_tensors(x, y)[0])
    args = (qa.quantize(x).long(), float(qa.scale), int(qa.zero_point), qb.quantize(y).long(),
            float(qb.scale), int(qb.zero_point), float(qo.scale), int(qo.zero_point), -128, 127)
    fn = T.xnnpack_add if kernels == "xnnpack" else T.add
    assert torch.equal(fn(*args), got.long())
    # and the prepared model's eval mode computes LiteRT's default (XNNPACK) add
    if kernels == "xnnpack":
        assert torch.equal(qo.quantize(q(x, y)).long(), got.long())
