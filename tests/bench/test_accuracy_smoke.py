"""Smoke test of the accuracy-vs-peers benchmark (bench/accuracy.py): tiny sizes, in-process
peers only (torch.ao, ONNX Runtime), structure and verdict logic, no accuracy claims."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

from bench import accuracy, peers

TINY = accuracy.AccuracyConfig(("tiny_transformer",), calib_batches=1, adaround_iterations=0,
                               autoquant=False, qat_batches=2, child_peers=())


def test_tiny_run_has_every_row():
    res = accuracy.run(config=TINY)
    assert res.name == "accuracy" and res.columns == accuracy.COLUMNS
    rows = {(r["method"], r["tool"]): r for r in res.rows}
    measured = {
        ("float", "-"),
        (accuracy.W8, accuracy.FXQ_DEFAULT), (accuracy.W8, "fxquant x86"),
        (accuracy.W8, "fxquant x86 int8 (convert)"), (accuracy.W8, "fxquant onnxruntime"),
        (accuracy.W8, "torch.ao FX reference"), (accuracy.W8, "torch.ao FX int8 (x86)"),
        (accuracy.W8, "ONNX Runtime quantize_static"), (accuracy.W4, "fxquant nearest"),
        (accuracy.QAT, accuracy.FXQ_QAT), (accuracy.QAT, "torch.ao FX QAT fake-quant"),
        (accuracy.QAT, "torch.ao FX QAT int8 (x86)"),
    }
    not_run = {(accuracy.W8, "NNCF"), (accuracy.W8, "AIMET QuantSim"),
               (accuracy.W8, "pytorch-quantization"), (accuracy.W4, "AIMET AdaRound")}
    assert set(rows) == measured | not_run
    for key in measured:
        assert 0.0 <= rows[key]["accuracy (%)"] <= 100.0, (key, rows[key]["note"])
    for key in not_run:  # reported with the reason, never dropped
        assert rows[key]["accuracy (%)"] == "-" and rows[key]["note"], key
    assert res.notes[0].startswith("target fxquant >= every peer")


def test_verdicts_name_the_loser_with_numbers():
    table = accuracy._Table()
    table.acc = {("m", accuracy.W8, accuracy.FXQ_DEFAULT): 90.0,
                 ("m", accuracy.W8, "NNCF"): 89.0,
                 ("m", accuracy.W8, "ONNX Runtime quantize_static"): 91.0}
    table.test_size = {"m": 1000}
    notes = accuracy._verdicts(table, ("m",))
    assert notes[0].startswith("target fxquant >= every peer on every common row: MISSED (1 of 2 "
                               "comparisons; lost: m/W8A8 PTQ/ONNX Runtime quantize_static; "
                               "largest loss 10 test images)")
    assert any("90.00 >= NNCF 89.00" in n for n in notes)
    assert any("LOSES to ONNX Runtime quantize_static 91.00 (-1.00 = 10 of 1000 images)" in n
               for n in notes)


def test_a_missing_peer_is_an_error_not_an_exception(monkeypatch):
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name: None)
    run = peers.nncf_ptq(None, None, [])
    assert run.model is None and run.error.startswith("not installed")
