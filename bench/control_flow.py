"""Small models with data-dependent control flow, written the way users write them.

``torch.fx.symbolic_trace`` (and so torch.ao's ``prepare_fx``) cannot trace any of them: each
branches, loops or exits on a tensor's *value* (or on a shape it reads in Python) somewhere.
They are the control-flow part of the coverage benchmark (:mod:`bench.coverage`).

:data:`CONTROL_FLOW_MODELS` maps a name to ``(factory, input_shape)``; ``factory()`` returns the
model with fresh random weights (seed it first), ``input_shape`` excludes the batch dimension.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SignBranchNet",
    "DynamicDepthNet",
    "EarlyExitNet",
    "ShapeLogicNet",
    "UntraceableBlockNet",
    "Top1MoE",
    "CONTROL_FLOW_MODELS",
]


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class SignBranchNet(nn.Module):
    """Two different bodies; the batch's mean activation picks one (``if x.sum() > 0:``)."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, width, 2)
        self.pos = nn.Sequential(_conv_bn_relu(width, width), _conv_bn_relu(width, width))
        self.neg = nn.Sequential(nn.Conv2d(width, width, 1), nn.Hardswish())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        centred = x - x.mean()
        if centred[:, 0].sum() > 0:
            x = self.pos(x) + x
        else:
            x = self.neg(x)
        return self.fc(x.mean((2, 3)))


class DynamicDepthNet(nn.Module):
    """A shared block applied a number of times read from the input's statistics (.item())."""

    def __init__(self, width: int = 16, num_classes: int = 10, max_steps: int = 3) -> None:
        super().__init__()
        self.max_steps = max_steps
        self.stem = _conv_bn_relu(3, width, 2)
        self.block = _conv_bn_relu(width, width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        steps = max(1, min(self.max_steps, round(x.abs().mean().item() * 4)))  # 3 for N(0, 1)
        x = self.stem(x)
        for _ in range(steps):
            x = x + self.block(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class EarlyExitNet(nn.Module):
    """Returns the first head's logits when it is confident enough, else runs deeper."""

    def __init__(self, width: int = 16, num_classes: int = 10, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold
        self.stage1 = _conv_bn_relu(3, width, 2)
        self.head1 = nn.Linear(width, num_classes)
        self.stage2 = nn.Sequential(
            _conv_bn_relu(width, 2 * width, 2), _conv_bn_relu(2 * width, 2 * width)
        )
        self.head2 = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage1(x)
        early = self.head1(x.mean((2, 3)))
        if early.softmax(-1).amax(-1).mean() > self.threshold:
            return early
        return self.head2(self.stage2(x).mean((2, 3)))


class ShapeLogicNet(nn.Module):
    """Python-side shape logic: pooling chosen from the input size, padding to a multiple."""

    def __init__(self, width: int = 16, num_classes: int = 10, multiple: int = 8) -> None:
        super().__init__()
        self.multiple = multiple
        self.stem = _conv_bn_relu(3, width)
        self.body = _conv_bn_relu(width, width)
        self.fc = nn.Linear(width * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        if h > 16 or w > 16:  # large inputs: downsample first
            x = F.avg_pool2d(x, 2)
            h, w = h // 2, w // 2
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.body(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 2)
        return self.fc(x.reshape(b, -1))


class _TokenDrop(nn.Module):
    """Keeps the positions whose norm is above the batch mean: boolean indexing, a Python loop
    over the batch and ``.tolist()`` -- untraceable, but the rest of the model is fine."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(width, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        norms = x.flatten(2).norm(dim=1)  # (B, HW)
        keep = norms > norms.mean()
        pooled = []
        for i, k in enumerate(keep.tolist()):
            feats = x[i].flatten(1)[:, torch.tensor(k)]
            pooled.append(feats.mean(1) if feats.shape[1] else x[i].mean((1, 2)))
        return torch.stack(pooled)


class UntraceableBlockNet(nn.Module):
    """A traceable CNN with one untraceable submodule (:class:`_TokenDrop`) before its head."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(_conv_bn_relu(3, width, 2), _conv_bn_relu(width, width))
        self.drop = _TokenDrop(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(self.drop(self.features(x))))


class Top1MoE(nn.Module):
    """Token classifier with a top-1 mixture of experts: tokens are routed by ``argmax`` and
    each expert runs only on its tokens (``nonzero`` + ``if idx.numel():``)."""

    def __init__(
        self, token_dim: int = 16, dim: int = 32, experts: int = 4, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(token_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.router = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            for _ in range(experts)
        )
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        flat = self.norm(h).reshape(-1, h.shape[-1])
        gate = self.router(flat).softmax(-1)
        weight, choice = gate.max(-1)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            idx = (choice == e).nonzero().squeeze(1)
            if idx.numel():
                out[idx] = expert(flat[idx]) * weight[idx, None]
        h = h + out.reshape(h.shape)
        return self.fc(h.mean(1))


CONTROL_FLOW_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "sign_branch": (SignBranchNet, (3, 32, 32)),
    "dynamic_depth": (DynamicDepthNet, (3, 32, 32)),
    "early_exit": (EarlyExitNet, (3, 32, 32)),
    "shape_logic": (ShapeLogicNet, (3, 32, 32)),
    "untraceable_block": (UntraceableBlockNet, (3, 32, 32)),
    "top1_moe": (Top1MoE, (12, 16)),
}
"""name -> (factory, input shape without the batch dimension)."""
