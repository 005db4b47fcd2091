"""Memory of histogram calibration: resident memory over 1,000 batches stays flat.

Model: :class:`bench.models.ResidualCNN` (width 16, batch 16, 32x32; quick: width 8, batch 4,
100 batches), every op quantized, in ``FakeQuantState.CALIBRATION`` without gradients:

* ``MSE histograms``: ``default_calibration_qconfig_setter`` (per-tensor MSE histograms on
  activations, per-channel min-max weights);
* ``entropy histograms, weights too``: entropy histograms on activations *and* per-channel
  weight histograms (the largest histogram state fxquant keeps).

Every batch is new random data whose magnitude grows over the run (x ``1 + t / 100``), so the
histograms re-grid to larger ranges again and again.  The resident set size (``VmRSS``) is read
after batches 1, 10, 100, 500 and 1,000 (after ``gc.collect()``), next to the same loop over the
float model; the histogram state itself is a fixed number of int64 bins per quantizer (and per
channel), reported as ``observer state``.  Target: RSS grows less than 4 MiB from batch 10 to
batch 1,000 (bounded: nothing accumulates per batch).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch

import fxquant
from bench.common import SuiteResult
from bench.models import ResidualCNN
from fxquant.observers import HistogramObserver, Observer

__all__ = ["MemoryConfig", "FULL", "QUICK", "run", "COLUMNS"]

COLUMNS = ["variant", "batches", "RSS (MiB)", "growth since batch 10 (MiB)",
           "observer state (KiB)"]
TARGET_GROWTH_MIB = 4.0


@dataclass(frozen=True)
class MemoryConfig:
    width: int = 16
    batch: int = 16
    batches: int = 1000
    marks: tuple[int, ...] = (1, 10, 100, 500, 1000)


FULL = MemoryConfig()
QUICK = MemoryConfig(width=8, batch=4, batches=100, marks=(1, 10, 50, 100))


def rss_mib() -> float:
    """This process's resident set size in MiB (Linux ``/proc``; peak RSS elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _variants(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.nn.Module]:
    entropy = HistogramObserver.with_args(method="entropy")
    every = fxquant.get_qconfig(observer=entropy, weight_observer=entropy)
    out = {"float": model}
    for name, setter in (("MSE histograms", fxquant.default_calibration_qconfig_setter),
                         ("entropy histograms, weights too", every)):
        q = fxquant.prepare(model, x, setter)
        fxquant.set_fake_quantize(q, fxquant.FakeQuantState.CALIBRATION)
        out[name] = q
    return out


def _state_kib(model: torch.nn.Module) -> float:
    total = sum(
        b.numel() * b.element_size()
        for m in model.modules() if isinstance(m, Observer) for b in m.buffers()
    )
    return total / 1024


def run(quick: bool = False, config: MemoryConfig | None = None) -> SuiteResult:
    """Run the suite (``quick``: smaller model, 100 batches)."""
    cfg = config or (QUICK if quick else FULL)
    load = os.getloadavg()[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # memory, not speed: one thread avoids OpenMP spinning under load
    try:
        return _run(cfg, load)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: MemoryConfig, load: float) -> SuiteResult:
    torch.manual_seed(0)
    model = ResidualCNN(width=cfg.width).eval()
    x = torch.randn(cfg.batch, 3, 32, 32)
    res = SuiteResult(
        "memory",
        f"Memory of histogram calibration: ResidualCNN width {cfg.width}, batch {cfg.batch}, "
        f"{cfg.batches} batches",
        COLUMNS,
    )
    growth: dict[str, float] = {}
    for name, m in _variants(model, x).items():
        gen = torch.Generator().manual_seed(1)
        base = None
        with torch.no_grad():
            for t in range(1, cfg.batches + 1):
                m(torch.randn(cfg.batch, 3, 32, 32, generator=gen) * (1 + t / 100))
                if t in cfg.marks:
                    gc.collect()
                    rss = rss_mib()
                    base = rss if t == 10 or base is None else base
                    res.rows.append({
                        "variant": name, "batches": t, "RSS (MiB)": rss,
                        "growth since batch 10 (MiB)": rss - base if t >= 10 else "",
                        "observer state (KiB)": _state_kib(m),
                    })
        growth[name] = res.rows[-1]["growth since batch 10 (MiB)"]
        if name != "float":  # the ranges were computed and are finite
            fxquant.set_fake_quantize(m, fxquant.FakeQuantState.VALIDATION)
    res.notes.append(
        f"load average at start {load:.2f}; 1 thread; RSS = VmRSS after gc.collect(), this "
        "process (the float model runs first)"
    )
    for name, g in growth.items():
        if name == "float":
            continue
        verdict = "MET" if g < TARGET_GROWTH_MIB else "MISSED"
        res.notes.append(
            f"{name}: RSS growth batch 10 -> {cfg.batches} = {g:.2f} MiB "
            f"(float model: {growth['float']:.2f} MiB); target < {TARGET_GROWTH_MIB:g} MiB: "
            f"{verdict}"
        )
    return res
