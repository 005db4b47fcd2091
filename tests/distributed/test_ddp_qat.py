"""QAT under DistributedDataParallel on 2 gloo ranks: identical state on both after every step.

The model mixes every kind of state QAT changes: moving-average activation observers, per-channel
min-max weight observers, learnable (LSQ) scales, a histogram (MSE) observer re-estimated every
step, and a conv + BatchNorm folded into a ``ConvBn2d`` (batch statistics in training).  The
ranks see different data; after each of 20 SGD steps every state-dict tensor (weights,
scales, zero points, observer statistics, BN running statistics) is bit-identical on both ranks,
with DDP broadcasting buffers (its default) or not.  Without fxquant's sync they drift apart.
The trained model, saved by rank 0 with ``fxquant.save`` (given the DDP wrapper), loads in a
single process -- re-prepared from a fresh float model, without the setter -- and reproduces
rank 0's outputs and state; so does its plain state dict.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import fxquant
from fxquant.distributed import diverged_state
from fxquant.observers import MSEObserver

from .models import SmallNet, dataset, prepared, shard_loader
from .ranks import run_ranks, warm_ddp

SETTER = (
    fxquant.ModuleNameQconfigSetter({
        "conv2": fxquant.get_qconfig(learnable=True),
        "fc": fxquant.get_qconfig(observer=MSEObserver.with_args(bins=256)),
    }),
    fxquant.default_qat_qconfig_setter,
)
STEPS = 20


def _train(rank: int, world: int, broadcast_buffers: bool, sync: bool, out=None) -> None:
    data = dataset(32)
    q = prepared(SETTER)
    fxquant.set_distributed_sync(q, sync)
    fxquant.calibrate(q, shard_loader(data, rank, world, 4), progress=False)
    fxquant.set_fake_quantize(q, fxquant.FakeQuantState.QAT)
    assert isinstance(q.conv2.weight_fake_quant.scale, torch.nn.Parameter)
    start = {k: v.clone() for k, v in q.state_dict().items()}
    ddp = DistributedDataParallel(q.train(), broadcast_buffers=broadcast_buffers)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    batches = itertools.cycle(shard_loader(data, rank, world, 4))
    for step in range(STEPS):
        x, y = next(batches)
        loss = F.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        differ = diverged_state(q)
        if not sync:
            assert differ, "without fxquant's sync the ranks should drift apart"
            return
        assert differ == [], f"step {step}: {differ[:5]}"
    end = q.state_dict()
    for key in ("conv2.weight_fake_quant.scale", "_generated_relu_1.output_fake_quant.scale",
                "fc.output_fake_quant.observer.hist", "conv1.bn.running_var",
                "_generated_relu_0.output_fake_quant.scale"):
        assert not torch.equal(start[key], end[key]), f"{key} did not move in QAT"
    if out is not None and rank == 0:
        fxquant.set_fake_quantize(q.eval(), fxquant.FakeQuantState.VALIDATION)
        x = dataset(4, seed=99).tensors[0]
        torch.save({"state": q.state_dict(), "x": x, "y": q(x)}, out)
        fxquant.save(ddp, out.with_suffix(".fxq"))  # looks through the DDP wrapper


@pytest.mark.parametrize("broadcast_buffers", [True, False])
def test_ddp_qat_steps_keep_ranks_identical(broadcast_buffers, tmp_path):
    warm_ddp()
    out = tmp_path / "ddp_qat.pt"
    run_ranks(_train, broadcast_buffers, True, out)
    # the DDP-trained model loads in a single process (weights_only) and computes the same
    saved = torch.load(out, weights_only=True)
    q = prepared(SETTER)
    q.load_state_dict(saved["state"])
    fxquant.set_fake_quantize(q.eval(), fxquant.FakeQuantState.VALIDATION)
    assert torch.equal(q(saved["x"]), saved["y"])
    # fxquant.save's checkpoint needs neither the setter nor the trained weights
    loaded = fxquant.load(out.with_suffix(".fxq"), SmallNet())
    assert not loaded.training
    assert torch.equal(loaded(saved["x"]), saved["y"])
    state = loaded.state_dict()
    assert state.keys() == saved["state"].keys()
    assert all(torch.equal(state[k], saved["state"][k]) for k in state)


def test_without_sync_the_ranks_drift_apart():
    warm_ddp()
    run_ranks(_train, False, False)
