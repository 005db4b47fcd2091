"""A small model and sharded data shared by the distributed tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import fxquant


class SmallNet(nn.Module):
    """conv + BN (folded into a ConvBn2d by prepare) + relu, a residual add, mean, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = x + F.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def dataset(n: int = 32, seed: int = 7) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g) * torch.linspace(0.5, 3.0, n).reshape(n, 1, 1, 1)
    return TensorDataset(x, torch.randint(0, 5, (n,), generator=g))


def shard_loader(data: TensorDataset, rank: int, world: int, batch: int) -> DataLoader:
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
    return DataLoader(data, batch_size=batch, sampler=sampler)


def all_shards(data: TensorDataset, world: int, batch: int) -> list[list]:
    """Every rank's batches, as the ranks see them."""
    return [list(shard_loader(data, r, world, batch)) for r in range(world)]


def prepared(setter, seed: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    model = SmallNet().eval()
    return fxquant.prepare(model, torch.randn(2, 3, 8, 8), setter)


def quantizer_state(qmodel: nn.Module) -> dict[str, torch.Tensor]:
    """Every quantizer's scale / zero point and every observer buffer, by state-dict name."""
    return {
        k: v.detach().clone()
        for k, v in qmodel.state_dict().items()
        if "fake_quant" in k or k.rsplit(".", 1)[-1] in ("scale", "zero_point")
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    bad = [k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    assert not bad, f"{what}: differ at {bad[:6]} (of {len(a)})"
