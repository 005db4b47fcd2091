"""prepare on patterns met in timm models: weight-only subgraphs, BatchNorm subclasses calling
F.batch_norm, and call-site quantizers of eager capture that data never reached."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant import QuantizerError
from fxquant.graph import get_report

from .models import ConvBnAct


# -- weight-only subgraphs ------------------------------------------------------------------------
class StdConv(nn.Conv2d):
    """timm's StdConv2d: the weight is standardized with F.batch_norm before the conv."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         training=True, momentum=0.0, eps=1e-5).reshape_as(self.weight)
        return F.conv2d(x, w * 0.1, self.bias, self.stride, self.padding)


def test_weight_only_subgraph_gets_no_activation_quantizers():
    model = nn.Sequential(StdConv(3, 8, 3))
    x = torch.randn(2, 3, 8, 8)
    qmodel = fxquant.prepare(model, x, fxquant.default_calibration_qconfig_setter,
                             backend="onnxruntime")
    ops = get_report(qmodel).ops
    for name in ("0._generated_batch_norm_0", "0._generated_reshape_as_0", "0._generated_mul_0"):
        assert not ops[name].quantizers, (name, ops[name].quantizers)
    conv = ops["0._generated_conv2d_0"].quantizers
    assert set(conv) == {"output", "weight"}
    wfq = qmodel.get_submodule(conv["weight"])
    assert wfq.ch_axis == 0  # per channel on the computed weight
    fxquant.calibrate(qmodel, [x], progress=False)
    torch.testing.assert_close(qmodel(x), model(x), atol=0.05, rtol=0.05)


class ConstFeedsActivation(nn.Module):
    """A constant computed from a parameter, read as data by an op on the input: quantized
    where that op reads it (like a parameter), not as an op output of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 4, 8))
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x) + self.pos.sigmoid() * 2


def test_constant_read_by_an_activation_op_is_quantized_once():
    qmodel = fxquant.prepare(ConstFeedsActivation(), torch.randn(2, 4, 8),
                             fxquant.default_calibration_qconfig_setter, backend="onnxruntime")
    ops = get_report(qmodel).ops
    assert not ops["_generated_sigmoid_0"].quantizers
    assert set(ops["_generated_mul_0"].quantizers) == {"output"}  # the add's second input
    assert set(ops["_generated_add_0"].quantizers) == {"output"}


# -- BatchNorm subclasses calling F.batch_norm (timm BatchNormAct2d) ------------------------------
@pytest.mark.parametrize("train", [False, True])
def test_conv_before_functional_batch_norm_is_folded(train):
    model = ConvBnAct()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    nn.init.uniform_(model.bn.weight, 0.5, 1.5)
    model.train(train)
    x = torch.randn(4, 3, 8, 8)
    qmodel = fxquant.prepare(model, x, fxquant.default_calibration_qconfig_setter)
    rep = get_report(qmodel)
    conv = rep.ops["conv"]
    assert conv.folded == "bn._generated_batch_norm_0"
    assert "bn._generated_batch_norm_0" not in rep.ops
    assert set(conv.quantizers) == {"weight"}  # conv -> relu fused: quantized after the relu
    assert "output" in rep.ops["bn._generated_relu_0"].quantizers
    assert isinstance(qmodel.conv, fxquant.nn.ConvBn2d)
    if not train:  # traced in train mode, the example run updated the copy's running stats
        fxquant.calibrate(qmodel, [x], progress=False)
        torch.testing.assert_close(qmodel(x), model(x), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("functional", [False, True])
def test_no_quantizer_between_conv_and_an_unfolded_batch_norm(functional):
    conv_bn = ConvBnAct() if functional else nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    qmodel = fxquant.prepare(conv_bn.eval(), torch.randn(2, 3, 8, 8),
                             fxquant.default_calibration_qconfig_setter, fold_bn=False)
    ops = get_report(qmodel).ops
    conv, bn = ("conv", "bn._generated_relu_0") if functional else ("0", "1")
    assert set(ops[conv].quantizers) == {"weight"}
    assert "output" in ops[bn].quantizers


# -- eager capture: call sites the data never reached ---------------------------------------------
class Branchy(nn.Module):
    """Data-dependent control flow: the root forward is captured eagerly."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        y = self.fc(x)
        if float(y.mean()) > 0:
            y = y * 2
        else:
            y = y + 1
        return torch.sigmoid(y)


def _split_by_branch(model: Branchy):
    xs = [torch.randn(4, 8) for _ in range(40)]
    with torch.no_grad():
        pos = [x for x in xs if float(model.fc(x).mean()) > 0]
        neg = [x for x in xs if float(model.fc(x).mean()) <= 0]
    assert pos and neg
    return pos, neg


