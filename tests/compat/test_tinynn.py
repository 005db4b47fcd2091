"""fxquant.compat.tinynn: TinyNeuralNetwork's QAT / post-quantization examples with only the
imports changed, checked against fxquant's native API on the same model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
import fxquant.compat.torch_ao as torch_quantization
from fxquant.compat.tinynn.converter import TFLiteConverter
from fxquant.compat.tinynn.graph.quantization.quantizer import PostQuantizer, QATQuantizer


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(torch.flatten(x, 1))


def _data(n=3):
    g = torch.Generator().manual_seed(4)
    return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(n)]


def _model():
    torch.manual_seed(0)
    return _Net()


def test_qat_example(tmp_path):
    data = _data()
    dummy_input = data[0]
    model = _model().train()
    quantizer = QATQuantizer(model, dummy_input, work_dir=str(tmp_path),
                             config={"asymmetric": True, "per_tensor": True,
                                     "backend": "qnnpack"})
    qat_model = quantizer.quantize()
    assert (tmp_path / "_Net_q.py").exists()
    opt = torch.optim.SGD(qat_model.parameters(), lr=0.01)
    for x in data:
        loss = qat_model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        qat_model.eval()
        qat_model = torch_quantization.convert(qat_model)  # torch.quantization.convert
        assert qat_model.engine == quantizer.backend == "qnnpack"
        assert qat_model(data[1]).shape == (4, 4)


def test_qat_convert_tflite_example(tmp_path):
    """TinyNN's examples/quantization/qat.py with only the imports changed."""
    data = _data()
    dummy_input = data[0]
    model = _model().train()
    quantizer = QATQuantizer(model, dummy_input, work_dir=str(tmp_path / "out"),
                             config={"asymmetric": True, "per_tensor": True,
                                     "backend": "qnnpack"})
    qat_model = quantizer.quantize()
    opt = torch.optim.SGD(qat_model.parameters(), lr=0.01)
    for x in data:
        loss = qat_model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        qat_model.eval()
        qat_model.cpu()
        qat_model = quantizer.convert(qat_model)
        torch.backends.quantized.engine = quantizer.backend
        converter = TFLiteConverter(qat_model, dummy_input,
                                    tflite_path=str(tmp_path / "out" / "qat_model.tflite"))
        converter.convert()
    assert (tmp_path / "out" / "qat_model.tflite").exists()
    ops = converter.result.ops
    assert ops.get("CONV_2D") == 1 and ops.get("FULLY_CONNECTED") == 1
    assert converter.result.fully_integer
    assert converter.result.inputs[0][3] == "NHWC"  # TinyNN's nchw_transpose default


def test_tflite_converter_float_and_uint8_io(tmp_path):
    x = _data(1)[0]
    TFLiteConverter(_model().eval(), x, str(tmp_path / "f.tflite")).convert()
    ptq = PostQuantizer(_model().eval(), x, config={"backend": "qnnpack"})
    q = ptq.quantize()
    with torch.no_grad():
        q(x)
    conv = TFLiteConverter(ptq.convert(q), x, str(tmp_path / "u8.tflite"),
                           quantize_target_type="uint8", fuse_quant_dequant=True,
                           nchw_transpose=False)
    conv.convert()
    assert conv.result.inputs[0][2] == "UINT8" and conv.result.outputs[0][2] == "UINT8"
    assert conv.result.inputs[0][3] == "NCHW"
    with pytest.raises(fxquant.ConfigError, match="int16"):
        TFLiteConverter(q, x, str(tmp_path / "i16.tflite"), quantize_target_type="int16").convert()


def test_post_quantization_matches_native_fxquant():
    data = _data()
    dummy_input = data[0]
    model = _model().eval()
    quantizer = PostQuantizer(model, dummy_input, work_dir=None,
                              config={"asymmetric": True, "per_tensor": False,
                                      "backend": "fbgemm"})
    ptq_model = quantizer.quantize()
    with torch.no_grad():
        for x in data:
            ptq_model(x)
    int8 = quantizer.convert(ptq_model)
    assert ptq_model.conv.weight_fake_quant.ch_axis == 0
    assert ptq_model.conv.weight_fake_quant.symmetric
    # native fxquant with the same quantizers
    native = fxquant.prepare(model, dummy_input, torch_quantization.to_fxquant_qconfig(
        quantizer.qconfig()), backend="fbgemm")
    fxquant.calibrate(native, data, progress=False)
    with torch.no_grad():
        assert torch.equal(native(data[1]), fxquant.set_fake_quantize(
            ptq_model, fxquant.FakeQuantState.VALIDATION)(data[1]))
        assert torch.equal(fxquant.convert(native, backend="fbgemm")(data[1]), int8(data[1]))


def test_config_keys():
    x = _data(1)[0]
    sym = PostQuantizer(_model().eval(), x, config={"asymmetric": False}).quantize()
    acts = [m for m in sym.modules() if isinstance(m, fxquant.FakeQuantize) and not m.is_weight]
    assert acts and all(m.symmetric and m.dtype.signed for m in acts)
    onnx_q = PostQuantizer(_model().eval(), x, config={"backend": "onnx"})
    assert onnx_q.profile == "onnxruntime"
    with pytest.raises(fxquant.ConfigError, match="backend"):
        QATQuantizer(_model(), x, config={"backend": "tflite"})
    with pytest.raises(fxquant.ConfigError, match="rewrite_graph"):
        QATQuantizer(_model(), x, config={"rewrite_graph": False})
