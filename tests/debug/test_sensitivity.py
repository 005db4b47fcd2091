"""sensitivity() and the sensitive_op_* setters on a trained CNN with a hostile conv."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant.debug.sensitivity import SensitivityTable, load_table, sensitivity
from fxquant.qconfig import (
    sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter,
    sensitive_op_qat_8bit_weight_16bit_act_qconfig_setter,
    sensitive_op_qat_8bit_weight_16bit_fixed_act_qconfig_setter,
)

from . import HOSTILE, accuracy, calib_batches, hostile_cnn

pytest.importorskip("sklearn")


def _ptq(model, setter):
    data = calib_batches()
    q = fxquant.prepare(model, data[0], setter)
    fxquant.calibrate(q, data, progress=False)
    return q


@pytest.fixture(scope="module")
def hostile():
    model = hostile_cnn()
    return model, _ptq(model, fxquant.default_calibration_qconfig_setter)


def test_l1_ranks_the_hostile_conv_first(hostile):
    model, q8 = hostile
    table = sensitivity(q8, calib_batches()[:2], "L1", float_model=model, progress=False)
    assert isinstance(table, SensitivityTable)
    print(table)
    first = table[0]
    assert first[:3] == [HOSTILE, "activation", "Conv2d"]
    assert first[4] == "qint8" and first[5].endswith("%)")
    values = [r[3] for r in table]
    assert values == sorted(values, reverse=True)  # L1: larger = more sensitive
    assert values[0] > 10 * values[1]
    assert {r[1] for r in table} == {"activation", "weight"}


def test_user_accuracy_callable_ranks_the_hostile_conv_first(hostile):
    model, q8 = hostile
    table = sensitivity(q8, calib_batches()[:1], lambda m: accuracy(m, 200), progress=False)
    print(table)
    assert table[0][:2] == [HOSTILE, "activation"]
    assert table.higher_is_better and table.metric == "callable"
    assert table[0][3] < table[1][3] - 20  # accuracy with only that op quantized is far lower
    assert table.baseline_float == pytest.approx(accuracy(model, 200))


def test_one_off_and_other_metrics_agree_on_the_first_op(hostile):
    model, q8 = hostile
    data = calib_batches()[:1]
    for metric in ("mse", "cosine", "sqnr"):
        t = sensitivity(q8, data, metric, float_model=model, progress=False)
        assert t[0][:2] == [HOSTILE, "activation"], metric
    off = sensitivity(q8, data, "L1", mode="one_off", progress=False)
    assert off[0][:2] == [HOSTILE, "activation"]
    values = [r[3] for r in off]
    assert values == sorted(values)  # one_off: the best model (lowest L1) first


def test_qmodel_is_left_as_it_was(hostile):
    _, q8 = hostile
    x = calib_batches()[0]
    with torch.no_grad():
        before = q8(x)
    states = [m.state for m in q8.modules() if isinstance(m, fxquant.FakeQuantize)]
    sensitivity(q8, x, "L1", progress=False)
    with torch.no_grad():
        assert torch.equal(q8(x), before)
    assert states == [m.state for m in q8.modules() if isinstance(m, fxquant.FakeQuantize)]


def test_int16_on_top_ratio_recovers_the_accuracy(hostile):
    model, q8 = hostile
    table = sensitivity(q8, calib_batches()[:2], "L1", float_model=model, progress=False)
    acc_float, acc_int8 = accuracy(model), accuracy(q8)
    setter = sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter(table, ratio=0.1)
    q16 = _ptq(model, (setter, fxquant.default_calibration_qconfig_setter))
    acc_mixed = accuracy(q16)
    print(f"float {acc_float:.2f}  int8 {acc_int8:.2f}  int16 top-10% {acc_mixed:.2f}")
    assert acc_float - acc_int8 > 20  # the hostile layer really hurts int8
    assert acc_mixed - acc_int8 >= 0.8 * (acc_float - acc_int8)
    dtypes = {(r.name, r.role): r.dtype for r in fxquant.summary(q16).quantizers}
    assert sorted(k for k, v in dtypes.items() if v == "qint16") == [("_generated_relu_1",
                                                                        "output")]


def test_save_txt_csv_and_reload(hostile, tmp_path):
    model, q8 = hostile
    table = sensitivity(q8, calib_batches()[:1], "L1", float_model=model, progress=False)
    paths = table.save(tmp_path / "sens.pt")
    assert [p.rsplit(".", 1)[1] for p in paths] == ["pt", "txt", "csv"]
    rows = load_table(paths[0])
    assert rows == table.as_lists()
    assert torch.load(paths[0], weights_only=True) == rows
    with open(paths[2]) as fh:
        body = list(csv.reader(fh))
    assert body[0][:2] == ["op_name", "sensitive_type"] and body[1][0] == HOSTILE
    assert HOSTILE in (tmp_path / "sens.txt").read_text()
    # the setters take the saved file too, and compose with ModuleNameQconfigSetter
    setter = sensitive_op_qat_8bit_weight_16bit_act_qconfig_setter(paths[0], topk=1)
    assert setter.ops == {HOSTILE}
    over = fxquant.ModuleNameQconfigSetter({HOSTILE: fxquant.get_qconfig()})
    q = fxquant.prepare(model, calib_batches()[0],
                        (over, setter, fxquant.default_qat_qconfig_setter))
    dt = {(r.name, r.role): r.dtype for r in fxquant.summary(q).quantizers}
    assert "qint16" not in dt.values()  # the earlier setter wins


def test_setter_arguments():
    rows = [["a", "activation", "Conv2d", 1.0, "qint8", "1(50%)"],
            ["b", "weight", "Conv2d", 0.5, "qint8", "1(50%)"]]
    with pytest.raises(ValueError, match="exactly one"):
        sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter(rows)
    with pytest.raises(ValueError, match="exactly one"):
        sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter(rows, topk=1, ratio=0.5)
    with pytest.raises(ValueError):
        sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter(rows, ratio=1.5)
    s = sensitive_op_qat_8bit_weight_16bit_fixed_act_qconfig_setter(rows, ratio=0.5)
    assert s.ops == {"a"}
    assert sensitive_op_qat_8bit_weight_16bit_fixed_act_qconfig_setter(rows, topk=5).ops == {
        "a", "b"}


def test_fixed_act_setter_freezes_scales_in_qat(hostile):
    model, _ = hostile
    table = [[HOSTILE, "activation", "Conv2d", 1.0, "qint8", "-"]]
    setter = sensitive_op_qat_8bit_weight_16bit_fixed_act_qconfig_setter(table, topk=1)
    q = fxquant.prepare(model, calib_batches()[0], (setter, fxquant.default_qat_qconfig_setter))
    row = next(r for r in fxquant.summary(q).quantizers if r.name == "_generated_relu_1")
    fq = q.get_submodule(row.path)
    assert str(fq.dtype) == "qint16" and fq.fixed_in_qat


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.conv(x)).mean((2, 3))
        return self.a(h), self.b(h)


def test_one_table_per_output():
    torch.manual_seed(0)
    m = TwoHeads().eval()
    data = [torch.randn(8, 1, 6, 6) for _ in range(2)]
    q = _ptq_data(m, data)
    tables = sensitivity(q, data, "sqnr", float_model=m, progress=False)
    assert isinstance(tables, list) and [t.output_index for t in tables] == [0, 1]
    # head b's weight cannot affect output 0: it is perfect there (inf SQNR, least sensitive)
    row_b = next(r for r in tables[0].rows if (r.op_name, r.kind) == ("b", "weight"))
    assert math.isinf(row_b.metric_value)


def _ptq_data(m, data):
    q = fxquant.prepare(m, data[0], fxquant.default_calibration_qconfig_setter)
    fxquant.calibrate(q, data, progress=False)
    return q


def test_bad_arguments(hostile):
    _, q8 = hostile
    with pytest.raises(ValueError, match="metric"):
        sensitivity(q8, calib_batches()[0], "L7", progress=False)
    with pytest.raises(ValueError, match="mode"):
        sensitivity(q8, calib_batches()[0], mode="some", progress=False)
