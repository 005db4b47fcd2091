"""Models for the export tests, written the way users write them (no quantization rewrites)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# -- ResNet-style CNN ---------------------------------------------------------------------------
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
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNetSmall(nn.Module):
    """conv-bn-relu stem, three residual blocks (the second downsamples), GAP, linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.layer3 = BasicBlock(32, 32)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# -- depthwise-separable ------------------------------------------------------------------------
class SeparableBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.dw_bn = nn.BatchNorm2d(cin)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU6()

    def forward(self, x):
        x = F.relu6(self.dw_bn(self.dw(x)))
        return self.act(self.pw_bn(self.pw(x)))


class DepthwiseNet(nn.Module):
    """MobileNet-v1 style: depthwise 3x3 + pointwise 1x1 blocks with relu6."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.blocks = nn.Sequential(
            SeparableBlock(16, 32), SeparableBlock(32, 64, 2), SeparableBlock(64, 64)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.pool(self.blocks(self.stem(x)))
        return self.classifier(x.flatten(1))


# -- transformer encoder ------------------------------------------------------------------------
class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = q.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        k = k.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        v = v.reshape(b, t, self.heads, -1).permute(0, 2, 1, 3)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, t, c)
        return self.proj(out)


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """Token embedding + learned positions, two pre-norm encoder layers, mean pooling."""

    def __init__(self, vocab: int = 50, dim: int = 32, heads: int = 4, seq: int = 12,
                 num_classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, seq, dim) * 0.1)
        self.layers = nn.ModuleList([EncoderLayer(dim, heads) for _ in range(2)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean(dim=1))


# -- ConvTranspose decoder ----------------------------------------------------------------------
class Decoder(nn.Module):
    """A strided conv encoder stem, then ConvTranspose2d upsampling stages with relu."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 16, 3, 2, 1)
        self.up1 = nn.ConvTranspose2d(16, 16, 4, stride=2, padding=1, groups=2)
        self.up2 = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = F.relu(self.down(x))
        x = F.relu(self.up1(x))
        x = torch.relu(self.up2(x))
        return self.head(x)


# -- single ops ---------------------------------------------------------------------------------
class OneConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class OneLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        return self.fc(x)


class OneAdd(nn.Module):
    def forward(self, x, y):
        return x + y


class CumsumNet(nn.Module):
    """A conv followed by an op fxquant has no ONNX emitter for."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.cumsum(self.conv(x), dim=1)


class DropPath(nn.Module):
    """timm's / torchvision's stochastic depth: random residual drop in training only."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1))) >= self.p
        return x * keep / (1 - self.p)


class OpZoo(nn.Module):
    """Many op kinds in one graph: pools, cat / stack / split, elementwise math with scalars,
    interpolate, a BatchNorm that cannot be folded, Conv1d, slicing, a functional linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv1d = nn.Conv1d(8, 8, 3, padding=1, bias=False)
        self.weight = nn.Parameter(torch.randn(6, 4) * 0.3)
        self.head = nn.Sequential(nn.Linear(4, 5, bias=False), nn.Dropout(0.1), nn.ReLU())
        self.drop_path = DropPath(0.2)

    def forward(self, x):
        x = self.conv(x)
        y = torch.cat([F.max_pool2d(x, 2), F.avg_pool2d(x, 2)], dim=1)
        y = torch.sigmoid(y) * torch.tanh(y) - F.silu(y) / 2
        y = F.hardswish(y) + F.leaky_relu(y, 0.1)
        y = F.interpolate(y, scale_factor=2, mode="nearest")
        y = F.interpolate(y, size=(12, 12), mode="bilinear", align_corners=False)
        z = self.conv1d(self.bn(y).flatten(2)).unsqueeze(1).squeeze(1)
        a, b = z.split([4, 4], dim=1)
        t = torch.stack([a, b], dim=1).mean(dim=(1, 3))
        t = t[:, 1:3].repeat(1, 2) + t.permute(1, 0).t()
        return torch.cat([F.linear(t, self.weight), self.head(self.drop_path(t))], dim=-1)


class Branchy(nn.Module):
    """A data-dependent branch in the root forward: prepare captures it eagerly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.mean() > 0:  # untraceable in the root forward: eager capture
            x = x * 2
        return self.conv(x)


# -- a quantized concatenation quantized again --------------------------------------------------
@torch.fx.wrap
def merge_patches(x):
    """torchvision's ``_patch_merging_pad`` (Swin) in short: a function torch.fx keeps opaque
    whose last op is a ``cat``."""
    return torch.cat([x[:, 0::2], x[:, 1::2]], -1)


class PatchMerging(nn.Module):
    """``cat`` -> its quantizer -> the wrapped function's output quantizer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(merge_patches(self.fc(x)))


class ScaledCat(nn.Module):
    """``cat`` -> its quantizer -> ``* 0.5`` -> the product's quantizer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(torch.cat([self.fc(x), x], -1) * 0.5)
