"""One grid per quantizer: the ONNX file, the AIMET encodings and the torch int8 model all carry
exactly ``fq.qparams()`` -- for learned (LSQ, after QAT steps: non-integer zero point),
fixed-scale, int16 and per-channel quantizers."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

import fxquant
from fxquant.convert import convert
from fxquant.export.naming import q_output, quantized_tensor_name
from fxquant.graph import get_report
from fxquant.numerics import QParams

pytest.importorskip("onnxruntime")


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.conv1(x)  # no relu: the LSQ range is two-sided, its zero point moves
        x = F.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def trained():
    """x86 profile; conv1 LSQ (asymmetric activations, per-channel weights), conv2 a fixed
    activation scale, fc an int16 output; a few QAT steps move the LSQ ranges."""
    torch.manual_seed(0)
    setter = fxquant.ModuleNameQconfigSetter({
        "conv1": fxquant.get_qconfig(learnable=True, symmetric=False, out_dtype=fxquant.quint8),
        "conv2": fxquant.get_qconfig(fixed_scale=0.05, out_dtype=fxquant.quint8),
        "fc": fxquant.get_qconfig(out_dtype=fxquant.qint16),
    })
    data = [torch.randn(4, 3, 8, 8) for _ in range(4)]
    qmodel = fxquant.prepare(_Net().eval(), data[0],
                             (setter, fxquant.default_calibration_qconfig_setter), backend="x86")
    fxquant.calibrate(qmodel, data, progress=False)
    fxquant.set_fake_quantize(qmodel, fxquant.FakeQuantState.QAT)
    groups: dict[str, list] = {"scale": [], "zero_point": [], "": []}
    for n, p in qmodel.named_parameters():
        groups[next((k for k in ("scale", "zero_point") if n.endswith(k)), "")].append(p)
    opt = torch.optim.Adam([{"params": groups[""], "lr": 1e-3},
                            {"params": groups["scale"], "lr": 1e-3},
                            {"params": groups["zero_point"], "lr": 0.3}])
    for x in data * 2:  # wider than the calibration data: clipping moves the zero point
        loss = (qmodel.train()(3 * x) - 1.0).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    fxquant.set_fake_quantize(qmodel, fxquant.FakeQuantState.VALIDATION)
    return qmodel.eval(), data[0]


def _quantizers(qmodel) -> dict[str, tuple[fxquant.FakeQuantize, str]]:
    """ONNX tensor name -> (quantizer, module path)."""
    out = {}
    for path, op, role in get_report(qmodel).quantizers():
        out[quantized_tensor_name(op, role)] = (qmodel.get_submodule(path), path)
    return out


def test_the_model_has_every_kind_of_quantizer(trained):
    qmodel, _ = trained
    fqs = [fq for fq, _ in _quantizers(qmodel).values()]
    lsq_acts = [fq for fq in fqs if isinstance(fq, fxquant.LearnableFakeQuantize)
                and not fq.is_weight]
    assert lsq_acts, "no learnable activation quantizer"
    for fq in lsq_acts:  # QAT moved the range off the grid of integers
        zp = fq.zero_point.detach()
        assert bool(((zp - zp.round()).abs() > 1e-4).all()), zp
        assert not torch.equal(fq.qparams().zero_point.double(), zp.double())
    assert any(isinstance(fq, fxquant.LearnableFakeQuantize) and fq.ch_axis is not None
               for fq in fqs)
    assert any(isinstance(fq.observer, fxquant.FixedScaleObserver) for fq in fqs)
    assert any(fq.dtype == fxquant.qint16 for fq in fqs)


def _flat(values, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().to(dtype).reshape(-1)
    return torch.as_tensor(np.array(values), dtype=dtype).reshape(-1)  # a writable copy


def _same(qp: QParams, scale, zero_point) -> None:
    scale, zero_point = _flat(scale, torch.float64), _flat(zero_point, torch.int64)
    assert torch.equal(scale, qp.scale.double().reshape(-1)), (scale, qp.scale)
    assert torch.equal(zero_point, qp.zero_point.reshape(-1)), (zero_point, qp.zero_point)


def test_onnx_file_holds_qparams(trained, tmp_path):
    qmodel, x = trained
    path = tmp_path / "model.onnx"
    fxquant.export_onnx(qmodel, x, str(path))
    model = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q_to = {n.output[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    dq_to = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    checked = 0
    for tensor, (fq, _path) in _quantizers(qmodel).items():
        # a weight: its DequantizeLinear outputs the weight tensor; an activation: the
        # QuantizeLinear of tensor T outputs T_quantized (fxquant.export.naming)
        node = dq_to.get(tensor) if fq.is_weight else q_to.get(q_output(tensor))
        assert node is not None, f"no Q/DQ for {tensor}"
        _same(fq.qparams(), init[node.input[1]], init[node.input[2]])
        checked += 1
    assert checked == len(_quantizers(qmodel))


@pytest.mark.parametrize("version", ["0.6.1", "1.0.0"])
def test_encodings_hold_qparams(trained, version):
    qmodel, _ = trained
    enc = fxquant.export_encodings(qmodel, None, version=version)
    for tensor, (fq, _path) in _quantizers(qmodel).items():
        qp = fq.qparams()
        section = "param_encodings" if fq.is_weight else "activation_encodings"
        if version == "0.6.1":
            entries = enc[section][tensor]
            scales = [e["scale"] for e in entries]
            zps = [qp.dtype.qmin - e["offset"] for e in entries]
        else:
            entry = next(e for e in enc[section] if e["name"] == tensor)
            scales = entry["scale"]
            zps = [qp.dtype.narrow(False).qmin - o for o in entry["offset"]]
        _same(qp, scales, zps)


def test_int8_model_holds_qparams(trained):
    qmodel, _ = trained
    converted = convert(qmodel, keep_float=True)  # the int16 fc stays float
    modules = dict(converted.module.named_modules())
    for name in ("conv1", "conv2"):  # conv (-> relu) -> quantizer: one quantized module each
        qmod = modules[name]
        wq = qmodel.get_submodule(f"{name}.weight_fake_quant").qparams()
        w = qmod.weight()
        _same(wq, w.q_per_channel_scales(), w.q_per_channel_zero_points())
        out = _output_quantizer(qmodel, name)
        shift = 128 if out.dtype.signed else 0  # torch's quint8 grid
        _same(out.qparams(), [qmod.scale], [qmod.zero_point - shift])
    x_fq = qmodel.get_submodule("x.output_fake_quant")
    q_node = next(n for n in converted.module.graph.nodes
                  if n.target is torch.quantize_per_tensor)
    shift = 128 if x_fq.dtype.signed else 0
    _same(x_fq.qparams(), [q_node.args[1]], [q_node.args[2] - shift])


def _output_quantizer(qmodel, conv: str) -> fxquant.FakeQuantize:
    """The quantizer of ``conv``'s output (after the relu when one follows)."""
    node = next(n for n in qmodel.graph.nodes if n.op == "call_module" and n.target == conv)
    while not isinstance(qmodel.get_submodule(node.target) if node.op == "call_module"
                         else None, fxquant.FakeQuantize):
        node = next(iter(node.users))
    return qmodel.get_submodule(node.target)


