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
* **calibration batch** (``fxquant.calibrate`` over 8 batches, per batch): MSE histograms
  (rank-local, merged once at the end: three collectives in all) and moving averages (one
  all-reduce per quantizer per batch, plus one to agree that every rank has the batch).

Timing in rank 0; both ranks run the same interleaved rounds (each variant ``block`` calls per
round, fastest call kept; the collectives keep the ranks in lock-step); ratios are medians over
rounds of (sync on / sync off).  Two ranks on 2 shared cores: absolute times mostly show the
machine's load; the ratio is the cost of the sync.
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
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import fxquant
from bench.common import SuiteResult
from bench.models import ResidualCNN
from fxquant.distributed import run_local
from fxquant.nn import ConvBnNd

__all__ = ["DistConfig", "FULL", "QUICK", "run", "COLUMNS"]

COLUMNS = ["measure", "sync", "ms", "ratio on / off", "collectives per call"]


@dataclass(frozen=True)
class DistConfig:
    width: int = 8
    batch: int = 8
    rounds: int = 7
    block: int = 3


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


def _activation_quantizers(q: torch.nn.Module) -> int:
    return sum(1 for m in q.modules() if isinstance(m, fxquant.FakeQuantize) and not m.is_weight)


def _rank(rank: int, world: int, out: str, cfg: DistConfig) -> None:
    torch.manual_seed(0)
    model = ResidualCNN(width=cfg.width).eval()
    gen = torch.Generator().manual_seed(rank + 1)
    x = torch.randn(cfg.batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (cfg.batch,), generator=gen)
    batches = [torch.randn(cfg.batch, 3, 32, 32, generator=gen) for _ in range(8)]
    mse = fxquant.get_qconfig(observer=fxquant.MSEObserver)
    measures: dict[str, dict[str, Callable]] = {}
    counts: dict[str, str] = {}
    for label, setter in (("QAT step, moving averages", fxquant.default_qat_qconfig_setter),
                          ("QAT step, MSE histograms", mse)):
        base = fxquant.prepare(model, x, setter)
        fxquant.calibrate(base, batches[:2], progress=False)
        fxquant.set_fake_quantize(base, fxquant.FakeQuantState.QAT)
        acts = _activation_quantizers(base)
        bns = sum(1 for m in base.modules() if isinstance(m, ConvBnNd))
        per = 1 if "moving" in label else 2
        counts[label] = f"{per * acts} + {2 * bns} (BN) + DDP's gradient buckets"
        measures[label] = {}
        for sync in ("on", "off"):
            q = copy.deepcopy(base).train()
            fxquant.set_distributed_sync(q, sync == "on")
            ddp = DistributedDataParallel(q)
            opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
            measures[label][sync] = _qat_step(ddp, opt, x, y)
    for label, setter, per_batch in (
        ("calibration batch, MSE histograms", fxquant.default_calibration_qconfig_setter, False),
        ("calibration batch, moving averages", fxquant.default_qat_qconfig_setter, True),
    ):
        measures[label] = {}
        for sync in ("on", "off"):
            q = fxquant.prepare(model, x, setter)
            fxquant.set_distributed_sync(q, sync == "on")
            measures[label][sync] = _calib(q, batches)
        acts = _activation_quantizers(q)
        counts[label] = f"{acts + 1} per batch" if per_batch else "3 per calibration"
    times: dict[tuple[str, str], list[float]] = {}
    for fns in measures.values():  # warm-up
        for fn in fns.values():
            fn()
    for _ in range(cfg.rounds):
        for label, fns in measures.items():
            for sync, fn in fns.items():
                best = float("inf")
                for _ in range(cfg.block):
                    t = time.perf_counter()
                    fn()
                    best = min(best, time.perf_counter() - t)
                if label.startswith("calibration"):
                    best /= len(batches)
                times.setdefault((label, sync), []).append(best)
    if rank == 0:
        pathlib.Path(out).write_text(json.dumps({
            "times": [[k[0], k[1], v] for k, v in times.items()], "counts": counts,
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
                "collectives per call": data["counts"][label] if sync == "on" else "",
            })
    res.notes.append(
        f"load average at start {load:.2f}; 2 ranks x 1 thread; {cfg.rounds} rounds x "
        f"{cfg.block} calls (fastest per round), median of per-round ratios"
    )
    return res
