"""Smoke tests of the ``memory`` and ``distributed`` bench suites: tiny sizes, structure only."""

from __future__ import annotations

from bench import distributed, memory
from tests.distributed.ranks import warm_ddp


def test_memory_suite_rows_and_verdicts():
    cfg = memory.MemoryConfig(width=2, batch=2, batches=12, marks=(1, 10, 12))
    res = memory.run(config=cfg)
    assert res.name == "memory" and res.columns == memory.COLUMNS
    variants = {r["variant"] for r in res.rows}
    assert variants == {"float", "MSE histograms", "entropy histograms, weights too"}
    assert all(r["RSS (MiB)"] > 0 for r in res.rows)
    state = {r["variant"]: r["observer state (KiB)"] for r in res.rows}
    assert state["float"] == 0 < state["MSE histograms"] < state["entropy histograms, weights too"]
    assert sum("target < 4 MiB" in n for n in res.notes) == 2


def test_distributed_suite_measures_sync_on_and_off():
    warm_ddp()
    cfg = distributed.DistConfig(width=2, batch=2, rounds=1, block=1, calib_batches=2)
    res = distributed.run(config=cfg)
    assert res.name == "distributed" and res.columns == distributed.COLUMNS
    measures = {r["measure"] for r in res.rows}
    assert len(measures) == 4 and len(res.rows) == 8
    for row in res.rows:
        assert row["ms"] > 0
        assert (row["ratio on / off"] > 0) if row["sync"] == "on" else row["ratio on / off"] == ""
