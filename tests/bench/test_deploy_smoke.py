"""Smoke test of the deploy benchmark (bench/deploy.py): quick sizes, no timing asserts."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from bench import deploy

EXPECTED = {
    ("torch", "fp32 eager"),
    ("onnxruntime", "fp32 (float ONNX)"),
    ("onnxruntime", "int8 fxquant QDQ"),
    ("onnxruntime", "int8 ORT quantize_static"),
    ("openvino", "fp32 (float ONNX, f32 hint)"),
    ("openvino", "int8 fxquant QDQ (openvino profile)"),
    ("torch", "int8 fxquant convert(x86)"),
    ("litert", "fp32 (float TFLite, XNNPACK)"),
    ("litert", "int8 fxquant TFLite (XNNPACK)"),
}
OPTIONAL = {"openvino": "openvino", "litert": "ai_edge_litert"}


def test_quick_run_has_a_row_per_runtime_model_and_batch():
    res = deploy.run(quick=True)
    assert res.name == "deploy" and res.columns == deploy.COLUMNS
    for batch in deploy.QUICK.batches:
        rows = {(r["runtime"], r["model"]): r for r in res.rows if r["batch"] == batch}
        assert set(rows) == EXPECTED
        for (runtime, model), row in rows.items():
            if runtime in OPTIONAL and importlib.util.find_spec(OPTIONAL[runtime]) is None:
                assert row["error"] and row["ms"] == "-"
                continue
            assert row["error"] == "", (runtime, model, row["error"])
            assert isinstance(row["ms"], float) and row["ms"] > 0
            assert isinstance(row["SQNR vs fp32 (dB)"], float)
            assert row["vs ORT fp32"].endswith("x") and row["vs torch fp32"].endswith("x")
    int8 = [r for r in res.rows if r["model"].startswith("int8")]
    assert all(r["SQNR vs fp32 (dB)"] > 10 for r in int8 if r["error"] == "")
    fx_ort = next(r for r in res.rows if r["runtime"] == "onnxruntime" and "fxquant" in r["model"])
    # ONNX Runtime against the runtime simulation (the eval-mode model): code for code
    assert fx_ort["agreement"].startswith("verify (runtime sim): 100.0% identical, max 0")
    assert any(n.startswith("target:") and ("MET" in n or "MISSED" in n) for n in res.notes)


def test_a_failing_variant_is_a_row_with_its_error():
    def broken() -> deploy.Runner:
        raise RuntimeError("no such runtime")

    variants = [
        deploy.Variant("torch", "fp32 eager", make=lambda: lambda x: x.sum((2, 3))),
        deploy.Variant("onnxruntime", "fp32 (float ONNX)", make=lambda: lambda x: x.sum((2, 3))),
        deploy.Variant("onnxruntime", "int8 fxquant QDQ", error="ExportError: boom"),
        deploy.Variant("onnxruntime", "int8 ORT quantize_static", make=broken),
    ]
    cfg = deploy.QUICK
    ref = np.ones((cfg.eval_batch, 3), np.float32)
    eval_x = np.ones((cfg.eval_batch, 3, cfg.image, cfg.image), np.float32)
    for batch in cfg.batches:
        deploy._time_batch(variants, cfg, batch, eval_x, ref, {})
    rows = deploy._rows(variants, cfg)
    assert len(rows) == len(variants) * len(cfg.batches)
    by_model = {(r["model"], r["batch"]): r for r in rows}
    assert by_model[("int8 fxquant QDQ", 1)]["error"] == "ExportError: boom"
    assert "no such runtime" in by_model[("int8 ORT quantize_static", 1)]["error"]
    assert by_model[("int8 ORT quantize_static", 1)]["ms"] == "-"
    assert by_model[("fp32 eager", 1)]["vs torch fp32"] == "1.00x"
    assert math.isfinite(by_model[("fp32 eager", 1)]["ms"])
    (note,) = deploy._target_notes(variants, cfg)
    assert "MISSED" in note and "not measured" in note
