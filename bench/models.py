"""Ordinary PyTorch models for the benchmark zoo (no quantization rewrites anywhere).

They are written the way users write models -- ``F.relu``, ``+`` for residuals, BatchNorm after
convolutions, attention from ``Linear`` + ``@`` + ``softmax`` -- so that the benchmarks measure
what ``fxquant.prepare`` does on unedited code.

* :class:`PlainCNN` -- a VGG-like conv-bn-relu stack, two max pools, global average pool, linear.
* :class:`ResidualCNN` -- ResNet-18-style for 32x32: a stem, three stages of two basic blocks
  (residual ``+``, strided 3x3 + 1x1 projection when the shape changes), average pool, linear.
* :class:`DepthwiseCNN` -- MobileNet-v1-style depthwise-separable blocks with BN and ReLU6.
* :class:`TinyTransformer` -- token embedding (``Linear``) + learned position embedding, pre-norm
  encoder layers (multi-head attention written out, GELU MLP), mean pool, classifier.

The CNNs take ``[N, in_channels, H, W]`` images (any H, W >= 8); the transformer takes
``[N, seq_len, token_dim]`` token sequences.  All return ``[N, num_classes]`` logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PlainCNN", "ResidualCNN", "DepthwiseCNN", "TinyTransformer"]


class PlainCNN(nn.Module):
    """conv-bn-relu x2, max pool, conv-bn-relu x2, max pool, conv-bn-relu, avg pool, linear.

    Channels ``width, width, 2w, 2w, 4w``; for 3x32x32 inputs and ``width=16`` about 100 k
    parameters and 12 M multiply-adds per image.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        chans = [(in_channels, w), (w, w), (w, 2 * w), (2 * w, 2 * w), (2 * w, 4 * w)]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in chans)
        self.bns = nn.ModuleList(nn.BatchNorm2d(b) for _, b in chans)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            x = F.relu(bn(conv(x)))
            if i in (1, 3):
                x = F.max_pool2d(x, 2)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-bn-relu, conv3x3-bn, ``+`` shortcut, relu.

    The shortcut is the identity, or a strided 1x1 conv + BN when the stride or the channel
    count changes.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResidualCNN(nn.Module):
    """ResNet-18-style network for small images.

    Stem conv3x3 (stride ``stem_stride``) -> stages of two :class:`BasicBlock` each with
    channels ``width * (1, 2, 4)``, the 2nd and 3rd stage downsampling by 2 -> global average
    pool -> linear.  15 convolutions (12 3x3 in blocks, stem, two 1x1 projections), 6 residual
    adds.  ``stem_stride=2`` (default) runs the stages at 16/8/4 px for 32 px inputs, which keeps
    CPU training short.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        width: int = 16,
        blocks_per_stage: int = 2,
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages = []
        in_ch = width
        for i, mult in enumerate((1, 2, 4)):
            out_ch = width * mult
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 conv-bn-relu6, then pointwise 1x1 conv-bn-relu6 (MobileNet v1 block)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.dw = nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False)
        self.bn_dw = nn.BatchNorm2d(in_ch)
        self.pw = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu6(self.bn_dw(self.dw(x)))
        return F.relu6(self.bn_pw(self.pw(x)))


class DepthwiseCNN(nn.Module):
    """MobileNet-v1-style: stem conv3x3-bn-relu6, depthwise-separable blocks, pool, linear.

    Block output channels / strides: ``w/1, 2w/2, 2w/1, 4w/2, 4w/1, 8w/1, 8w/1`` with
    ``w = width`` (7 depthwise + 7 pointwise convs); a dropout before the classifier.
    ``stem_stride=2`` (default) halves the resolution in the stem (32 px inputs end at 4x4).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        width: int = 16,
        dropout: float = 0.1,
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        w = width
        self.stem = nn.Conv2d(in_channels, w, 3, stem_stride, 1, bias=False)
        self.bn_stem = nn.BatchNorm2d(w)
        plan = [(w, 1), (2 * w, 2), (2 * w, 1), (4 * w, 2), (4 * w, 1), (8 * w, 1), (8 * w, 1)]
        blocks, in_ch = [], w
        for out_ch, stride in plan:
            blocks.append(DepthwiseSeparable(in_ch, out_ch, stride))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu6(self.bn_stem(self.stem(x)))
        x = self.blocks(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(self.dropout(x))


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention from ``Linear``, ``@`` and ``softmax`` (no fused kernels)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        h, hd = self.heads, self.head_dim
        q = self.q(x).reshape(n, t, h, hd).transpose(1, 2)  # [n, h, t, hd]
        k = self.k(x).reshape(n, t, h, hd).transpose(1, 2)
        v = self.v(x).reshape(n, t, h, hd).transpose(1, 2)
        attn = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(n, t, d)
        return self.proj(out)


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.dropout(self.attn(self.ln1(x)))
        return x + self.dropout(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class TinyTransformer(nn.Module):
    """Token classifier: ``Linear`` token embedding + learned positions, pre-norm encoder
    layers, final LayerNorm, mean over tokens, linear classifier.

    Input ``[N, seq_len, token_dim]`` (e.g. the 8 rows of an 8x8 digit, 8 pixels each).
    """

    def __init__(
        self,
        seq_len: int = 8,
        token_dim: int = 8,
        num_classes: int = 10,
        dim: int = 64,
        heads: int = 4,
        depth: int = 2,
        mlp_ratio: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(token_dim, dim)
        self.pos = nn.Parameter(0.02 * _trunc_normal((1, seq_len, dim)))
        self.layers = nn.Sequential(
            *(EncoderLayer(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        )
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x) + self.pos
        x = self.ln(self.layers(x))
        return self.head(x.mean(dim=1))


def _trunc_normal(shape: tuple[int, ...]) -> Tensor:
    return nn.init.trunc_normal_(torch.empty(shape), std=1.0, a=-2.0, b=2.0)
