"""Smoke tests of the ``kernels`` and ``cost`` benchmark suites: tiny sizes, no timing asserts.

The fused (``torch.compile``) kernels and the peers (NNCF, ModelOpt, AIMET: child processes)
are kept out: compiling and importing them is what makes the full suites slow; the kernels'
correctness is tested in ``tests/numerics``.
"""

from __future__ import annotations

import pytest
from bench.common import markdown_table

from bench import cost, kernels


def test_kernels_suite_rows_and_bit_identity(monkeypatch):
    monkeypatch.setattr(kernels, "_check_fused", lambda: (False, "off in the smoke test"))
    res = kernels.run(config=kernels.KernelConfig((2, 8, 4, 4), rounds=1, block=1))
    assert res.name == "kernels" and res.columns == kernels.COLUMNS
    variants = {(r["granularity"], r["pass"], r["variant"]) for r in res.rows}
    for gran in ("per-tensor", "per-channel (axis 1)"):
        for mode in ("fwd", "fwd+bwd"):
            for name in ("copy (out.copy_(x))", "torch", "fxquant reference", "fxquant"):
                assert (gran, mode, name) in variants
    for row in res.rows:
        assert row["ms"] > 0 and row["x copy"] > 0
        if "bit-identical" in row:
            assert row["bit-identical"] == "yes", row
    notes = "\n".join(res.notes)
    assert "not available here: off in the smoke test" in notes
    assert "MET" in notes or "MISSED" in notes
    assert markdown_table(res).count("\n") == len(res.rows) + 1


def test_cost_suite_quick_shape():
    cfg = cost.CostConfig(cost.QUICK_MODELS, batch=4, rounds=1, block=1, peers=False,
                          slope_batches=0, range_width=4, heavy=False, adaround_iterations=0)
    res = cost.run(config=cfg)
    assert res.name == "cost" and res.columns == cost.COLUMNS
    models = {cm.label for cm in cfg.models}
    assert {r["model"] for r in res.rows} >= models
    for label in models:
        rows = [r for r in res.rows if r["model"] == label]
        qat = [r for r in rows if r["measure"] == cost.QAT and r["toolkit"] == "fxquant"]
        assert qat and all(r["ratio"] > 0 for r in qat)
        cal = [r for r in rows if r["measure"] == cost.CALIB and "ratio" in r]
        assert {r["toolkit"] for r in cal} >= {"float (torch)", "fxquant", "torch.ao"}
        for peer in ("NNCF", "NVIDIA ModelOpt", "AIMET"):
            assert any(r["toolkit"] == peer and r.get("note") for r in rows)
    ranges = [r for r in res.rows if r["measure"].startswith("range search")]
    assert len(ranges) == 3  # setup A x (percentile, mse, entropy)
    notes = "\n".join(res.notes)
    for target in ("QAT step <=", "calibration <=", "range search <", "lowest of all peers"):
        assert target in notes


@pytest.mark.parametrize("key", ["aimet", "pytorch_quantization", "no_such_peer"])
def test_peer_status_reports_a_reason(key):
    mod, why = cost._peer_status("fxquant_no_such_module_xyz", key)
    assert mod is None and why
