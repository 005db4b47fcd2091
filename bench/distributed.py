"""Cost of fxquant's distributed sync: 2 gloo ranks on this machine's CPUs.

Model: :class:`bench.models.ResidualCNN` (width 8, batch 8 per rank, 32x32 random images; quick:
fewer rounds), prepared, calibrated and wrapped in ``DistributedDataParallel`` (default
``broadcast_buffers=True``) on each rank (1 thread per rank).  Each measure runs with fxquant's
sync on (the default) and off (``no_distributed_sync``: rank-local observers and BatchNorm; the
ranks drift apart) -- DDP's gradient all-reduce runs in both:

* **QAT step** (forward, cross-entropy, backward, SGD step) with ``default_qat_qconfig_setter``
  (moving-average activations: one all-reduce per activation quantizer per step; each ConvBn
  one in forward and one in backward), and with MSE-histogram activations (two per quantizer:
  the range, then the counts);
* **calibration** (``fxquant.calibrate`` over 8 batches): MSE histograms
  (rank-local, merged once at the end: three collectives in all) and moving averages (one
  all-reduce per quantizer per batch, plus one to agree that every rank has the batch).

Timing in rank 0; both ranks run the same interleaved rounds (each variant ``block`` calls per
round, fastest call kept; the collectives keep the ranks in lock-step); ratios are medians over
rounds of (sync on / sync off).  fxquant's own collectives are counted and timed by wrapping
``torch.distributed.all_reduce`` (DDP's gradient buckets go through its C++ reducer and are not
counted): ``in fxquant collectives`` is the median time per call spent inside them, waiting
for the other rank included, and ``all_reduce latency`` the median of a lone 2-float all-reduce.
On a loaded 2-core machine the two ranks mostly wait for CPU time: step times and ratios are
noisy there, the collective count and latency are the robust numbers.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import fxquant
from bench.common import SuiteResult
from bench.models import ResidualCNN
from fxquant.distributed import run_local

__all__ = ["DistConfig", "FULL", "QUICK", "run", "COLUMNS"]

COLUMNS = ["measure", "sync", "ms", "ratio on / off", "fxquant collectives per call",
           "in fxquant collectives (ms)"]


@dataclass(frozen=True)
class DistConfig:
    width: int = 8
    batch: int = 8
    rounds: int = 7
    block: int = 3
    calib_batches: int = 8


FULL = DistConfig()
QUICK = DistConfig(width=4, batch=4, rounds=2, block=1)


def _qat_step(ddp: DistributedDataParallel, opt: torch.optim.Optimizer, x, y) -> Callable:
    def step() -> None:
        loss = F.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def _calib(q: torch.nn.Module, batches: list) -> Callable:
    def calib() -> None:
        fxquant.calibrate(q, batches, progress=False)
    return calib


class _Counter:
    """Counts and times the ``torch.distributed.all_reduce`` calls made while installed."""

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0.0
        self._real = dist.all_reduce

    def __enter__(self) -> _Counter:
        def counted(*args, **kwargs):
            t = time.perf_counter()
            try:
                return self._real(*args, **kwargs)
            finally:
                self.calls += 1
                self.seconds += time.perf_counter() - t

        dist.all_reduce = counted
        return self

    def __exit__(self, *exc) -> None:
        dist.all_reduce = self._real


def _latency() -> float:
    t = torch.zeros(2)
    times = []
    for _ in range(200):
        s = time.perf_counter()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        times.append(time.perf_counter() - s)
    return statistics.median(times[20:])


def _rank(rank: int, world: int, out: str, cfg: DistConfig) -> None:
    torch.manual_seed(0)
    model = ResidualCNN(width=cfg.width).eval()
    gen = torch.Generator().manual_seed(rank + 1)
    x = torch.randn(cfg.batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (cfg.batch,), generator=gen)
    batches = [torch.randn(cfg.batch, 3, 32, 32, generator=gen) for _ in range(cfg.calib_batches)]
    mse = fxquant.get_qconfig(observer=fxquant.MSEObserver)
    measures: dict[str, dict[str, Callable]] = {}
    for label, setter in (("QAT step, moving averages", fxquant.default_qat_qconfig_setter),
                          ("QAT step, MSE histograms", mse)):
        base = fxquant.prepare(model, x, setter)
        fxquant.calibrate(base, batches[:2], progress=False)
        fxquant.set_fake_quantize(base, fxquant.FakeQuantState.QAT)
        measures[label] = {}
        for sync in ("on", "off"):
            q = copy.deepcopy(base).train()
            fxquant.set_distributed_sync(q, sync == "on")
            ddp = DistributedDataParallel(q)
            opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
            measures[label][sync] = _qat_step(ddp, opt, x, y)
    for label, setter in (
        (f"calibration of {len(batches)} batches, MSE histograms",
         fxquant.default_calibration_qconfig_setter),
        (f"calibration of {len(batches)} batches, moving averages",
         fxquant.default_qat_qconfig_setter),
    ):
        measures[label] = {}
        for sync in ("on", "off"):
            q = fxquant.prepare(model, x, setter)
            fxquant.set_distributed_sync(q, sync == "on")
            measures[label][sync] = _calib(q, batches)
    counts: dict[str, list[float]] = {}
    for label, fns in measures.items():  # warm-up, counting fxquant's collectives
        for sync, fn in fns.items():
            with _Counter() as c:
                fn()
            if sync == "on":
                counts[label] = [c.calls]
    times: dict[tuple[str, str], list[float]] = {}
    inside: dict[str, list[float]] = {}
    for _ in range(cfg.rounds):
        for label, fns in measures.items():
            for sync, fn in fns.items():
                best = float("inf")
                for _ in range(cfg.block):
                    with _Counter() as c:
                        t = time.perf_counter()
                        fn()
                        best = min(best, time.perf_counter() - t)
                    if sync == "on":
                        inside.setdefault(label, []).append(c.seconds)
                times.setdefault((label, sync), []).append(best)
    latency = _latency()
    if rank == 0:
        pathlib.Path(out).write_text(json.dumps({
            "times": [[k[0], k[1], v] for k, v in times.items()],
            "counts": {k: v[0] for k, v in counts.items()},
            "inside": {k: statistics.median(v) for k, v in inside.items()},
            "latency": latency,
        }))


def run(quick: bool = False, config: DistConfig | None = None) -> SuiteResult:
    """Run the suite on 2 local gloo ranks (``quick``: smaller model, 2 rounds)."""
    cfg = config or (QUICK if quick else FULL)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        run_local(_rank, out, cfg, world_size=2, timeout=1800.0)
        data = json.loads(pathlib.Path(out).read_text())
    times = {(label, sync): v for label, sync, v in data["times"]}
    res = SuiteResult(
        "distributed",
        f"Cost of distributed sync: 2 gloo ranks, ResidualCNN width {cfg.width}, batch "
        f"{cfg.batch} per rank, 32x32",
        COLUMNS,
    )
    for label in dict.fromkeys(k[0] for k in times):
        on, off = times[(label, "on")], times[(label, "off")]
        ratio = statistics.median(a / b for a, b in zip(on, off, strict=True))
        for sync, v in (("on", on), ("off", off)):
            res.rows.append({
                "measure": label, "sync": sync, "ms": statistics.median(v) * 1e3,
                "ratio on / off": ratio if sync == "on" else "",
                "fxquant collectives per call": data["counts"][label] if sync == "on" else "",
                "in fxquant collectives (ms)": data["inside"][label] * 1e3
                if sync == "on" else "",
            })
    lat = data["latency"] * 1e6
    res.notes.append(
        f"load average at start {load:.2f}; 2 ranks x 1 thread; {cfg.rounds} rounds x "
        f"{cfg.block} calls (fastest per round), median of per-round ratios"
    )
    res.notes.append(
        f"all_reduce latency (2 floats, gloo, this machine now): {lat:.0f} us; the QAT sync "
        "costs about (collectives per step) x latency"
    )
    return res
