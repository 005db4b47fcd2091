"""fold_bn: equivalence, which pairs fold (and which must not), fallbacks, prepared models."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import fxquant
from fxquant.algorithms import bn_fold
from fxquant.algorithms.bn_fold import fold_bn, fold_layer_bn, get_bn_fold_report


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters (negative gamma included)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.25, 4)
                if m.affine:
                    m.weight.uniform_(-2, 2)
                    m.bias.uniform_(-1, 1)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


class FoldNet(nn.Module):
    """conv-bn, conv-bn-relu, grouped convtranspose-bn, conv1d-bn1d, linear-bn1d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2)
        self.bn_up = nn.BatchNorm2d(6)
        self.conv1d = nn.Conv1d(6, 4, 3)
        self.bn1d = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 5)
        self.bn_fc = nn.BatchNorm1d(5)

    def forward(self, x):
        x = self.bn(self.conv(x))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.bn_up(self.up(x))
        x = self.bn1d(self.conv1d(x.flatten(2)))
        return self.bn_fc(self.fc(F.relu(x).mean(2)))


EXPECTED = [("conv", "bn"), ("conv2", "bn2"), ("up", "bn_up"), ("conv1d", "bn1d"), ("fc", "bn_fc")]


def test_fold_bn_preserves_outputs_and_counts_pairs():
    model = randomize_bn(FoldNet()).eval()
    x = torch.randn(4, 3, 8, 8)
    folded = fold_bn(model)
    report = get_bn_fold_report(folded)
    assert report.pairs() == EXPECTED
    assert all(r.found_by == "fx trace" for r in report.folded)
    assert not report.skipped
    for _, bn in EXPECTED:
        assert type(folded.get_submodule(bn)) is nn.Identity
        assert isinstance(model.get_submodule(bn), nn.modules.batchnorm._BatchNorm)  # untouched
    assert folded.conv2.bias is not None  # a bias is created when the conv had none
    with torch.no_grad():
        assert rel_err(folded(x), model(x)) <= 1e-5
    rec = report.stats("conv")
    assert torch.equal(rec.gamma, model.bn.weight.detach())
    assert torch.equal(rec.beta, model.bn.bias.detach())


def test_fold_bn_is_deterministic_and_idempotent():
    model = randomize_bn(FoldNet()).eval()
    a, b = fold_bn(model), fold_bn(model)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    again = fold_bn(a)
    assert get_bn_fold_report(again).pairs() == EXPECTED  # kept, nothing new folded
    for k, v in a.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


class NoFold(nn.Module):
    """Pairs that must not fold: shared conv output, reused conv, no running stats, bn first."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Conv2d(3, 4, 1)
        self.bn_shared = nn.BatchNorm2d(4)
        self.reused = nn.Conv2d(4, 4, 1)
        self.bn_reused = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn_nostats = nn.BatchNorm2d(4, track_running_stats=False)
        self.bn_first = nn.BatchNorm2d(4)
        self.last = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.shared(x)
        x = self.bn_shared(y) + y
        x = self.bn_reused(self.reused(self.reused(x)))
        x = self.bn_nostats(self.conv(x))
        return self.last(self.bn_first(x))


def test_fold_bn_leaves_unsafe_pairs_alone():
    model = randomize_bn(NoFold()).eval()
    folded = fold_bn(model)
    report = get_bn_fold_report(folded)
    assert report.folded == []
    assert [(a, b) for a, b, _ in report.skipped] == [("conv", "bn_nostats")]
    assert "running statistics" in report.skipped[0][2]
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        assert torch.equal(folded(x), model(x))


class Untraceable(nn.Module):
    """Root forward with data-dependent control flow: its own conv -> bn is not seen; the
    traceable child ``block`` is searched on its own graph."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.block(x)
        if x.mean() > 0:  # not traceable
            x = x * 2
        return self.bn(self.conv(x))


