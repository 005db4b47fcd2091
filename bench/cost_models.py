"""The three models of the cost suite (issue 14), random weights, for 32x32 images / 64 tokens.

* :func:`resnet18_width` -- :class:`bench.models.ResidualCNN` with ResNet-18's widths
  (64 / 128 / 256 channels, two basic blocks per stage, stem stride 2);
* :class:`MobileNetV2Like` -- MobileNet-v2 inverted residual blocks (1x1 expand, depthwise 3x3,
  linear 1x1 project, residual ``+`` where the shape allows, ReLU6, BatchNorm everywhere);
* :class:`EncoderBlockModel` -- one pre-norm transformer encoder block
  (:class:`bench.models.EncoderLayer`: attention from ``Linear`` + ``@`` + ``softmax``, GELU
  MLP) between a token embedding and a classifier.

They live here rather than in :mod:`bench.models` so that adding them does not retrain the
cached zoo (whose hash covers ``bench/models.py``).  Ordinary PyTorch: no quantization
rewrites.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.models import EncoderLayer, ResidualCNN

__all__ = ["CostModel", "MODELS", "QUICK_MODELS", "resnet18_width", "MobileNetV2Like",
           "EncoderBlockModel"]


def resnet18_width(width: int = 64) -> nn.Module:
    """ResNet-18's stage widths (``width``, 2x, 4x) on 32x32 inputs."""
    return ResidualCNN(width=width)


class InvertedResidual(nn.Module):
    """MobileNet-v2 block: 1x1 expand-bn-relu6, 3x3 depthwise-bn-relu6, 1x1 project-bn, ``+``."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.expand = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.project = nn.Conv2d(mid, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self.bn1(self.expand(x)))
        y = F.relu6(self.bn2(self.dw(y)))
        y = self.bn3(self.project(y))
        return x + y if self.residual else y


class MobileNetV2Like(nn.Module):
    """Stem conv3x3 (stride 2) + inverted residual stages + 1x1 head conv + pool + linear.

    Stages (expansion, channels, blocks, stride) for 32x32 inputs:
    ``(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 2)`` times ``width / 32``.
    """

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        m = width / 32

        def ch(c: int) -> int:
            return max(8, int(c * m))

        self.stem = nn.Conv2d(3, ch(32), 3, 2, 1, bias=False)
        self.bn_stem = nn.BatchNorm2d(ch(32))
        blocks, in_ch = [], ch(32)
        for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 2)):
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, ch(c), s if i == 0 else 1, t))
                in_ch = ch(c)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(in_ch, ch(256), 1, bias=False)
        self.bn_head = nn.BatchNorm2d(ch(256))
        self.fc = nn.Linear(ch(256), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu6(self.bn_stem(self.stem(x)))
        x = self.blocks(x)
        x = F.relu6(self.bn_head(self.head(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class EncoderBlockModel(nn.Module):
    """``Linear`` token embedding -> one encoder block -> LayerNorm -> mean -> classifier."""

    def __init__(self, token_dim: int = 32, dim: int = 128, heads: int = 4, mlp_ratio: int = 4,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(token_dim, dim)
        self.block = EncoderLayer(dim, heads, mlp_ratio)
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.ln(self.block(self.embed(x))).mean(dim=1))


@dataclass(frozen=True)
class CostModel:
    """One model of the suite: a label, a factory and its input shape (batch first)."""

    label: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    cnn: bool

    def example(self, batch: int, seed: int = 0) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn((batch, *self.input_shape), generator=gen)


MODELS: tuple[CostModel, ...] = (
    CostModel("ResNet-18-width CNN (ResidualCNN width 64)", resnet18_width, (3, 32, 32), True),
    CostModel("MobileNetV2-style CNN (inverted residuals, width 32)", MobileNetV2Like,
              (3, 32, 32), True),
    CostModel("transformer encoder block (dim 128, 4 heads, 64 tokens)", EncoderBlockModel,
              (64, 32), False),
)
QUICK_MODELS: tuple[CostModel, ...] = (
    CostModel("ResidualCNN width 4", lambda: resnet18_width(4), (3, 16, 16), True),
    CostModel("MobileNetV2-style width 8", lambda: MobileNetV2Like(8), (3, 16, 16), True),
    CostModel("encoder block dim 16", lambda: EncoderBlockModel(8, 16, 2, 2), (8, 8), False),
)
