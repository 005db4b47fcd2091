"""Smoke tests of the ``kernels`` and ``cost`` benchmark suites: tiny sizes, no timing asserts.

The fused (``torch.compile``) kernels and the peers (NNCF ...) are kept out: compiling and
importing them is what makes the full suites slow; their correctness is tested in
``tests/numerics/test_fast_paths.py``.
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


def test_cost_suite_quick_shape(monkeypatch):
    monkeypatch.setattr(cost, "_peer_status", lambda module, key: (None, "off in the smoke test"))
    cfg = cost.CostConfig(width=4, batch=4, rounds=1, block=1, nncf_batches=0, heavy=False)
    res = cost.run(config=cfg)
    assert res.name == "cost" and res.columns == cost.COLUMNS
    by = {(r["measure"], r["toolkit"], r.get("variant", "")): r for r in res.rows}
    qat = [r for r in res.rows if r["measure"].startswith("QAT") and r["toolkit"] == "fxquant"]
    assert qat and all(r["ratio"] > 0 for r in qat)
    cal = [r for r in res.rows if r["measure"].startswith("calibration") and "ratio" in r]
    assert {r["toolkit"] for r in cal} >= {"float (torch)", "fxquant", "torch.ao"}
    ranges = [r for r in res.rows if r["measure"].startswith("range search")]
    assert len(ranges) == 3  # setup A x (percentile, mse, entropy)
    for toolkit in ("AIMET", "NVIDIA pytorch-quantization"):
        assert any(k[1] == toolkit for k in by)
    notes = "\n".join(res.notes)
    for target in ("QAT step <=", "calibration <=", "range search <"):
        assert target in notes


@pytest.mark.parametrize("key", ["aimet", "pytorch_quantization", "no_such_peer"])
def test_peer_status_reports_a_reason(key):
    mod, why = cost._peer_status("fxquant_no_such_module_xyz", key)
    assert mod is None and why
