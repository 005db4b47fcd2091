"""fxquant.compat.pytorch_quantization / .modelopt: NVIDIA's documented flows with the imports
changed; numerics bit-exact against an independent reference; TensorRT export in ONNX Runtime;
the real ModelOpt (installed on CPU) as the reference of the ModelOpt-named layer."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import fxquant.compat.modelopt as mtq
from fxquant.compat.pytorch_quantization import calib, export_onnx, quant_modules
from fxquant.compat.pytorch_quantization import nn as quant_nn
from fxquant.compat.pytorch_quantization.tensor_quant import (
    QuantDescriptor,
    fake_tensor_quant,
    tensor_quant,
)


def _reference(x: np.ndarray, amax: np.ndarray, bits: int, unsigned: bool, narrow: bool):
    """NVIDIA's definition in numpy float32: q = clip(rint(x * (bound / amax)))."""
    bound = np.float32(2 ** (bits - 1 + int(unsigned)) - 1)
    lo = 0 if unsigned else (-bound if narrow else -bound - 1)
    amax = amax.astype(np.float32)
    scale = np.where(amax <= 2.0 ** -24, np.float32(0), bound / np.maximum(amax, 1e-30))
    scale = scale.astype(np.float32)
    q = np.clip(np.rint(x * scale), lo, bound).astype(np.float32)
    scale = np.where(amax <= 2.0 ** -24, np.float32(1), scale).astype(np.float32)
    return q, scale, (q / scale).astype(np.float32)


@pytest.mark.parametrize("bits,unsigned,narrow", [(8, False, True), (8, False, False),
                                                  (8, True, False), (4, False, False)])
def test_tensor_quant_is_bit_exact_with_the_definition(bits, unsigned, narrow):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 50, generator=g) * 3
    if unsigned:
        x = x.abs()
    amax = torch.rand(6, 1, generator=g) * 4 + 0.1
    amax[2] = 0.0  # everything of that row quantizes to 0
    bound = 2 ** (bits - 1 + int(unsigned)) - 1
    mult = (torch.tensor(float(bound)) / amax)
    k = torch.randint(-bound, bound, (6, 50), generator=g).float()
    ties = (k + 0.5) / mult  # x * scale lands on .5 (up to float rounding): exercises ties
    x[:, :25] = (ties.abs() if unsigned else ties)[:, :25]
    q, s = tensor_quant(x, amax, bits, unsigned, narrow)
    ref_q, ref_s, ref_fake = _reference(x.numpy(), amax.numpy(), bits, unsigned, narrow)
    assert np.array_equal(q.numpy(), ref_q) and np.array_equal(s.numpy(), ref_s)
    assert np.array_equal(fake_tensor_quant(x, amax, bits, unsigned, narrow).numpy(), ref_fake)


def test_straight_through_gradient_is_masked_to_amax():
    x = torch.tensor([-3.0, -1.0, 0.5, 1.0, 1.0001, 2.5], requires_grad=True)
    fake_tensor_quant(x, torch.tensor(1.0)).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(2)
        self.fc = torch.nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


def _calibrate(model, data, **amax_kwargs):
    """NVIDIA's calibration recipe (collect_stats + compute_amax of its tutorial)."""
    quantizers = [m for m in model.modules() if isinstance(m, quant_nn.TensorQuantizer)]
    for q in quantizers:
        q.disable_quant()
        q.enable_calib()
    with torch.no_grad():
        for x in data:
            model(x)
    for q in quantizers:
        if isinstance(q._calibrator, calib.MaxCalibrator):
            q.load_calib_amax()
        else:
            q.load_calib_amax(**amax_kwargs)
        q.enable_quant()
        q.disable_calib()


def _data(n=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(n)]


def test_quant_modules_patch_and_restore_torch_nn():
    original = torch.nn.Conv2d
    quant_modules.initialize()
    try:
        torch.manual_seed(0)
        model = _Net()
    finally:
        quant_modules.deactivate()
    assert torch.nn.Conv2d is original
    assert type(model.conv) is quant_nn.QuantConv2d
    assert type(model.pool) is quant_nn.QuantAdaptiveAvgPool2d
    assert type(model.fc) is quant_nn.QuantLinear
    assert model.conv.weight_quantizer.axis == 0 and model.conv.input_quantizer.axis is None
    # a quantized layer with its quantizers disabled is the float layer
    torch.manual_seed(0)
    ref = _Net()
    for q in model.modules():
        if isinstance(q, quant_nn.TensorQuantizer):
            q.disable()
    x = _data(1)[0]
    assert torch.equal(model(x), ref(x))


def test_calibrate_then_export_for_tensorrt_runs_in_onnx_runtime(tmp_path):
    quant_modules.initialize()
    try:
        torch.manual_seed(0)
        model = _Net().eval()
    finally:
        quant_modules.deactivate()
    data = _data()
    _calibrate(model, data)
    conv_in = model.conv.input_quantizer.amax
    assert torch.equal(conv_in, torch.stack([x.abs().max() for x in data]).max())
    w_amax = model.conv.weight_quantizer.amax
    assert w_amax.shape == (8, 1, 1, 1)
    assert torch.equal(w_amax.flatten(), model.conv.weight.detach().abs().amax((1, 2, 3)))
    x = data[0]
    with torch.no_grad():
        ref = model(x)
    path = tmp_path / "trt.onnx"
    export_onnx(model, x, path)
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    assert inits["conv.input_0_scale"] == np.float32(float(conv_in)) / np.float32(127)
    assert inits["conv.input_0_zero_point"].dtype == np.int8
    sess = ort.InferenceSession(str(path))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    # the fake-quant model multiplies by 127 / amax, the ONNX file divides by amax / 127
    assert np.allclose(got, ref.numpy(), atol=1e-5)


