"""Shared test data for the PTQ algorithms: scikit-learn digits and a short training loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: digits as [N, 1, 8, 8] in [-1, 1], fixed split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 8 - 1
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:1300]], y[perm[:1300]], x[perm[1300:]], y[perm[1300:]]


def train_on_digits(model: nn.Module, epochs: int, calib_size: int, calib_count: int):
    """Train ``model`` (seed 0, Adam 1e-2, batch 64) and return
    ``(model in eval mode, calibration batches, x_test, y_test)``."""
    x_tr, y_tr, x_te, y_te = digits_split()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(epochs):
            for i in range(0, len(x_tr), 64):
                loss = F.cross_entropy(model(x_tr[i : i + 64]), y_tr[i : i + 64])
                opt.zero_grad()
                loss.backward()
                opt.step()
    model.eval()
    calib = [x_tr[i : i + calib_size] for i in range(0, calib_size * calib_count, calib_size)]
    return model, calib, x_te, y_te
