"""export_tflite: files run in the real LiteRT interpreter and are compared with the simulation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bench.models import TinyTransformer
from torch import nn

import fxquant
from fxquant.export.tflite_export import TFLiteExportWarning
from fxquant.runtimes.litert_runtime import LiteRTSession, read_ops, tflite_op_counts

from .models import DepthwiseNet, ResNetSmall

pytest.importorskip("ai_edge_litert")


def _prepared(model, shape, setter=fxquant.default_calibration_qconfig_setter, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = [torch.randn(*shape, generator=g) for _ in range(n)]
    torch.manual_seed(seed)
    q = fxquant.prepare(model.eval(), data[0], setter, backend="tflite")
    fxquant.calibrate(q, data, progress=False)
    return q, data


def _export(q, x, tmp_path, name="m.tflite", **kw):
    path = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TFLiteExportWarning)
        result = fxquant.export_tflite(q, x, path, **kw)
    return result, path


def test_residual_cnn_matches_litert(tmp_path):
    torch.manual_seed(0)
    q, data = _prepared(ResNetSmall(), (16, 3, 16, 16))
    result, path = _export(q, data[0], tmp_path)
    assert result.fully_integer
    assert result.ops["CONV_2D"] == 8 and result.ops["ADD"] == 3
    assert "TRANSPOSE" not in result.ops  # NHWC from the input to the classifier
    report = fxquant.verify(q, path, data[1], runtime="litert")
    out = report.outputs[0]
    assert out.identical >= 0.99 and out.max_step_diff <= 1, report
    assert report.emulated == {"ADD": 3, "CONV_2D": 8, "FULLY_CONNECTED": 1}
    assert not report.float_ops and report.integer_ops["CONV_2D"] == 8


def test_depthwise_cnn_matches_litert(tmp_path):
    torch.manual_seed(1)
    q, data = _prepared(DepthwiseNet(), (16, 3, 16, 16))
    result, path = _export(q, data[0], tmp_path)
    assert result.ops["DEPTHWISE_CONV_2D"] == 3 and result.fully_integer
    report = fxquant.verify(q, path, data[1], runtime="litert")
    assert report.outputs[0].identical >= 0.99 and report.outputs[0].max_step_diff <= 1, report
    # the file's quantization is the spec's: per-channel depthwise weights on axis 3, int32 bias
    s = LiteRTSession(path)
    details = {d["name"]: d for d in s.interpreter.get_tensor_details()}
    w = next(d for n, d in details.items() if n.endswith("_weight") and
             d["quantization_parameters"]["quantized_dimension"] == 3)
    assert w["dtype"] == np.int8 and w["shape"][0] == 1
    assert not w["quantization_parameters"]["zero_points"].any()
    bias = [d for n, d in details.items() if n.endswith("_bias")]
    assert bias and all(d["dtype"] == np.int32 for d in bias)


def test_int16x8_model(tmp_path):
    torch.manual_seed(1)
    q, data = _prepared(DepthwiseNet(), (16, 3, 16, 16),
                        fxquant.calibration_8bit_weight_16bit_act_qconfig_setter)
    result, path = _export(q, data[0], tmp_path)
    assert result.fully_integer
    s = LiteRTSession(path)
    types = {d["name"]: d["dtype"] for d in s.interpreter.get_tensor_details()}
    assert types["classifier"] == np.int16
    assert all(t == np.int64 for n, t in types.items() if n.endswith("_bias"))
    assert all(t == np.int8 for n, t in types.items() if n.endswith("_weight"))
    report = fxquant.verify(q, path, data[1], runtime="litert", tensors=False)
    # LiteRT's builtin 16x8 kernels: conv / fully connected / mean emulated code for code
    assert report.outputs[0].identical >= 0.99 and report.outputs[0].max_step_diff <= 1, report
    assert report.emulated == {"CONV_2D_16x8": 7, "FULLY_CONNECTED_16x8": 1, "MEAN_16x8": 1}
    assert report.outputs[0].float32_identical < 0.99


def test_transformer_encoder_matches_litert(tmp_path):
    """Linear / batch matmul / softmax / GELU run in integer kernels; LayerNorm has none and runs
    in float32 (reported).  FULLY_CONNECTED / ADD / BATCH_MATMUL are emulated (XNNPACK's or the
    builtin kernel's arithmetic, as LiteRT picks by the right operand's zero point)."""
    torch.manual_seed(2)
    q, data = _prepared(TinyTransformer(), (16, 8, 8), seed=2)
    result, path = _export(q, data[0], tmp_path)
    assert {"BATCH_MATMUL", "SOFTMAX", "GELU", "FULLY_CONNECTED"} <= set(result.ops)
    assert result.float_ops and all("layer norm" in why for _, why in result.float_ops)
    report = fxquant.verify(q, path, data[1], runtime="litert", tensors=False)
    out = report.outputs[0]
    assert out.identical >= 0.99 and out.max_step_diff <= 1, report
    assert out.float32_identical < 0.9  # what the plain float32 simulation would have said
    assert report.emulated["BATCH_MATMUL"] == 4
    ints, floats = tflite_op_counts(path.read_bytes())
    assert ints["SOFTMAX"] == 2 and "RSQRT" in floats


def test_profile_rules():
    class M(nn.Module):
        def forward(self, x, y):
            a = F.avg_pool2d(F.relu(x), 2)
            return torch.sigmoid(a), torch.tanh(a), torch.cat([a, F.relu(y)], 1).softmax(1)

    x, y = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)
    q = fxquant.prepare(M(), (x, y), fxquant.default_calibration_qconfig_setter,
                        backend="tflite")
    fxquant.calibrate(q, [(x, y)], progress=False)
    fqs = {p: m.qparams() for p, m in q.named_modules() if isinstance(m, fxquant.FakeQuantize)}
    sig = next(v for p, v in fqs.items() if "sigmoid" in p)
    tanh = next(v for p, v in fqs.items() if "tanh" in p)
    soft = next(v for p, v in fqs.items() if "softmax" in p)
    assert (float(sig.scale), int(sig.zero_point)) == (1 / 256, -128)
    assert (float(soft.scale), int(soft.zero_point)) == (1 / 256, -128)
    assert (float(tanh.scale), int(tanh.zero_point)) == (1 / 128, 0)
    # avg pool writes its input's grid; cat's inputs and output share one quantizer
    assert not any("avg_pool" in p for p in fqs)
    assert not any("relu_1" in p for p in fqs) and any("cat" in p for p in fqs)
    w = fxquant.prepare(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 8, 8),
                        backend="tflite")
    wq = next(m for m in w.modules() if isinstance(m, fxquant.FakeQuantize) and m.is_weight)
    assert wq.dtype.qmin == -127 and wq.ch_axis == 0 and wq.symmetric


def test_io_dtypes_and_layout(tmp_path):
    torch.manual_seed(3)
    q, data = _prepared(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()), (2, 3, 8, 8))
    for io in ("int8", "uint8"):
        result, path = _export(q, data[0], tmp_path, f"{io}.tflite", io_dtype=io)
        s = LiteRTSession(path)
        assert s.input_details[0]["dtype"] == np.dtype(io)
        assert tuple(s.input_details[0]["shape"]) == (2, 8, 8, 3)
        out = s.run_tensors(data[1])[0]
        ref = q(data[1])
        step = float(result and next(m for m in q.modules() if isinstance(
            m, fxquant.FakeQuantize) and not m.is_weight and "1" in (m.name or "")).scale)
        assert float((out - ref).abs().max()) <= step * 1.01
    result, path = _export(q, data[0], tmp_path, "nchw.tflite", nhwc_io=False)
    assert result.inputs[0][3] == "NCHW" and result.ops.get("TRANSPOSE") == 2
    assert torch.allclose(LiteRTSession(path).run_tensors(data[1])[0], q(data[1]), atol=0.05)


def test_float_island_and_errors(tmp_path):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.ln = nn.Linear(8, 8), nn.LayerNorm(8)

        def forward(self, x):
            return self.fc(self.ln(self.fc(x)))

    torch.manual_seed(4)
    q, data = _prepared(M(), (4, 8))
    with pytest.warns(TFLiteExportWarning, match="layer_norm"):
        result = fxquant.export_tflite(q, data[0], tmp_path / "f.tflite")
    assert [n for n, _ in result.float_ops] == ["layer_norm"]
    assert [op for op, _ in read_ops((tmp_path / "f.tflite").read_bytes())].count(
        "DEQUANTIZE") >= 2

    class Cum(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1)

    qc, dc = _prepared(Cum(), (2, 4))
    with pytest.raises(fxquant.ExportError, match="cumsum"):
        fxquant.export_tflite(qc, dc[0], tmp_path / "c.tflite")
    assert not (tmp_path / "c.tflite").exists()
    with pytest.raises(fxquant.ConfigError, match="io_dtype"):
        fxquant.export_tflite(q, data[0], tmp_path / "x.tflite", io_dtype="int4")


def test_float_export_matches_torch(tmp_path):
    torch.manual_seed(5)
    model = ResNetSmall().eval()
    q, data = _prepared(model, (2, 3, 16, 16))
    result, path = _export(q, data[0], tmp_path, quantize=False)
    assert "QUANTIZE" not in result.ops and "DEQUANTIZE" not in result.ops
    out = LiteRTSession(path).run_tensors(data[1])[0]
    with torch.no_grad():
        assert torch.allclose(out, model(data[1]), atol=1e-4)


class _ImageOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        y = F.max_pool2d(F.hardswish(self.conv(x)), 3, 2, 1)       # PADV2 + MAX_POOL_2D
        y = F.interpolate(y, scale_factor=2.0, mode="nearest")       # RESIZE_NEAREST_NEIGHBOR
        z = F.relu(self.up(F.pad(y, (1, 1, 1, 1))))                  # PAD, TRANSPOSE_CONV
        z = self.dw(z) * F.hardsigmoid(z)                            # hard sigmoid in float32
        w = torch.cat([torch.sigmoid(z), torch.tanh(z)], 1)         # fixed grids, shared grid
        return F.avg_pool2d(F.leaky_relu(w, 0.1), 2).flatten(1)


class _SeqOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.fc = nn.Linear(16, 16)

    def forward(self, tokens):
        h = self.fc(self.emb(tokens))
        q = h.view(2, -1, 2, 8).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, q, q, is_causal=True)
        return F.silu(a.transpose(1, 2).reshape(2, -1, 16)).softmax(-1)


@pytest.mark.parametrize("make,example", [
    (_ImageOps, lambda g: torch.randn(2, 3, 16, 16, generator=g)),
    (_SeqOps, lambda g: torch.randint(0, 20, (2, 6), generator=g)),
], ids=["image_ops", "sequence_ops"])
def test_op_zoo_runs_in_litert(make, example, tmp_path):
    g = torch.Generator().manual_seed(6)
    torch.manual_seed(6)
    data = [example(g) for _ in range(3)]
    q = fxquant.prepare(make().eval(), data[0], fxquant.default_calibration_qconfig_setter,
                        backend="tflite")
    fxquant.calibrate(q, data, progress=False)
    result, path = _export(q, data[0], tmp_path)
    out = LiteRTSession(path).run_tensors(data[1])[0]
    ref = q(data[1])
    fq = [m for m in q.modules() if isinstance(m, fxquant.FakeQuantize)][-1].qparams()
    assert float(fq.steps(out, ref).max()) <= 2
    if make is _ImageOps:
        assert {"PADV2", "MAX_POOL_2D", "RESIZE_NEAREST_NEIGHBOR", "TRANSPOSE_CONV", "PAD",
                "HARD_SWISH", "LOGISTIC", "TANH", "LEAKY_RELU", "AVERAGE_POOL_2D",
                "CONCATENATION", "DEPTHWISE_CONV_2D"} <= set(result.ops)
        assert [w for _, w in result.float_ops] == [
            "TFLite has no hard sigmoid (ADD, RELU6, MUL in float32)"]
    else:
        assert {"GATHER", "BATCH_MATMUL", "SOFTMAX", "FULLY_CONNECTED"} <= set(result.ops)
        # the prepared attention's scores (matmul, scale, causal mask, softmax) and SiLU run in
        # float32: the scores are quantized after the scale, the -inf mask has no int8 form
        assert [name for name, _ in result.float_ops] == ["matmul", "mul", "add", "softmax",
                                                          "silu"]


class _Pools(nn.Module):
    """Pooling TFLite has no single op for: ceil-mode max pooling (squeezenet), average pooling
    that counts the padded zeros (inception), an in-place dropout (mnasnet), reshape_as (levit)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.drop = nn.Dropout(0.2, inplace=True)

    def forward(self, x):
        y = self.drop(torch.relu(self.conv(x)))
        y = y.flatten(2).reshape_as(y)
        a = F.max_pool2d(y, 3, 2, ceil_mode=True)
        b = F.avg_pool2d(y, 3, 2, padding=1)
        return a, b


