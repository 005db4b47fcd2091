"""compare(): per-quantizer SQNR / cosine / L1 / saturation, simulation and ONNX Runtime."""

from __future__ import annotations

import math

import pytest
import torch

import fxquant
from fxquant.debug.compare import CompareTable, compare, sqnr_db

from . import calib_batches, hostile_cnn, trained_cnn

pytest.importorskip("sklearn")


def _ptq(model, backend="generic"):
    data = calib_batches()
    q = fxquant.prepare(model, data[0], fxquant.default_calibration_qconfig_setter,
                        backend=backend)
    fxquant.calibrate(q, data, progress=False)
    return q


@pytest.fixture(scope="module")
def cnn():
    m = trained_cnn()
    return m, _ptq(m)


def test_rows_follow_summary_names(cnn):
    model, q = cnn
    t = compare(model, q, calib_batches()[:2])
    assert isinstance(t, CompareTable)
    names = [(r.name, r.role) for r in fxquant.summary(q).quantizers]
    assert [(r.name, r.role) for r in t.select("sim", "cumulative")] == names
    assert [(r.name, r.role) for r in t.select("sim", "isolated")] == names
    text = str(t)
    assert "SQNR cum" in text and "_generated_relu_1" in text
    for r in t.rows:
        assert -1 <= r.cosine <= 1 + 1e-9 and 0 <= r.saturation <= 1
        assert r.chosen_min <= 0 <= r.chosen_max
        assert r.numel > 0


def test_last_layer_cumulative_sqnr_equals_output_sqnr(cnn):
    model, q = cnn
    x = calib_batches()[1]
    t = compare(model, q, x)
    with torch.no_grad():
        direct = sqnr_db(q(x), model(x))
        manual = 10 * math.log10(float(model(x).double().square().sum())
                                 / float((q(x).double() - model(x).double()).square().sum()))
    assert t.get("fc", "output").sqnr == pytest.approx(direct, abs=1e-6)
    assert direct == pytest.approx(manual, abs=1e-9)
    assert t.outputs[0].sqnr == pytest.approx(direct, abs=1e-9)
    print(f"fc cumulative SQNR {t.get('fc').sqnr:.3f} dB == output SQNR {direct:.3f} dB")


def test_isolated_is_the_quantizer_alone(cnn):
    model, q = cnn
    x = calib_batches()[0]
    t = compare(model, q, x)
    # the input quantizer sees the float input either way: both modes agree
    assert t.get("x", mode="isolated").sqnr == pytest.approx(t.get("x").sqnr)
    # only the relu_1 quantizer on, measured at that tensor, by hand
    fq = q.get_submodule(t.get("_generated_relu_1").path)
    seen = {}
    h = fq.register_forward_hook(lambda m, i, o: seen.update(i=i[0].clone(), o=o.clone()))
    with fxquant.fake_quantize_state(q, fxquant.FakeQuantState.FLOAT):
        fq.set_state(fxquant.FakeQuantState.VALIDATION)
        with torch.no_grad():
            q(x)
    h.remove()
    assert t.get("_generated_relu_1", mode="isolated").sqnr == pytest.approx(
        sqnr_db(seen["o"], seen["i"]), abs=1e-9)


def test_saturation_and_ranges_find_the_hostile_layer():
    model = hostile_cnn()
    q = _ptq(model)
    t = compare(model, q, calib_batches()[:2])
    print(t)
    hostile = t.get("_generated_relu_1", mode="isolated")
    worst = t.worst(1)[0]
    assert (worst.name, worst.role) == ("_generated_relu_1", "output")
    assert hostile.observed_max > 100 and hostile.chosen_max > 100
    assert t.get("fc").sqnr < 10  # the whole model is broken downstream
    csv_text = t.to_csv()
    assert csv_text.splitlines()[0].startswith("name,role,op_type,dtype,stage,mode,sqnr")
    assert len(csv_text.splitlines()) == len(t.rows) + 1
    assert len(t.samples[("_generated_relu_1", "output")]) > 0


def test_onnxruntime_stage_matches_verify(tmp_path):
    pytest.importorskip("onnxruntime")
    model = trained_cnn()
    q = _ptq(model, backend="onnxruntime")
    x = calib_batches()[2]
    path = tmp_path / "m.onnx"
    fxquant.export_onnx(q, x, str(path))
    t = compare(model, q, x, stages=("sim", "onnxruntime"), onnx_path=path)
    # compare's "sim" stage is the model as it evaluates: for this profile, the runtime simulation
    rep = fxquant.verify(q, str(path), x, runtime="onnxruntime", reference="runtime")
    by_quantizer = {d.quantizer: d for d in rep.tensors}
    ort_rows = t.select("onnxruntime", "cumulative")
    assert ort_rows and "ort steps" in str(t)
    for r in ort_rows:
        d = by_quantizer[r.path]
        assert r.max_step_diff == d.max_step_diff, r.name
        assert r.identical == pytest.approx(d.identical), r.name
        sim = t.get(r.name, r.role)
        assert abs(r.sqnr - sim.sqnr) < 0.5  # a few one-step flips at most
    # the default path exports by itself and gives the same rows
    t2 = compare(model, q, x, stages=("sim", "onnxruntime"))
    assert [(r.name, r.max_step_diff) for r in t2.select("onnxruntime")] == [
        (r.name, r.max_step_diff) for r in ort_rows]


def test_unknown_stage(cnn):
    model, q = cnn
    with pytest.raises(ValueError, match="stage"):
        compare(model, q, calib_batches()[0], stages=("tflite",))


def test_model_is_left_as_it_was(cnn):
    _, q = cnn
    x = calib_batches()[0]
    with torch.no_grad():
        before = q(x)
    compare(None, q, x)
    with torch.no_grad():
        assert torch.equal(q(x), before)
