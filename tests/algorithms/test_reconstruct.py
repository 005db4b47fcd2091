"""Block discovery and block reconstruction (BRECQ + QDrop)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant.algorithms.adaround import adaround
from fxquant.algorithms.blocks import find_blocks
from fxquant.algorithms.reconstruct import (
    ReconstructGranularity,
    _keep_float_mask,
    reconstruct,
)
from fxquant.numerics import fake_quantize

from .test_adaround import (
    accuracy,
    digits_setup,
    prepared,
    quantized_weight_and_quantizer,
    sqnr,
)


# -- models ---------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class TinyResNet(nn.Module):
    """torchvision's layout: ``layerN`` Sequentials of BasicBlocks, an ``fc`` head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Attention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x, mask):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5 + mask, dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.self_attn = Attention(d, heads)
        self.norm1 = nn.LayerNorm(d)
        self.linear1 = nn.Linear(d, 2 * d)
        self.linear2 = nn.Linear(2 * d, d)
        self.norm2 = nn.LayerNorm(d)

    def forward(self, x, mask):
        x = self.norm1(x + self.self_attn(x, mask))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class TinyEncoder(nn.Module):
    """Token embedding (a linear), two encoder layers with an additive mask, a linear head."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(6, d)
        self.layers = nn.ModuleList([EncoderLayer(d, 2) for _ in range(2)])
        self.head = nn.Linear(d, 3)

    def forward(self, x, mask):
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x, mask)
        return self.head(x.mean(1))


def _encoder_inputs(n: int = 16, t: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(t, t).masked_fill(torch.ones(t, t).triu(1).bool(), -1e4)
    return torch.randn(n, t, 6), mask


# -- block discovery -----------------------------------------------------------------------------
def test_blocks_of_a_resnet_are_its_residual_blocks():
    model = TinyResNet().eval()
    qmodel = fxquant.prepare(model, torch.randn(2, 3, 16, 16), fxquant.get_qconfig())
    blocks = find_blocks(qmodel)
    assert [b.layers for b in blocks] == [
        ("conv1",),
        ("layer1.0.conv1", "layer1.0.conv2"),
        ("layer1.1.conv1", "layer1.1.conv2"),
        ("layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0"),
        ("fc",),
    ]
    assert [b.prefix for b in blocks] == [None, "layer1.0", "layer1.1", "layer2.0", None]
    for before, after in itertools.pairwise(blocks):
        assert after.inputs == before.outputs  # one value flows from block to block
        assert len(before.outputs) == 1
    # the residual block ends with its (quantized) relu output; the pooling joins the head
    assert blocks[1].outputs[0].endswith("output_fake_quant")
    assert blocks[-1].nodes[0] == "adaptive_avg_pool2d"


def test_blocks_of_a_transformer_are_its_layers_and_the_mask_is_a_side_input():
    model = TinyEncoder().eval()
    x, mask = _encoder_inputs(2)
    qmodel = fxquant.prepare(model, (x, mask), fxquant.get_qconfig())
    blocks = find_blocks(qmodel)
    layer = ("self_attn.qkv", "self_attn.proj", "linear1", "linear2")
    assert [b.layers for b in blocks] == [
        ("embed",),
        tuple(f"layers.0.{name}" for name in layer),
        tuple(f"layers.1.{name}" for name in layer),
        ("head",),
    ]
    assert [b.prefix for b in blocks[1:3]] == ["layers.0", "layers.1"]
    assert any("norm2" in n for n in blocks[1].nodes)  # the post-norm stays with its layer
    for b in blocks[1:3]:
        assert len(b.inputs) == 2 and "mask" in b.inputs[1]


def test_a_plain_chain_gives_one_block_per_weighted_layer():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2)).eval()
    qmodel = fxquant.prepare(model, torch.randn(2, 4), fxquant.get_qconfig())
    assert [b.layers for b in find_blocks(qmodel)] == [("0",), ("2",), ("3",)]


# -- reconstruction ---------------------------------------------------------------------------
def test_qdrop_reconstruction_beats_nearest_rounding_at_w4a4():
    model, calib, x_te, y_te = digits_setup()
    nearest = prepared(model, calib, act_dtype=fxquant.qint4)
    qmodel = prepared(model, calib, act_dtype=fxquant.qint4)
    reconstruct(qmodel, calib, num_iterations=300, lr=1e-2, progress=False)
    with torch.no_grad():
        ref = model(x_te)
        gain = sqnr(ref, qmodel(x_te)) - sqnr(ref, nearest(x_te))
    assert gain > 0.5  # measured: 11.8 -> 12.9 dB
    assert accuracy(qmodel, x_te, y_te) >= accuracy(nearest, x_te, y_te)
    report = qmodel.reconstruction_report
    assert [r.layers for r in report.results] == [("stem",), ("c1", "c2"), ("c3",), ("fc",)]
    for name in ("stem", "c1", "c2", "c3", "fc"):
        module = qmodel.get_submodule(name)
        w, fq = quantized_weight_and_quantizer(module)
        fq_w = fake_quantize(w, fq.scale, fq.zero_point, fq.dtype, fq.ch_axis, fq.scale_math)
        torch.testing.assert_close(fq_w, w, atol=0, rtol=2.5e-7)
        assert fq.fixed_in_qat


def test_transformer_reconstruction_improves_and_is_deterministic():
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    data = [_encoder_inputs(32) for _ in range(2)]
    qconfig = fxquant.get_qconfig(weight_dtype=fxquant.qint4)
    results = []
    for _ in range(2):
        qmodel = fxquant.calibrate(fxquant.prepare(model, data[0], qconfig), data,
                                   progress=False)
        with torch.no_grad():
            ref = torch.cat([model(*b) for b in data])
            before = torch.cat([qmodel(*b) for b in data])
        reconstruct(qmodel, data, num_iterations=60, lr=1e-2, seed=5, progress=False)
        with torch.no_grad():
            after = torch.cat([qmodel(*b) for b in data])
        assert sqnr(ref, after) > sqnr(ref, before)
        results.append(qmodel.state_dict())
    for key, value in results[0].items():
        assert torch.equal(value, results[1][key]), key


def test_layer_granularity_is_adaround():
    model, calib, _, _ = digits_setup()
    a = prepared(model, calib)
    b = prepared(model, calib)
    adaround(a, calib, num_iterations=30, progress=False)
    reconstruct(b, calib, granularity="layer", num_iterations=30, progress=False)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert ReconstructGranularity("block") is ReconstructGranularity.BLOCK


def test_reconstruct_checks_its_arguments():
    model, calib, _, _ = digits_setup()
    qmodel = prepared(model, calib)
    with pytest.raises(ValueError, match="drop_prob"):
        reconstruct(qmodel, calib, drop_prob=1.5, progress=False)
    with pytest.raises(ValueError):
        reconstruct(qmodel, calib, granularity="network", progress=False)


def test_qdrop_mask_has_the_requested_density():
    gen = torch.Generator().manual_seed(0)
    x = torch.empty(200_000)
    for prob in (0.0, 0.25, 0.5, 1.0):
        density = float(_keep_float_mask(x, prob, gen).float().mean())
        assert abs(density - prob) < 0.01