def test_ceil_mode_max_pool_and_padded_average_pool(tmp_path):
    q, data = _prepared(_Pools(), (2, 3, 15, 15), seed=7)  # 13x13 into the pools
    result, path = _export(q, data[0], tmp_path)
    # ceil mode: 6x6 where TFLite's SAME would give 7x7 -> PADV2 (lowest value) + VALID
    assert {"PADV2", "PAD", "MAX_POOL_2D", "AVERAGE_POOL_2D"} <= set(result.ops)
    assert not result.float_ops
    outs = LiteRTSession(path).run_tensors(data[1])
    refs = [r.detach() for r in q(data[1])]
    assert [tuple(o.shape) for o in outs] == [tuple(r.shape) for r in refs] == [
        (2, 8, 6, 6), (2, 8, 7, 7)]
    step = max(float(m.qparams().scale.max()) for m in q.modules()
               if isinstance(m, fxquant.FakeQuantize) and not m.is_weight)
    # reshape_as reads only the shape of its second input: the pools read the ReLU's grid
    # (no requantizing QUANTIZE in the file)
    assert result.ops["QUANTIZE"] == 1
    assert torch.equal(outs[0], refs[0])  # max pooling moves codes: exact
    assert float((outs[1] - refs[1]).abs().max()) <= 1.01 * step
    assert float((outs[1] == refs[1]).float().mean()) >= 0.99


def test_torch_transformer_encoder_layer_runs_in_litert(tmp_path):
    """nn.MultiheadAttention splits its packed in_proj weight (a constant list) and quantizes
    the attention probabilities on an observed grid, which LiteRT's int8 SOFTMAX refuses: the
    softmax runs in float32 and says why."""
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
    q, data = _prepared(model, (2, 5, 16))
    result, path = _export(q, data[0], tmp_path)
    assert {"FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX"} <= set(result.ops)
    why = dict(result.float_ops)["softmax"]
    assert "not TFLite's fixed SOFTMAX grid (0.00390625, -128)" in why
    report = fxquant.verify(q, str(path), data[1], "litert", tensors=False)
    assert report.outputs[0].identical >= 0.99, report
