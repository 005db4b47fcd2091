"""Switching distributed sync per model, and checking replicas with ``diverged_state``."""

from __future__ import annotations

import copy
import doctest
import warnings

import pytest
import torch

import fxquant
from fxquant.distributed import DistributedSync, diverged_state, participants, world_size
from fxquant.distributed import api as api_module
from fxquant.distributed import launch as launch_module
from fxquant.nn import ConvBnNd
from fxquant.observers import Observer

from .models import prepared
from .ranks import run_ranks


def test_settings_per_model_and_no_sync_context():
    q = prepared(fxquant.default_qat_qconfig_setter)
    mods = list(participants(q))
    assert any(isinstance(m, ConvBnNd) for m in mods)
    assert any(isinstance(m, fxquant.FakeQuantize) for m in mods)
    assert world_size() == 1 and not any(m.distributed_sync.active() for m in mods)
    with fxquant.no_distributed_sync(q):
        assert {m.distributed_sync.enabled for m in participants(q)} == {False}
    assert {m.distributed_sync.enabled for m in participants(q)} == {True}
    group = object()  # any process-group handle
    fxquant.set_distributed_sync(q.conv1, group=group)
    assert q.conv1.distributed_sync == DistributedSync(True, group)
    assert q.fc.weight_fake_quant.distributed_sync == DistributedSync()
    clone = copy.deepcopy(q)  # a process group cannot be deep-copied: the setting is shared
    assert clone.conv1.distributed_sync.group is group
    # single process: everything is a no-op
    assert fxquant.sync_observers(q) is q and diverged_state(q) == []


def _diverged(rank: int, world: int) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    assert diverged_state(model) == []
    with torch.no_grad():
        if rank == 1:
            model[0].bias[1] += 1e-7
            model[1].running_var[0] = float("nan")
    assert diverged_state(model) == ["0.bias", "1.running_var"]
    other = torch.nn.Linear(3, 2) if rank == 0 else torch.nn.Linear(3, 2, bias=False)
    assert diverged_state(other) == ["<state_dict keys differ between ranks>"]


def test_diverged_state_names_what_differs():
    run_ranks(_diverged)


class _CountObserver(Observer):
    """An observer fxquant cannot merge: it stays rank-local, with a warning."""

    def __init__(self, ch_axis=None):
        super().__init__(ch_axis)
        self.register_buffer("n", torch.zeros((), dtype=torch.int64))

    def _observe(self, x):
        self.n += x.numel()

    def has_stats(self):
        return bool(self.n > 0)

    def compute_range(self, dtype, symmetric):
        return torch.tensor(-1.0), torch.tensor(1.0)


def _unknown_observer(rank: int, world: int) -> None:
    fq = fxquant.FakeQuantize(observer=_CountObserver)
    fq.name = "odd"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fq(torch.randn(3 + rank))
    assert int(fq.observer.n) == 3 + rank
    assert any("'odd'" in str(w.message) and "rank-local" in str(w.message) for w in caught)
    # a fixed scale has nothing to merge: no warning
    fixed = fxquant.FakeQuantize(observer=fxquant.FixedScaleObserver.with_args(scale=0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixed(torch.randn(4))
    # opting out: rank-local without a word
    fxquant.set_distributed_sync(fq, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fq(torch.randn(2))


def test_observers_without_a_merge_stay_local_with_a_warning():
    run_ranks(_unknown_observer)


@pytest.mark.parametrize("how", ["enable", "disable", "block"])
def test_disabling_drops_unmerged_statistics_a_block_keeps_them(how):
    q = fxquant.FakeQuantize(observer=fxquant.MinMaxObserver)
    acc = fxquant.MinMaxObserver()
    acc(torch.ones(3))
    q.observer.__dict__["_fxquant_dist_acc"] = acc  # as a distributed calibration leaves it
    if how == "block":
        with fxquant.no_distributed_sync(q):
            assert not q.distributed_sync.enabled
        assert q.distributed_sync.enabled
    else:
        fxquant.set_distributed_sync(q, how == "enable")
    assert acc.has_stats() is (how != "disable")


def test_doctests():
    for module in (api_module, launch_module):
        assert doctest.testmod(module, raise_on_error=True).attempted > 0