def test_uncalibrated_call_site_quantizer_raises_a_clear_error():
    model = Branchy()
    pos, neg = _split_by_branch(model)
    qmodel = fxquant.prepare(model, pos[0], fxquant.default_calibration_qconfig_setter)
    fxquant.calibrate(qmodel, neg[:3], progress=False)  # never takes the `y * 2` branch
    qmodel(neg[0])
    with pytest.raises(QuantizerError, match=r"_generated_mul_0.*mul at .*test_capture_fixes"
                       r"\.py:\d+.*calibration never reached this op.*reaches it"):
        qmodel(pos[0])


def test_call_site_not_seen_by_prepare_warns_once():
    model = Branchy()
    pos, neg = _split_by_branch(model)
    qmodel = fxquant.prepare(model, pos[0], fxquant.default_calibration_qconfig_setter)
    fxquant.calibrate(qmodel, pos[:3], progress=False)
    with pytest.warns(UserWarning, match=r"add at .* did not run with the example inputs"):
        qmodel(neg[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qmodel(neg[1])  # once per call site
        qmodel(pos[0])


def test_identity_between_conv_and_relu_is_skipped():
    """``fold_bn`` leaves ``nn.Identity`` where the BN was: conv -> Identity -> relu still
    fuses (no quantizer on the conv output)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    folded = fxquant.fold_bn(model)
    x = torch.randn(2, 3, 6, 6)
    q = fxquant.prepare(folded, x, fxquant.default_calibration_qconfig_setter)
    quantizers = [n for n, m in q.named_modules() if isinstance(m, fxquant.FakeQuantize)]
    assert not any(n.startswith("0.output") for n in quantizers), quantizers
    fxquant.calibrate(q, [x], progress=False)
    assert torch.allclose(q(x), model(x), atol=0.1)


def test_prepare_inplace_shares_the_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model[4].weight.detach().clone()
    q = fxquant.prepare(model, torch.randn(2, 3, 6, 6), inplace=True)
    assert q.get_parameter("4.weight") is model[4].weight
    q.train()(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()
    assert not torch.equal(model[4].weight, before)
    with pytest.raises(fxquant.CaptureError, match="already prepared"):
        fxquant.prepare(model, torch.randn(2, 3, 6, 6))  # it holds quantizers now
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
    copy = fxquant.prepare(fresh, torch.randn(2, 3, 6, 6))
    assert copy.get_parameter("3.weight") is not fresh[3].weight


# -- ops that read only the shape of their second input -------------------------------------------
class LikeOps(nn.Module):
    """levit-style ``x.flatten(2).reshape_as(x)``, ``view_as``, ``expand_as``, ``type_as``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        z = y.flatten(2).reshape_as(y).view_as(y).type_as(y)
        return z + torch.ones(1, 4, 1, 1).expand_as(y)


def test_like_ops_keep_their_first_inputs_grid():
    x = torch.randn(2, 3, 8, 8)
    q = fxquant.prepare(LikeOps().eval(), x, fxquant.default_calibration_qconfig_setter)
    fxquant.calibrate(q, [x], progress=False)
    names = [name for name, m in q.named_modules() if isinstance(m, fxquant.FakeQuantize)
             and not m.is_weight]
    # the like-ops are SHARE ops of the ReLU's output: no quantizer of their own
    assert not [n for n in names if "_as" in n], names
    assert torch.equal(q(x), q(x))


# -- eager glue ops feeding an op whose input the profile keeps float ------------------------------
class GlueAttention(nn.Module):
    """Attention written in an untraceable forward (data-dependent branch), as torchvision's
    shifted-window attention: scores, a bias added, softmax, then the product with v."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.bias = nn.Parameter(torch.randn(4, 4) * 0.1)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-2, -1)
        if bool(scores.sum() > 1e9):  # never taken; defeats symbolic tracing
            scores = scores * 0.5
        scores = scores + self.bias
        return F.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("backend", ["onnxruntime", "x86"])
def test_eager_glue_op_feeding_softmax_follows_the_profile(backend):
    """ONNX Runtime keeps softmax's input float (float_input_ops): the glue op producing it gets
    no output quantizer, as in a traced graph (else ORT runs QLinearSoftmax, which the simulation
    does not compute); a profile without the rule quantizes it."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8)
    qmodel = fxquant.prepare(GlueAttention(), x, fxquant.default_calibration_qconfig_setter,
                             backend=backend)
    fxquant.calibrate(qmodel, [x], progress=False)
    ops = get_report(qmodel).ops
    add = ops["_generated_add_0"]
    if backend == "onnxruntime":
        assert not add.quantizers and "feeds softmax" in add.float_reason
        assert "_generated_add_0" in [r.name for r in fxquant.summary(qmodel).float_ops]
    else:
        assert "output" in add.quantizers
    assert "output" in ops["_generated_softmax_0"].quantizers
    with torch.no_grad():
        assert torch.isfinite(qmodel(x)).all()
