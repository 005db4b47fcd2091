"""Observer statistics over 2 gloo ranks equal one process over the union of the data.

Each check runs in 2 forked processes (``ranks.run_ranks``); the single-process reference is
computed inside each rank with distributed sync switched off, on the very same batches, and the
comparison is bit for bit (every quantizer buffer: scales, zero points, histograms, ranges).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxquant
from fxquant.distributed import no_distributed_sync, sync_observers
from fxquant.observers import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
)

from .models import all_shards, assert_same, dataset, prepared, quantizer_state, shard_loader
from .ranks import run_ranks, warm_ddp

SETTERS = {
    "minmax": fxquant.get_qconfig(observer=MinMaxObserver),
    "mse": fxquant.default_calibration_qconfig_setter,
    "percentile": fxquant.get_qconfig(observer=PercentileObserver.with_args(percentile=99.0)),
    "entropy": fxquant.get_qconfig(observer=HistogramObserver.with_args(method="entropy")),
}


def _reference(setter, batches: list) -> dict[str, torch.Tensor]:
    ref = prepared(setter)
    with no_distributed_sync(ref):
        fxquant.calibrate(ref, batches, progress=False)
    return quantizer_state(ref)


def _calibrate_sharded(rank: int, world: int) -> None:
    data = dataset(32)
    shards = all_shards(data, world, batch=4)
    union = [b for shard in shards for b in shard]  # rank 0's batches, then rank 1's
    for name, setter in SETTERS.items():
        q = prepared(setter)
        fxquant.calibrate(q, shard_loader(data, rank, world, 4), progress=False)
        assert_same(quantizer_state(q), _reference(setter, union), name)
        if rank == 0:  # a rank-local calibration differs (rank 0 holds the smaller samples)
            local = prepared(setter)
            with no_distributed_sync(local):
                fxquant.calibrate(local, shards[rank], progress=False)
            key = "x.output_fake_quant.scale"
            assert not torch.equal(quantizer_state(local)[key], quantizer_state(q)[key]), name


def test_calibrate_over_distributed_sampler_equals_one_process():
    run_ranks(_calibrate_sharded)


def _uneven_batches(rank: int, world: int) -> None:
    data = dataset(24)
    batches = [b for b in torch.utils.data.DataLoader(data, batch_size=4)]
    mine = {0: batches[:5], 1: batches[5:]}[rank]  # 5 batches vs 1
    for name in ("minmax", "mse"):
        q = prepared(SETTERS[name])
        fxquant.calibrate(q, mine, progress=False)
        assert_same(quantizer_state(q), _reference(SETTERS[name], batches), name)
    # one rank without any batch: it still ends with the merged scales
    q = prepared(SETTERS["mse"])
    fxquant.calibrate(q, batches if rank == 0 else [], progress=False)
    assert_same(quantizer_state(q), _reference(SETTERS["mse"], batches), "empty rank")


def test_uneven_batch_counts_merge_for_minmax_and_histograms():
    run_ranks(_uneven_batches)


def _moving_average(rank: int, world: int) -> None:
    setter = fxquant.get_qconfig(observer=MovingAverageMinMaxObserver.with_args(
        averaging_constant=0.3))
    data = dataset(32)
    shards = all_shards(data, world, batch=4)
    q = prepared(setter)
    fxquant.calibrate(q, shards[rank], progress=False)
    # one process whose batch t is the concatenation of the ranks' batches t
    steps = [[torch.cat([s[t][0] for s in shards])] for t in range(len(shards[0]))]
    assert_same(quantizer_state(q), _reference(setter, steps), "moving average")
    # unequal batch counts: every rank raises DataError (nobody waits forever)
    q = prepared(setter)
    with pytest.raises(fxquant.DataError, match="same number of batches"):
        fxquant.calibrate(q, shards[rank][: 2 + rank], progress=False)
    assert q.x.output_fake_quant.state is fxquant.FakeQuantState.VALIDATION


def test_moving_average_averages_the_reduced_batch_statistics():
    run_ranks(_moving_average)


def _merge_twice(rank: int, world: int) -> None:
    """A merge in the middle of a calibration does not count anything twice."""
    data = dataset(32)
    shards = all_shards(data, world, batch=4)
    q = prepared(SETTERS["mse"])
    fxquant.set_fake_quantize(q, fxquant.FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for x, _ in shards[rank][:2]:
            q(x)
        sync_observers(q)
        sync_observers(q)
        for x, _ in shards[rank][2:]:
            q(x)
    fxquant.set_fake_quantize(q, fxquant.FakeQuantState.VALIDATION)
    union = [b for shard in shards for b in shard]
    assert_same(quantizer_state(q), _reference(SETTERS["mse"], union), "merged twice")


def test_merging_mid_calibration_counts_each_value_once():
    run_ranks(_merge_twice)


def _standalone(rank: int, world: int) -> None:
    """QAT: every observation is reduced at once (per tensor and per channel, all kinds)."""
    g = torch.Generator().manual_seed(11)
    steps = [[torch.randn(4, 6, 5, generator=g) * (1 + 3 * r + t) for r in range(world)]
             for t in range(4)]
    kinds = {
        "minmax": MinMaxObserver,
        "moving": MovingAverageMinMaxObserver.with_args(averaging_constant=0.5),
        "mse": MSEObserver.with_args(bins=256),
    }
    for name, obs in kinds.items():
        for ch_axis in (None, 1):
            fq = fxquant.FakeQuantize(observer=obs, ch_axis=ch_axis, dtype=fxquant.quint8,
                                      symmetric=False)
            ref = fxquant.FakeQuantize(observer=obs, ch_axis=ch_axis, dtype=fxquant.quint8,
                                       symmetric=False)
            ref.distributed_sync = fxquant.distributed.DistributedSync(enabled=False)
            for batch in steps:
                out = fq(batch[rank])
                ref(torch.cat(batch))
                what = f"{name} ch_axis={ch_axis}"
                assert torch.equal(fq.scale, ref.scale), what
                assert torch.equal(fq.zero_point, ref.zero_point), what
                assert torch.equal(out, fxquant.numerics.fake_quantize(
                    batch[rank], ref.scale, ref.zero_point, fxquant.quint8, ch_axis)), what
            assert_same(dict(fq.observer.state_dict()), dict(ref.observer.state_dict()), what)


def test_qat_observations_are_reduced_every_step():
    run_ranks(_standalone)


def _weights(rank: int, world: int) -> None:
    w = torch.full((3, 4), float(rank + 1))
    # QAT: the weights are DDP-replicated, nothing is reduced (rank-specific data stays local)
    fq = fxquant.FakeQuantize(ch_axis=0, is_weight=True)
    fq(w)
    assert torch.equal(fq.observer.max_val, torch.full((3,), float(rank + 1)))
    # calibration: min / max merged (idempotent for identical weights); an idle rank gets them
    fq = fxquant.FakeQuantize(ch_axis=0, is_weight=True)
    with fxquant.fake_quantize_state(fq, fxquant.FakeQuantState.CALIBRATION):
        if rank == 0:
            fq(w)
    assert bool(fq.calibrated)
    assert torch.equal(fq.observer.max_val, torch.full((3,), 1.0))


def test_weight_quantizers_reduce_only_at_the_end_of_calibration():
    run_ranks(_weights)


def _per_channel_no_data_on_one_rank(rank: int, world: int) -> None:
    obs = HistogramObserver.with_args(bins=64)
    fq = fxquant.FakeQuantize(observer=obs, ch_axis=0)
    fxquant.set_fake_quantize(fq, fxquant.FakeQuantState.CALIBRATION)
    x = torch.randn(3, 10) * 5
    if rank == 1:
        fq(x)
    fxquant.set_fake_quantize(fq, fxquant.FakeQuantState.VALIDATION)
    ref = HistogramObserver(bins=64, ch_axis=0)
    ref(x)
    assert_same(dict(fq.observer.state_dict()), dict(ref.state_dict()), "per channel")
    # channel counts that differ between ranks name the quantizer on every rank
    fq = fxquant.FakeQuantize(observer=obs, ch_axis=0)
    fq.name = "head.out"
    fxquant.set_fake_quantize(fq, fxquant.FakeQuantState.CALIBRATION)
    fq(torch.randn(3 + rank, 4))
    with pytest.raises(fxquant.ObserverError, match=r"head\.out"):
        fxquant.set_fake_quantize(fq, fxquant.FakeQuantState.VALIDATION)


def test_per_channel_statistics_with_an_idle_rank_and_channel_mismatch():
    run_ranks(_per_channel_no_data_on_one_rank)


def _ddp_buffer_broadcast(rank: int, world: int) -> None:
    """Calibrating through DDP (buffers broadcast from rank 0 before every forward) loses
    nothing: the rank-local statistics live outside the buffers until the merge."""
    data = dataset(32)
    shards = all_shards(data, world, batch=4)
    q = prepared(SETTERS["mse"])
    ddp = nn.parallel.DistributedDataParallel(q, broadcast_buffers=True)
    with fxquant.fake_quantize_state(q, fxquant.FakeQuantState.CALIBRATION):
        for x, _ in shards[rank]:
            ddp(x).sum().backward()  # grad enabled: DDP broadcasts buffers each forward
    union = [b for shard in shards for b in shard]
    state = quantizer_state(q)
    ref = _reference(SETTERS["mse"], union)
    for k in ("x.output_fake_quant.observer.hist", "fc.output_fake_quant.scale"):
        assert torch.equal(state[k], ref[k]), k


def test_calibration_through_ddp_keeps_every_rank_statistics():
    warm_ddp()
    run_ranks(_ddp_buffer_broadcast)
