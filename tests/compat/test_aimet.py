"""fxquant.compat.aimet: AIMET's PTQ / QAT / AdaRound / AutoQuant examples with only the imports
changed, checked against fxquant's native API; the exported files loaded by the real AIMET
(``aimet-onnx``) with its strict loader."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant.compat.aimet.adaround.adaround_weight import Adaround, AdaroundParameters
from fxquant.compat.aimet.auto_quant import AutoQuant
from fxquant.compat.aimet.batch_norm_fold import fold_all_batch_norms
from fxquant.compat.aimet.common.defs import QuantScheme
from fxquant.compat.aimet.cross_layer_equalization import equalize_model
from fxquant.compat.aimet.quantsim import QuantizationSimModel


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x)) + x
        return self.fc(x.mean((2, 3)))


def _model():
    torch.manual_seed(0)
    m = _Net()
    with torch.no_grad():
        m.bn1.running_mean.uniform_(-0.2, 0.2)
        m.bn1.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _data(n=3):
    g = torch.Generator().manual_seed(2)
    return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(n)]


def pass_calibration_data(model, batches):
    model.eval()
    with torch.no_grad():
        for x in batches:
            model(x)


def _ptq(tmp_path, config_file=None):
    model, data = _model(), _data()
    dummy_input = data[0]
    fold_all_batch_norms(model, input_shapes=(1, 3, 8, 8))
    sim = QuantizationSimModel(model, dummy_input=dummy_input,
                               quant_scheme=QuantScheme.post_training_tf,
                               default_output_bw=8, default_param_bw=8,
                               config_file=config_file)
    sim.compute_encodings(forward_pass_callback=pass_calibration_data,
                          forward_pass_callback_args=data)
    sim.export(path=str(tmp_path), filename_prefix="model", dummy_input=dummy_input)
    return model, sim, data


def test_ptq_export_matches_native_fxquant(tmp_path):
    model, sim, data = _ptq(tmp_path)
    assert isinstance(model.bn1, nn.Identity)  # folded in place
    for f in ("model.onnx", "model.encodings", "model_quantsim_config.json"):
        assert (tmp_path / f).exists()
    enc = json.loads((tmp_path / "model.encodings").read_text())
    assert all(e[0]["is_symmetric"] == "False" for e in enc["activation_encodings"].values())
    assert all(e[0]["is_symmetric"] == "True" for e in enc["param_encodings"].values())
    assert all(len(e) == 1 for e in enc["param_encodings"].values())  # per-tensor default
    # native fxquant with the same quantizers: identical outputs
    qconfig = fxquant.get_qconfig(observer=fxquant.MinMaxObserver, out_dtype=fxquant.quint8,
                                  symmetric=False, weight_per_channel=False)
    native = fxquant.prepare(model, data[0], qconfig)
    fxquant.calibrate(native, data, progress=False)
    with torch.no_grad():
        assert torch.equal(native(data[1]), sim.model(data[1]))


def test_quantsim_config_is_honoured(tmp_path):
    cfg = {
        "defaults": {"ops": {"is_output_quantized": "True", "is_symmetric": "True"},
                     "params": {"is_quantized": "True", "is_symmetric": "True"},
                     "strict_symmetric": "True", "unsigned_symmetric": "False",
                     "per_channel_quantization": "True"},
        "params": {"bias": {"is_quantized": "False"}},
        "op_type": {"Gemm": {"is_output_quantized": "False"}},
        "supergroups": [], "model_input": {"is_input_quantized": "True"}, "model_output": {},
    }
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    sim = QuantizationSimModel(_model(), dummy_input=_data()[0], config_file=str(path))
    assert sim.model.conv1.weight_fake_quant.ch_axis == 0
    assert sim.model.conv1.weight_fake_quant.dtype == fxquant.qint8.narrow()
    assert not hasattr(sim.model.fc, "output_fake_quant")
    assert all(m.symmetric for m in sim.model.modules() if isinstance(m, fxquant.FakeQuantize))


def test_qat_trains_sim_model_and_range_learning_learns_scales():
    data = _data()
    for scheme in (QuantScheme.post_training_tf_enhanced,
                   QuantScheme.training_range_learning_with_tf_init):
        sim = QuantizationSimModel(_model(), dummy_input=data[0], quant_scheme=scheme)
        sim.compute_encodings(pass_calibration_data, data)
        sim.model.train()
        opt = torch.optim.SGD(sim.model.parameters(), lr=0.01)
        before = sim.model.conv2.weight.detach().clone()
        loss = sim.model(data[0]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert not torch.equal(before, sim.model.conv2.weight)
        learned = [m for m in sim.model.modules() if isinstance(m, fxquant.LearnableFakeQuantize)]
        if scheme is QuantScheme.training_range_learning_with_tf_init:
            assert learned and all(m.scale.grad is not None for m in learned)
        else:
            assert not learned


def test_adaround_then_quantsim_with_frozen_param_encodings(tmp_path):
    model, data = _model(), _data()
    fold_all_batch_norms(model, (1, 3, 8, 8))
    params = AdaroundParameters(data_loader=data, num_batches=2, default_num_iterations=40)
    ada_model = Adaround.apply_adaround(model, data[0], params, path=str(tmp_path),
                                        filename_prefix="adaround", default_param_bw=4)
    enc = json.loads((tmp_path / "adaround.encodings").read_text())
    assert set(enc["param_encodings"]) == {"conv1.weight", "conv2.weight", "fc.weight"}
    scale = enc["param_encodings"]["conv1.weight"][0]["scale"]
    codes = ada_model.conv1.weight.detach() / scale
    assert torch.allclose(codes, codes.round(), atol=1e-3)  # on the 4-bit grid
    sim = QuantizationSimModel(ada_model, dummy_input=data[0], default_param_bw=4,
                               default_output_bw=8,
                               quant_scheme=QuantScheme.post_training_tf_enhanced)
    sim.set_and_freeze_param_encodings(str(tmp_path / "adaround.encodings"))
    sim.compute_encodings(pass_calibration_data, data)
    fq = sim.model.conv1.weight_fake_quant
    assert fq.fixed_in_qat and float(fq.qparams().scale) == pytest.approx(scale, rel=1e-6)
    assert torch.equal(fq(sim.model.conv1.weight), ada_model.conv1.weight.detach())


def test_auto_quant_and_cle(tmp_path):
    model, data = _model(), _data()
    x = data[0]
    with torch.no_grad():
        ref = model(x)

    def eval_callback(m):
        with torch.no_grad():
            return -float((m(x) - ref).square().mean()) * 1000

    auto = AutoQuant(model, x, data, eval_callback, results_dir=str(tmp_path))
    sim, initial = auto.run_inference()
    assert isinstance(sim, QuantizationSimModel) and initial == eval_callback(sim.model)
    auto.set_adaround_params(AdaroundParameters(data, num_batches=2, default_num_iterations=20))
    _, accuracy, encodings = auto.optimize(allowed_accuracy_drop=1.0)
    assert accuracy >= eval_callback(model) - 1.0 and encodings is not None
    cle = _model()
    equalize_model(cle, input_shapes=(1, 3, 8, 8))
    assert isinstance(cle.bn1, nn.Identity)
    with torch.no_grad():
        assert torch.allclose(cle(x), ref, atol=1e-4)


@pytest.mark.parametrize("backend", ["generic", "onnxruntime"])
def test_real_aimet_strict_loader_reproduces_fxquant_bit_exactly(tmp_path, backend):
    aimet_quantsim = pytest.importorskip("aimet_onnx.quantsim")
    model, data = _model(), _data()
    qmodel = fxquant.prepare(model, data[0], fxquant.default_calibration_qconfig_setter,
                             backend=backend)
    fxquant.calibrate(qmodel, data, progress=False)
    onnx_path = tmp_path / "m.onnx"
    fxquant.export_onnx(qmodel, data[0], onnx_path, quantize=False)
    fxquant.export_encodings(qmodel, tmp_path / "m.encodings", onnx_path=onnx_path)
    fxquant.export_quantsim_config(qmodel, tmp_path / "cfg.json", onnx_path=onnx_path)
    sim = aimet_quantsim.QuantizationSimModel(onnx.load(onnx_path),
                                              config_file=str(tmp_path / "cfg.json"))
    aimet_quantsim.load_encodings_to_sim(sim, str(tmp_path / "m.encodings"), strict=True)
    x = data[1]
    got = sim.session.run(None, {sim.session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert np.array_equal(got, qmodel(x).numpy())


def test_real_aimet_loads_the_compat_export(tmp_path):
    aimet_quantsim = pytest.importorskip("aimet_onnx.quantsim")
    _, sim, data = _ptq(tmp_path)
    asim = aimet_quantsim.QuantizationSimModel(
        onnx.load(tmp_path / "model.onnx"),
        config_file=str(tmp_path / "model_quantsim_config.json"))
    aimet_quantsim.load_encodings_to_sim(asim, str(tmp_path / "model.encodings"), strict=True)
    x = data[1]
    got = asim.session.run(None, {asim.session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert np.array_equal(got, sim.model(x).numpy())


@pytest.mark.parametrize("backend", ["generic", "onnxruntime"])
def test_real_aimet_from_onnx_qdq_reproduces_fxquant(tmp_path, backend):
    """AIMET reads fxquant's QDQ file (``from_onnx_qdq``): the same outputs bit for bit."""
    aimet_quantsim = pytest.importorskip("aimet_onnx.quantsim")
    model, data = _model(), _data()
    qmodel = fxquant.prepare(model, data[0], fxquant.default_calibration_qconfig_setter,
                             backend=backend)
    fxquant.calibrate(qmodel, data, progress=False)
    fxquant.export_onnx(qmodel, data[0], tmp_path / "q.onnx")
    sim = aimet_quantsim.QuantizationSimModel.from_onnx_qdq(onnx.load(tmp_path / "q.onnx"))
    x = data[1]
    got = sim.session.run(None, {sim.session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert np.array_equal(got, qmodel(x).numpy())