class WithIsland(nn.Module):
    """Traceable root around an untraceable submodule: the root's pair folds, the island's
    conv -> bn (not in a Sequential) does not, the Sequential inside it does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.island = Untraceable()

    def forward(self, x):
        return self.island(self.bn(self.conv(x)) - 0.1)


class CheckedSequential(nn.Sequential):
    """A Sequential whose own forward cannot be traced: children are paired by order."""

    def forward(self, x):
        if not torch.isfinite(x).all():  # not traceable
            raise ValueError("non-finite input")
        return super().forward(x)


def test_untraceable_forward_searches_children():
    model = randomize_bn(Untraceable()).eval()
    folded = fold_bn(model)
    report = get_bn_fold_report(folded)
    assert report.pairs() == [("block.0", "block.1")]
    assert report.folded[0].found_by == "fx trace"
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert rel_err(folded(x), model(x)) <= 1e-5


def test_untraceable_sequential_folds_neighbours_by_order():
    model = CheckedSequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4),
        nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)),
    )  # fmt: skip
    model = randomize_bn(model).eval()
    folded = fold_bn(model)
    report = get_bn_fold_report(folded)
    assert report.pairs() == [("0", "1"), ("4.0", "4.1")]
    assert [r.found_by for r in report.folded] == ["nn.Sequential order", "fx trace"]
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert rel_err(folded(x), model(x)) <= 1e-5


def test_untraceable_submodule_is_searched_separately():
    model = randomize_bn(WithIsland()).eval()
    folded = fold_bn(model)
    pairs = get_bn_fold_report(folded).pairs()
    assert pairs == [("conv", "bn"), ("island.block.0", "island.block.1")]
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert rel_err(folded(x), model(x)) <= 1e-5


def test_fold_bn_on_prepared_model_keeps_weight_quantizers():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4),
    )  # fmt: skip
    model = randomize_bn(model).eval()
    data = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    qmodel = fxquant.prepare(model, data[0], fxquant.default_calibration_qconfig_setter)
    fxquant.calibrate(qmodel, data, progress=False)
    assert isinstance(qmodel.get_submodule("0"), fxquant.nn.ConvBn2d)
    folded = fold_bn(qmodel)
    assert isinstance(qmodel.get_submodule("0"), fxquant.nn.ConvBn2d)  # original untouched
    report = get_bn_fold_report(folded)
    assert report.pairs() == [("0", "0.bn"), ("3", "3.bn")]
    for path in ("0", "3"):
        conv = folded.get_submodule(path)
        assert type(conv) is fxquant.nn.QuantConv2d
        assert torch.equal(
            conv.weight_fake_quant.scale, qmodel.get_submodule(path).weight_fake_quant.scale
        )
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), qmodel(x), rtol=0, atol=1e-6)


@given(
    transpose=st.booleans(),
    groups=st.sampled_from([1, 2, 4]),
    per_group_in=st.integers(1, 3),
    per_group_out=st.integers(1, 3),
    affine=st.booleans(),
)
def test_fold_layer_bn_matches_layer_then_bn(
    transpose, groups, per_group_in, per_group_out, affine
):
    cin, cout = groups * per_group_in, groups * per_group_out
    layer_cls = nn.ConvTranspose2d if transpose else nn.Conv2d
    layer = layer_cls(cin, cout, 3, groups=groups, padding=1).eval()
    bn = randomize_bn(nn.BatchNorm2d(cout, affine=affine)).eval()
    w, b = fold_layer_bn(layer, bn)
    x = torch.randn(2, cin, 5, 5)
    ref = bn(layer(x))
    fn = F.conv_transpose2d if transpose else F.conv2d
    got = fn(x, w, b, padding=1, groups=groups)
    assert rel_err(got, ref.detach()) <= 1e-5


def test_docstring_examples_run():
    assert doctest.testmod(bn_fold, raise_on_error=True).attempted > 0


def test_fold_bn_report_is_kept_on_graph_modules():
    traced = torch.fx.symbolic_trace(randomize_bn(FoldNet()).eval())
    folded = fold_bn(traced)
    assert get_bn_fold_report(folded).pairs() == EXPECTED
    assert get_bn_fold_report(traced).pairs() == []


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fold_bn_keeps_the_training_flag(mode):
    model = FoldNet().train(mode == "train")
    assert fold_bn(model).training is (mode == "train")
