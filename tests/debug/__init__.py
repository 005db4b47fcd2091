"""Shared fixtures of the debug tests: a small CNN trained on scikit-learn's digits, and a
quantization-hostile copy of it.

The hostile copy keeps the float function but gives ``conv2``'s output one *outlier channel*:
channel ``HOSTILE_CHANNEL`` of conv2 (weights and bias) is multiplied by ``OUTLIER`` and the
next layer (``conv3``) ignores that channel (its weights on it are zeroed before a short
fine-tune).  conv2's per-tensor int8 activation scale is then set by the outlier channel, and
every other channel of that tensor collapses to a handful of codes: an activation outlier,
which is what 16-bit activations fix (an outlier *weight* would be a weight problem that
16-bit activations cannot fix).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

HOSTILE = "conv2"
HOSTILE_CHANNEL = 3
OUTLIER = 400.0


class SmallCNN(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv3 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.conv3(x))
        return self.fc(x.mean((2, 3)))


@functools.lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1)
    x = (x - x.mean()) / x.std()
    y = torch.as_tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    tr, te = perm[:1300], perm[1300:]
    return x[tr], y[tr], x[te], y[te]


def _train(model: nn.Module, epochs: int, lr: float, seed: int, mask=None) -> None:
    x, y, _, _ = digits()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            if mask is not None:
                mask()
            opt.step()
    model.eval()


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    m = SmallCNN()
    _train(m, epochs=8, lr=3e-3, seed=0)
    return {k: v.clone() for k, v in m.state_dict().items()}


def trained_cnn() -> SmallCNN:
    m = SmallCNN()
    m.load_state_dict(_trained_state())
    return m.eval()


@functools.lru_cache(maxsize=1)
def _hostile_state() -> dict[str, torch.Tensor]:
    m = trained_cnn()
    c = HOSTILE_CHANNEL

    def zero_grad_on_channel() -> None:
        m.conv3.weight.grad[:, c] = 0

    with torch.no_grad():
        m.conv3.weight[:, c] = 0  # conv3 ignores the channel ...
    _train(m, epochs=2, lr=1e-3, seed=1, mask=zero_grad_on_channel)  # ... and adapts to that
    with torch.no_grad():  # ... which now carries huge values (the float function is unchanged)
        m.conv2.weight[c] *= OUTLIER
        m.conv2.bias[c] = m.conv2.bias[c].abs() * OUTLIER + OUTLIER
    return {k: v.clone() for k, v in m.state_dict().items()}


def hostile_cnn() -> SmallCNN:
    m = SmallCNN()
    m.load_state_dict(_hostile_state())
    return m.eval()


@torch.no_grad()
def accuracy(model: nn.Module, n: int | None = None) -> float:
    """Top-1 accuracy (%) on the held-out digits (first ``n`` images)."""
    _, _, x, y = digits()
    if n is not None:
        x, y = x[:n], y[:n]
    was = model.training
    model.eval()
    correct = sum(int((model(x[i : i + 128]).argmax(1) == y[i : i + 128]).sum())
                  for i in range(0, len(y), 128))
    model.train(was)
    return 100.0 * correct / len(y)


def calib_batches(n: int = 4, size: int = 64) -> list[torch.Tensor]:
    x = digits()[0]
    return [x[i * size : (i + 1) * size] for i in range(n)]
