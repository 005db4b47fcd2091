"""Smoke test of the PTQ benchmark (bench/ptq.py): quick sizes, structure only, no accuracy."""

from __future__ import annotations

from bench import ptq


def test_quick_run_has_every_row_and_a_note_per_target():
    res = ptq.run(quick=True)
    assert res.name == "ptq" and res.columns == ptq.COLUMNS
    for name in ptq.QUICK.models:
        rows = {r["config"]: r for r in res.rows if r["model"] == name}
        expected = {"float", "W8A8 min-max", "W4A8 nearest", "W4A8 + bias correction",
                    "W4A8 + AdaRound", "W4A8 + block reconstruction",
                    "AutoQuant (1-point budget)"}
        if name in ptq.CNNS:
            expected |= {"W4A4 nearest", "W4A4 + block reconstruction",
                         "W4A4 MSE-act nearest", "W4A4 MSE-act + block reconstruction",
                         "W4A8 per-tensor nearest", "W3A8 nearest"}
            # AdaRound rows of the harder settings appear where nearest loses >= 5 points
            expected |= {f"{label} + AdaRound" for label in ("W4A8 per-tensor", "W3A8")
                         if rows[f"{label} nearest"]["vs float"] <= -5}
        assert set(rows) == expected, name
        for config, row in rows.items():
            assert not str(row["note"]).startswith("error"), (name, config, row["note"])
            assert 0.0 <= row["accuracy (%)"] <= 100.0
            assert isinstance(row["seconds"], float)
        assert rows["float"]["vs float"] == 0.0
        assert "s/layer" in rows["W4A8 + AdaRound"]["note"]
        assert "best:" in rows["AutoQuant (1-point budget)"]["note"]
    targets = [n for n in res.notes if n.startswith("target")]
    for phrase in ("W8A8 within 0.5", "W4A8 AdaRound within 1.5", "AutoQuant meets a 1-point",
                   "CLE +5", "AdaRound on residual_cnn < 10 min",
                   "W4A4 (MSE act) + block reconstruction within 1 of float in < 3 min"):
        assert any(phrase in n for n in targets), phrase
    for n in targets:
        assert "MET" in n or "MISSED" in n or "not applicable" in n or "not measured" in n, n


def test_target_notes_judge_the_numbers():
    m = ptq._Model("depthwise_cnn", 90.0, [], None)
    m.acc = {"W8A8 min-max": 89.6, "W4A8 nearest": 80.0, "W4A8 + AdaRound": 88.0,
             "AutoQuant (1-point budget)": 88.9, "W8A8 per-tensor min-max": 50.0,
             "W8A8 per-tensor CLE + min-max": 86.0, "W4A8 per-tensor min-max": 88.0,
             "W4A8 per-tensor CLE + min-max": 88.5}
    notes = ptq._target_notes({"depthwise_cnn": m})
    text = "\n".join(notes)
    assert "W8A8 within 0.5 of float, depthwise_cnn: MET" in text
    assert "W4A8 AdaRound within 1.5 of float, depthwise_cnn: MISSED" in text
    assert "AutoQuant meets a 1-point budget, depthwise_cnn: MISSED" in text
    assert "CLE +5 (depthwise, per-tensor W8A8): MET" in text
    assert "CLE +5 (depthwise, per-tensor W4A8): not applicable" in text
    assert "residual_cnn < 10 min: not measured" in text