def test_histogram_calibration_methods():
    desc = QuantDescriptor(num_bits=8, calib_method="histogram")
    quant_nn.QuantConv2d.set_default_quant_desc_input(desc)
    try:
        layer = quant_nn.QuantConv2d(3, 4, 3)
    finally:
        quant_nn.QuantConv2d.set_default_quant_desc_input(QuantDescriptor(num_bits=8))
    assert isinstance(layer.input_quantizer._calibrator, calib.HistogramCalibrator)
    torch.manual_seed(0)
    data = torch.distributions.Laplace(0.0, 1.0).sample((50000,))  # heavy tails: all clip
    hc = calib.HistogramCalibrator(num_bits=8)
    for chunk in data.chunk(5):
        hc.collect(chunk)
    amax = {m: float(hc.compute_amax(m, percentile=99.9)) for m in ("entropy", "mse",
                                                                    "percentile")}
    top = float(data.abs().max())
    assert all(2.0 < a < top for a in amax.values()), (amax, top)
    assert abs(amax["percentile"] - float(data.abs().quantile(0.999))) < 0.1
    mc = calib.MaxCalibrator(8, axis=1)
    mc.collect(torch.tensor([[1.0, -5.0], [-2.0, 3.0]]))
    assert mc.compute_amax().tolist() == [[2.0, 5.0]]


def test_tensor_quantizer_state_dict_and_torch_onnx_export(tmp_path):
    q = quant_nn.TensorQuantizer(QuantDescriptor(num_bits=8, axis=0))
    q.enable_calib()
    q.disable_quant()
    q(torch.randn(3, 5))
    q.load_calib_amax()
    q.enable_quant()
    fresh = quant_nn.TensorQuantizer(QuantDescriptor(num_bits=8, axis=0))
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh.amax, q.amax)
    layer = quant_nn.QuantLinear(5, 2)
    layer.input_quantizer.amax = 2.0
    layer.weight_quantizer.amax = layer.weight.detach().abs().amax(1, keepdim=True)
    with quant_modules.enable_onnx_export():
        torch.onnx.export(layer, (torch.randn(3, 5),), str(tmp_path / "l.onnx"), dynamo=False)
    ops = [n.op_type for n in onnx.load(tmp_path / "l.onnx").graph.node]
    assert ops.count("QuantizeLinear") == 2


def test_quant_lstm_matches_torch_when_quantizers_are_off():
    torch.manual_seed(0)
    lstm = quant_nn.QuantLSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
    ref = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
    ref.load_state_dict({k: v for k, v in lstm.state_dict().items() if "quantizer" not in k})
    for q in lstm.modules():
        if isinstance(q, quant_nn.TensorQuantizer):
            q.disable()
    x = torch.randn(3, 7, 4)
    (y, (h, _)), (ry, (rh, _)) = lstm(x), ref(x)
    assert torch.allclose(y, ry, atol=1e-6) and torch.allclose(h, rh, atol=1e-6)
    cell = quant_nn.QuantLSTMCell(4, 6)
    cell.input_quantizer.amax = 3.0
    cell.weight_quantizer.amax = 1.0
    assert cell(x[:, 0])[0].shape == (3, 6)


def _mtq_run(ns, config_name="INT8_DEFAULT_CFG"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                                torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 4)).eval()
    data = _data()

    def forward_loop(m):
        for x in data:
            m(x)

    return ns.quantize(model, getattr(ns, config_name), forward_loop), data


def test_modelopt_quantize_int8_default(tmp_path):
    model, data = _mtq_run(mtq)
    assert model[0].input_quantizer.is_enabled and model[0].weight_quantizer.axis == 0
    assert float(model[0].input_quantizer.amax) == float(torch.stack(
        [x.abs().max() for x in data]).max())
    # ModelOpt's export: torch.onnx.export (the default exporter) writes Q/DQ by itself
    path = tmp_path / "mtq.onnx"
    torch.onnx.export(model, (data[0],), str(path))
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops.count("QuantizeLinear") == 4 and ops.count("DequantizeLinear") == 4
    sess = ort.InferenceSession(str(path))
    with torch.no_grad():
        ref = model(data[1]).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: data[1].numpy()})[0]
    assert np.allclose(got, ref, atol=1e-5)
    weights_only = mtq.quantize(torch.nn.Sequential(torch.nn.Linear(4, 3)),
                                mtq.INT8_WEIGHT_ONLY_CFG)  # no forward_loop: weights only
    assert weights_only[0].weight_quantizer.amax.shape == (3, 1)
    assert not weights_only[0].input_quantizer.is_enabled
    mtq.disable_quantizer(model, "*input_quantizer")
    assert not model[4].input_quantizer.is_enabled
    out = model(data[0])
    assert out.shape == (4, 4)


@pytest.mark.slow
def test_modelopt_layer_matches_the_real_modelopt_bit_exactly():
    real = pytest.importorskip("modelopt.torch.quantization")
    ours, data = _mtq_run(mtq)
    theirs, _ = _mtq_run(real)
    for i in (0, 4):
        for attr in ("input_quantizer", "weight_quantizer"):
            a = getattr(ours[i], attr).amax
            b = getattr(theirs[i], attr).amax
            assert torch.equal(a.reshape(b.shape), b), (i, attr)
    with torch.no_grad():
        assert torch.equal(ours(data[1]), theirs(data[1]))
