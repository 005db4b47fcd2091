"""Shared benchmark plumbing: timing, machine facts, result tables."""

from __future__ import annotations

import datetime
import gc
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["SuiteResult", "median_time", "interleaved", "machine_info", "markdown_table"]


@dataclass
class SuiteResult:
    """One benchmark suite's output.

    Attributes:
        name: short id (``deploy``, ``ptq`` ...).
        title: heading in the report.
        columns: column names of ``rows``.
        rows: one dict per row (keys = columns); numbers are formatted by the report.
        notes: free-text lines printed under the table (targets met / missed, peers that could
            not run and why).
    """

    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def median_time(
    fn: Callable[[], Any], *, warmup: int = 3, repeat: int = 20, min_seconds: float = 0.0
) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    gc.collect()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(
    calls: dict[str, Callable[[], Any]], base: str, rounds: int, block: int, warmup: int = 2
) -> dict[str, tuple[float, float]]:
    """``{name: (median seconds, median ratio to base)}`` of paired, interleaved rounds.

    In a round the calls take turns, one call each, ``block`` times, and each keeps its fastest
    call (the one least disturbed by other processes); ratios are taken within a round, so that
    load from other processes falls on all variants alike, and the median over rounds is kept.
    """
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    gc.collect()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        best = dict.fromkeys(calls, float("inf"))
        for _ in range(block):
            for name, fn in calls.items():
                t = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t)
        for name in calls:
            times[name].append(best[name])
    out = {}
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, times[base], strict=True)]
        out[name] = (statistics.median(ts), statistics.median(ratios))
    return out


def machine_info() -> dict[str, Any]:
    """Machine, versions and date for the report header."""
    import numpy

    info: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        import os

        info["cores"] = os.cpu_count()
    except OSError:
        pass
    for mod in ("onnxruntime", "openvino", "onnx"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # not installed: reported as such
            info[mod] = "not installed"
    return info


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.2f}"
    return str(v)


def markdown_table(result: SuiteResult) -> str:
    """The suite's rows as a Markdown table."""
    head = "| " + " | ".join(result.columns) + " |"
    sep = "|" + "|".join("---" for _ in result.columns) + "|"
    body = [
        "| " + " | ".join(_fmt(r.get(c, "")) for c in result.columns) + " |" for r in result.rows
    ]
    return "\n".join([head, sep, *body])
