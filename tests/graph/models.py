"""Models written the way users write them (no quantization rewrites), shared by graph tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, QuantStub


class ConvNetA(nn.Module):
    """(a) F.relu, F.max_pool2d, x.view, a grouped conv, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.conv3 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        x = x.view(x.size(0), -1)
        return self.fc(x)


class EagerStyleB(nn.Module):
    """(b) QuantStub, conv-bn-relu, FloatFunctional.add, DeQuantStub."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU()
        self.skip_add = FloatFunctional()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        y = self.relu(self.bn(self.conv(x)))
        z = self.relu2(self.bn2(self.conv2(y)))
        x = self.skip_add.add(y, z)
        x = self.pool(x).flatten(1)
        return self.dequant(self.fc(x))


class MlpC(nn.Module):
    """(c) Linear -> LayerNorm -> ReLU -> Linear(256->60) -> Linear(60->60)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear0 = nn.Linear(32, 256)
        self.ln = nn.LayerNorm(256)
        self.relu = nn.ReLU()
        self.linear1 = nn.Linear(256, 60)
        self.linear2 = nn.Linear(60, 60)

    def forward(self, x):
        return self.linear2(self.linear1(self.relu(self.ln(self.linear0(x)))))


class TwoInputAddD(nn.Module):
    """(d) two QuantStubs and torch.add."""

    def __init__(self) -> None:
        super().__init__()
        self.quant_x = QuantStub()
        self.quant_y = QuantStub()

    def forward(self, x, y):
        return torch.add(self.quant_x(x), self.quant_y(y))


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x.mean((2, 3)))))


class BackboneHeadE(nn.Module):
    """(e) a backbone and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.head = Head()

    def forward(self, x):
        return self.head(self.backbone(x))


class Gate(nn.Module):
    """Data-dependent control flow inside a submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(8, 8, 1)
        self.b = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        if x.mean() > 0:
            return self.a(x)
        return self.b(x)


class BranchInSubmoduleF(nn.Module):
    """(f1) the `if` lives in one submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = Gate()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.gate(x)
        x = F.relu(self.conv(x)) + x
        return self.fc(x.mean((2, 3)))


class BranchInForwardF(nn.Module):
    """(f2) the `if` lives in the model's own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch_a = nn.Conv2d(8, 8, 1)
        self.branch_b = nn.Conv2d(8, 8, 1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        if x.mean() > 0:
            x = self.branch_a(x)
        else:
            x = self.branch_b(x)
        x = F.relu(self.conv(x)) + x
        return self.fc(x.mean((2, 3)))


class Reused(nn.Module):
    """One ReLU module and one conv called at several call sites."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        a = self.relu(self.conv(x))
        b = self.relu(self.conv(a))
        return torch.cat([a, b], 1) * 0.5


class TinyTransformer(nn.Module):
    """Embedding, matmul, softmax, layer_norm, chunk, transpose, ConvTranspose, interpolate."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.qkv = nn.Linear(32, 96)
        self.proj = nn.Linear(32, 32)
        self.norm = nn.LayerNorm(32)
        self.up = nn.ConvTranspose1d(32, 16, 2, stride=2)

    def forward(self, tokens):
        h = self.emb(tokens)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        att = F.softmax(q @ k.transpose(1, 2) / 4.0, dim=-1)
        h = self.norm(h + self.proj(torch.matmul(att, v)))
        y = self.up(h.transpose(1, 2))
        return F.interpolate(y, scale_factor=2.0, mode="linear")


def _merge(a, b):
    return torch.cat([a, b], 1) * 0.5


class BranchWithHelpersF(nn.Module):
    """The `if` in forward; functional ops in a helper method and a module-level helper."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def _stage(self, x):
        return F.relu(self.conv(x)) + x

    def forward(self, x):
        x = F.relu(self.stem(x))
        if x.sum() > 0:
            y = self._stage(x)
        else:
            y = x
        return self.fc(_merge(x, y).mean((2, 3)))


def _hf_style_wrapper(fn):
    """Like transformers' output-capturing decorators: hides forward behind a wrapper."""
    import functools

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        return fn(self, *args, **kwargs)

    return wrapper


class Conv1DLike(nn.Module):
    """GPT-2's Conv1D: ``addmm(bias, x, weight)`` with a weight of shape [in, out]."""

    def __init__(self, nin: int, nout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nin, nout) * 0.1)
        self.bias = nn.Parameter(torch.zeros(nout))

    def forward(self, x):
        shape = (*x.shape[:-1], self.weight.shape[1])
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(shape)


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.attn = Conv1DLike(d, d)
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x, mask=None, scale: float = 1.0):
        h = self.attn(self.norm(x)) * scale
        if mask is not None:
            h = h + mask
        return x + self.mlp(h)


class HFStyleModel(nn.Module):
    """ModuleList of blocks called with keyword arguments, a decorated forward with Python
    control flow on tensors, and attribute access into children from forward."""

    def __init__(self, d: int = 16, n: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(40, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(n))
        self.head = nn.Linear(d, 5)

    @_hf_style_wrapper
    def forward(self, ids, mask=None):
        dtype = self.blocks[0].mlp[0].weight.dtype  # attribute access into a child
        h = self.embed(ids).to(dtype)
        if h.abs().max() > 1e6:  # data-dependent: the root is not traceable
            h = h / h.abs().max()
        for block in self.blocks:
            h = block(h, mask=mask, scale=0.5)
        return self.head(h.mean(1))


class MaskedAttention(nn.Module):
    """An additive -inf mask: values that are not finite must stay float."""

    def __init__(self) -> None:
        super().__init__()
        self.qk = nn.Linear(8, 16)
        self.register_buffer("causal", torch.triu(torch.full((6, 6), float("-inf")), 1))

    def forward(self, x):
        q, k = self.qk(x).chunk(2, -1)
        att = q @ k.transpose(1, 2) + self.causal
        return F.softmax(att, -1) @ x


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d pattern: a BatchNorm2d subclass that checks ``x.ndim`` (a metadata
    read of the conv output), calls F.batch_norm, then relu."""

    def forward(self, x):
        torch._assert(x.ndim == 4, "expected 4D input")
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, 0.1, self.eps)
        return F.relu(x)


class ConvBnAct(nn.Module):
    """conv -> BatchNormAct (-> optional 1x1 head conv)."""

    def __init__(self, head: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = BatchNormAct(8)
        self.head = nn.Conv2d(8, 4, 1) if head else nn.Identity()

    def forward(self, x):
        return self.head(self.bn(self.conv(x)))
