"""Smoke test of the coverage benchmark (bench/coverage.py, bench/coverage_zoo.py,
bench/control_flow.py): the control-flow models defeat torch.fx but fxquant prepares, calibrates
and runs them; a row carries every column; the zoo holds the issue's families."""

from __future__ import annotations

import dataclasses
import math
import os
import signal

import pytest
import torch
import torch.fx

import fxquant
from bench import control_flow, coverage, coverage_zoo


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


@pytest.mark.slow  # two exports, two runtimes (~5 s); tests/export covers those stages
def test_run_model_fills_every_column_and_the_notes_count_it(tmp_path) -> None:
    cfg = dataclasses.replace(coverage.QUICK, models=("mask=None keyword",), peers=False)
    spec = coverage.zoo()["mask=None keyword"]
    row, failures = coverage.run_model(spec, cfg, str(tmp_path))
    assert set(row) == set(coverage.COLUMNS) and not failures
    assert row["capture"] == "fx" and row["float ops"] == "0"
    assert math.isfinite(row["SQNR (dB)"]) and row["SQNR (dB)"] > 20.0
    assert row["ORT export"].startswith("ok") and row["ORT verify"].startswith("ok")
    assert row["OpenVINO verify"].startswith("ok")
    notes = coverage._notes([row])
    assert "exports 1/1 (100%)" in notes[0] and "verifies in ONNX Runtime" in notes[0]
    assert "public model families (1 rows: all but the 0 control-flow" in notes[1]
    assert "verifies in ONNX Runtime 1/1 (100%)" in notes[1]


def _dies_verifying_in_openvino(name: str, cfg: coverage.CoverageConfig, conn) -> None:
    """A model process whose runtime kills it (as OpenVINO's compile_model once did)."""
    row = {c: "-" for c in coverage.COLUMNS} | {"model": name, "ORT export": "ok (1.0 s)"}
    conn.send(("stage", "verify OpenVINO", row))
    os.kill(os.getpid(), signal.SIGSEGV)


def test_a_model_process_that_crashes_costs_one_cell_not_the_suite() -> None:
    row, failures = coverage._isolated("m", coverage.QUICK, target=_dies_verifying_in_openvino)
    assert row["OpenVINO verify"] == "FAIL process died (signal SIGSEGV) in verify OpenVINO"
    assert row["ORT export"] == "ok (1.0 s)" and row["model"] == "m"  # the row so far is kept
    assert failures == [("m", "verify OpenVINO", "process died (signal SIGSEGV)")]


def test_zoo_holds_the_issue_families() -> None:
    specs = coverage.zoo()
    sources = [s.source for s in specs.values()]
    assert sources.count("torchvision") >= 14 and sources.count("detection") >= 3
    assert sources.count("transformers") >= 7 and sources.count("torch.nn") >= 4
    assert sources.count("timm") >= 2 and sources.count("control-flow") >= 4
    assert {"vit_b_16", "swin_t", "efficientnet_b0", "convnext_tiny"} <= set(specs)
    assert set(coverage.QUICK.models) <= set(specs)
    assert set(coverage_zoo.QUICK_MODELS) == set(coverage.QUICK.models)
    t = torch.ones(2)
    assert coverage._main_output((None, {"a": t})) is t
