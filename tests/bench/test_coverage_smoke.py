"""Smoke test of the coverage benchmark (bench/coverage.py, bench/control_flow.py): the
control-flow models defeat torch.fx but fxquant prepares, calibrates and runs them."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.fx

import fxquant
from bench import control_flow, coverage


@pytest.mark.parametrize("name", sorted(control_flow.CONTROL_FLOW_MODELS))
def test_control_flow_models_are_untraceable_but_prepare_and_run(name: str) -> None:
    factory, shape = control_flow.CONTROL_FLOW_MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(4, *shape)
    with pytest.raises(Exception):  # noqa: B017 (TraceError, TypeError ... depending on model)
        torch.fx.symbolic_trace(model)
    qmodel = fxquant.prepare(model, x, fxquant.default_calibration_qconfig_setter, backend="x86")
    fxquant.calibrate(qmodel, [x, torch.randn(4, *shape)], progress=False)
    with torch.no_grad():
        ref, out = model(x), qmodel(x)
    assert out.shape == ref.shape
    assert coverage._sqnr(ref, out) > 10.0
    assert fxquant.summary(qmodel).capture  # the eager forward / island is reported


def test_run_reports_a_row_per_model_with_notes(tmp_path) -> None:
    cfg = dataclasses.replace(
        coverage.QUICK, models=("sign_branch", "untraceable_block"), int16_sensitive=True
    )
    specs = coverage.zoo()
    rows = []
    for name in cfg.models:
        row, _ = coverage.run_model(specs[name], cfg, str(tmp_path))
        rows.append(row)
    for row in rows:
        assert set(row) == set(coverage.COLUMNS)
        assert row["prepare"] == row["calibrate"] == row["run"] == "ok"
        assert math.isfinite(row["fxquant SQNR (dB)"])
        assert row["torch.ao"].startswith("FAIL prepare_fx")
        assert row["fxquant >= torch.ao"] == "yes (torch.ao failed)"
    notes = coverage._notes(rows)
    assert notes[0].startswith("fxquant prepares, calibrates and runs 2/2 models")


def test_zoo_sizes_and_main_output() -> None:
    specs = coverage.zoo()
    sources = [s.source for s in specs.values()]
    assert sources.count("timm") >= 20 and sources.count("transformers") >= 3
    assert sources.count("control-flow") >= 4
    assert set(coverage.QUICK.models) <= set(specs)
    t = torch.ones(2)
    assert coverage._main_output((None, t)) is t
    assert coverage._main_output({"logits": t}) is t
    coverage.ensure_torchvision_importable()  # installs the shim at most once
    assert coverage.ensure_torchvision_importable() is False
