"""ConvBn training over 2 gloo ranks normalises with the global batch, like one process.

Forward output, input and parameter gradients and the running statistics of a ``ConvBn2d``
(quantizer off, so this checks the BatchNorm math alone) on 2 ranks equal one process running
the concatenated batch, up to float summation order; the running statistics are bit-identical
on both ranks.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from fxquant.distributed import DistributedSync, diverged_state, sync_batch_norm
from fxquant.nn import ConvBn2d

from .ranks import run_ranks


def _close(a: torch.Tensor, b: torch.Tensor, what: str, scale: float = 1.0) -> None:
    """Equal up to float summation order: relative 1e-5, absolute 1e-6 of ``scale``.

    (``torch.testing.assert_close`` would import sympy in every rank: seconds.)
    """
    err = (a - b).abs() - (1e-6 * scale + 1e-5 * b.abs())
    assert a.shape == b.shape and bool((err <= 0).all()), f"{what}: max excess {float(err.max())}"


def _conv_bn_matches_one_process(rank: int, world: int, momentum) -> None:
    torch.manual_seed(5)
    module = ConvBn2d(3, 4, 3, padding=1, momentum=momentum)
    with torch.no_grad():
        module.bn.weight.uniform_(0.5, 2.0)
        module.bn.bias.uniform_(-1.0, 1.0)
    ref = copy.deepcopy(module)
    ref.distributed_sync = DistributedSync(enabled=False)
    xs = [torch.randn(3 + r, 3, 6, 6) * (r + 1) + r for r in range(world)]  # unequal shards
    target = torch.randn(sum(len(x) for x in xs), 4, 6, 6)
    lo = sum(len(x) for x in xs[:rank])
    mine = slice(lo, lo + len(xs[rank]))
    for step in range(3):
        x = xs[rank].clone().requires_grad_(True)
        out = module(x)
        ((out - target[mine]) ** 2).sum().backward()
        x_ref = torch.cat(xs).requires_grad_(True)
        out_ref = ref(x_ref)
        ((out_ref - target) ** 2).sum().backward()
        _close(out, out_ref[mine], f"output, step {step}")
        _close(x.grad, x_ref.grad[mine], f"input gradient, step {step}")
        # the conv bias gradient is 0 up to rounding (BN removes the mean): compare every
        # gradient at the scale of the largest one
        scale = max(float(p.grad.abs().max()) for p in ref.parameters())
        for (name, p), p_ref in zip(module.named_parameters(), ref.parameters(), strict=True):
            grad = p.grad.clone()
            dist.all_reduce(grad)  # what DDP does (up to its division by the world size)
            _close(grad, p_ref.grad, f"{name} gradient, step {step}", scale)
        for name in ("running_mean", "running_var"):
            _close(getattr(module.bn, name), getattr(ref.bn, name), f"{name}, step {step}")
        assert int(module.bn.num_batches_tracked) == step + 1
        assert diverged_state(module.bn) == []
        with torch.no_grad():  # the same update everywhere, so the replicas stay in step
            for p, p_ref in zip(module.parameters(), ref.parameters(), strict=True):
                p_ref -= 1e-3 * p_ref.grad
                p.copy_(p_ref)
                p.grad = p_ref.grad = None


@pytest.mark.parametrize("momentum", [0.1, None])
def test_conv_bn_training_uses_the_global_batch(momentum):
    run_ranks(_conv_bn_matches_one_process, momentum)


def _too_few_values(rank: int, world: int) -> None:
    bn = torch.nn.BatchNorm1d(3)
    x = torch.randn(1 if rank == 0 else 0, 3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        sync_batch_norm(bn, x)


def test_one_value_per_channel_over_all_ranks_is_refused():
    run_ranks(_too_few_values)
