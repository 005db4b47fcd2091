"""Empirical bias correction: the quantized model's per-channel output mean moves to float."""

from __future__ import annotations

import copy
import doctest
import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant.algorithms.bias_correction import bias_correction

from .test_bn_fold import randomize_bn

bc_module = importlib.import_module("fxquant.algorithms.bias_correction")


def sqnr_db(ref: torch.Tensor, y: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - y).pow(2).mean()))


def spread_channels(model: nn.Module) -> nn.Module:
    """Output-channel scales spread over 1.5 decades (small channels are rounded coarsely by a
    per-tensor 4-bit grid) plus a common positive offset: the rounding errors of a channel do
    not cancel, and post-ReLU inputs have a positive mean, so the output mean shifts."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                n = m.weight.shape[0]
                spread = torch.logspace(-1.5, 0, n)[torch.randperm(n, generator=gen)]
                m.weight.mul_(spread.reshape(-1, *[1] * (m.weight.dim() - 1)))
                m.weight.add_(0.02 * m.weight.abs().mean())
    return model


class Net(nn.Module):
    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16) if bn else nn.Identity()
        self.c2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.c3 = nn.Conv2d(32, 8, 1)
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        x = F.relu(self.c2(F.relu(self.bn(self.c1(x)))))
        y = self.c3(x)
        return y, self.fc(F.relu(y).mean((2, 3)))


QCONFIG = fxquant.get_qconfig(weight_dtype=fxquant.qint4, weight_per_channel=False)


def _setup(bn: bool):
    model = spread_channels(Net(bn))
    if bn:
        randomize_bn(model)
    model.eval()
    calib = [torch.randn(16, 3, 12, 12) + 0.5 for _ in range(6)]
    test = torch.randn(64, 3, 12, 12) + 0.5
    qmodel = fxquant.prepare(model, calib[0], QCONFIG)
    fxquant.calibrate(qmodel, calib, progress=False)
    return model, qmodel, calib, test


def _errors(model, qmodel, x):
    with torch.no_grad():
        (ref, ref_fc), (y, y_fc) = model(x), qmodel(x)
    mean_err = (y.mean((0, 2, 3)) - ref.mean((0, 2, 3))).abs().mean().item()
    return mean_err, sqnr_db(ref, y), sqnr_db(ref_fc, y_fc)


@pytest.mark.parametrize("bn", [False, True], ids=["conv", "conv_bn"])
def test_bias_correction_moves_the_output_mean_to_float(bn):
    model, qmodel, calib, test = _setup(bn)
    if bn:
        assert isinstance(qmodel.c1, fxquant.nn.ConvBn2d)
    before = _errors(model, qmodel, test)
    out = bias_correction(qmodel, calib, progress=False)
    assert out is qmodel
    after = _errors(model, qmodel, test)
    print(
        f"bn={bn}: mean error {before[0]:.2e} -> {after[0]:.2e}, "
        f"SQNR {before[1]:.1f} -> {after[1]:.1f} dB, fc {before[2]:.1f} -> {after[2]:.1f} dB"
    )
    assert after[0] <= 0.5 * before[0]
    assert after[1] > before[1] + 1.0
    assert after[2] >= before[2]
    assert qmodel.c2.bias is not None  # created for the bias-free conv
    if bn:
        assert qmodel.c1.bias is not None and qmodel.c1.bn.bias is not None


class Untraceable(nn.Module):
    """Root forward fxquant captures eagerly: leaf modules run their quantizers inside."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        x = F.relu(self.c1(x))
        if x.mean() > -1:  # data-dependent: not traceable
            x = x * 1.0
        return self.c2(x)


def test_bias_correction_on_an_eagerly_captured_model():
    model = spread_channels(Untraceable()).eval()
    calib = [torch.randn(16, 3, 12, 12) + 0.5 for _ in range(6)]
    test = torch.randn(64, 3, 12, 12) + 0.5
    qmodel = fxquant.prepare(model, calib[0], QCONFIG)
    fxquant.calibrate(qmodel, calib, progress=False)
    assert fxquant.graph.get_report(qmodel).capture_mode == "eager"

    def mean_err():
        with torch.no_grad():
            ref, y = model(test), qmodel(test)
        return (y.mean((0, 2, 3)) - ref.mean((0, 2, 3))).abs().mean().item()

    before = mean_err()
    bias_correction(qmodel, calib, progress=False)
    assert mean_err() <= 0.5 * before


def test_bias_correction_is_deterministic_and_keeps_mode():
    _, qa, calib, _ = _setup(False)
    qb = copy.deepcopy(qa)
    qa.train()
    bias_correction(qa, calib, progress=False)
    bias_correction(qb, calib, num_batches=len(calib), progress=False)
    assert qa.training and not qb.training
    sa, sb = qa.state_dict(), qb.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bias_correction_uses_num_batches_and_changes_only_biases():
    _, qmodel, calib, _ = _setup(False)
    before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    bias_correction(qmodel, iter(calib), num_batches=2, progress=False)
    changed = {
        k
        for k, v in qmodel.state_dict().items()
        if k not in before or not torch.equal(v, before[k])
    }
    assert changed == {"c1.bias", "c2.bias", "c3.bias", "fc.bias"}


def test_bias_correction_refuses_observing_quantizers():
    model = Net().eval()
    qmodel = fxquant.prepare(model, torch.randn(2, 3, 8, 8), QCONFIG)  # still in QAT
    with pytest.raises(ValueError, match="calibrate"):
        bias_correction(qmodel, [torch.randn(2, 3, 8, 8)], progress=False)
    fxquant.calibrate(qmodel, [torch.randn(2, 3, 8, 8)], progress=False)
    with pytest.raises(ValueError, match="no batch"):
        bias_correction(qmodel, [], progress=False)


def test_reused_module_gets_the_mean_correction_of_all_calls():
    class Reuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(F.relu(self.fc(x)))

    model = spread_channels(Reuse()).eval()
    calib = [torch.rand(32, 8) for _ in range(4)]
    qmodel = fxquant.prepare(model, calib[0], QCONFIG)
    fxquant.calibrate(qmodel, calib, progress=False)
    fc = qmodel.fc
    w_float, w_quant = fc.weight.detach(), fc.fake_quantized_weight().detach()
    inputs = []
    handle = fc.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
    with torch.no_grad():
        for x in calib:
            qmodel(x)
    handle.remove()
    assert len(inputs) == 2 * len(calib)
    expected = torch.cat([x @ (w_float - w_quant).T for x in inputs]).mean(0)
    bias = fc.bias.detach().clone()
    bias_correction(qmodel, calib, progress=False)
    assert torch.allclose(fc.bias.detach() - bias, expected, atol=1e-6)


def test_docstring_examples_run():
    assert doctest.testmod(bc_module, raise_on_error=True).attempted > 0