@pytest.fixture()
def degenerate(trained):
    """The LSQ activation range pushed past what forward applies: a scale below eps and a
    zero point beyond the grid (forward clamps both)."""
    qmodel, x = trained
    qmodel = copy.deepcopy(qmodel)
    fq = _output_quantizer(qmodel, "conv1")
    with torch.no_grad():
        fq.scale.fill_(-0.5)
        fq.zero_point.fill_(fq.dtype.qmax + 7.6)
    qp = fq.qparams()
    assert float(qp.scale) == fq.eps and int(qp.zero_point) == fq.dtype.qmax
    return qmodel, x, fq


def test_encodings_and_int8_model_apply_the_clamped_grid(degenerate):
    qmodel, _, fq = degenerate
    tensor = next(t for t, (q, _) in _quantizers(qmodel).items() if q is fq)
    entry = fxquant.export_encodings(qmodel, None)["activation_encodings"][tensor][0]
    _same(fq.qparams(), [entry["scale"]], [fq.dtype.qmin - entry["offset"]])
    converted = convert(qmodel, keep_float=True)
    qmod = dict(converted.module.named_modules())["conv1"]
    _same(fq.qparams(), [qmod.scale], [qmod.zero_point])


def test_onnx_file_applies_the_clamped_grid(degenerate, tmp_path):
    qmodel, x, fq = degenerate
    tensor = next(t for t, (q, _) in _quantizers(qmodel).items() if q is fq)
    path = tmp_path / "model.onnx"
    fxquant.export_onnx(qmodel, x, str(path))
    model = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.output[0] == q_output(tensor))
    _same(fq.qparams(), init[node.input[1]], init[node.input[2]])
