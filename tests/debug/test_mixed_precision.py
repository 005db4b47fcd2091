"""search_mixed_precision on the trained digits CNN."""

from __future__ import annotations

import pytest

import fxquant
from fxquant.debug.mixed_precision import SearchReport, search_mixed_precision
from fxquant.debug.report import report

from . import accuracy, calib_batches, trained_cnn

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def searched():
    model = trained_cnn()
    data = calib_batches()
    setter, rep = search_mixed_precision(model, data[0], data, accuracy, allowed_drop=0.5,
                                         progress=False)
    return model, data, setter, rep


def test_choice_meets_budget_below_int16_size_above_int4_accuracy(searched):
    model, data, setter, rep = searched
    assert isinstance(rep, SearchReport)
    print(rep)
    c = rep.chosen
    assert rep.met and c.accuracy >= rep.float_accuracy - 0.5
    assert c.cost < rep.uniform(16).cost
    assert c.accuracy > rep.uniform(4).accuracy
    # the setter reproduces the chosen configuration exactly
    q = fxquant.prepare(model, data[0], setter)
    fxquant.calibrate(q, data, progress=False)
    assert accuracy(q) == pytest.approx(c.accuracy)
    from fxquant.demo import quantized_size_bytes

    assert quantized_size_bytes(q) == pytest.approx(c.cost)
    assert {r.dtype for r in fxquant.summary(q).quantizers} >= {"qint4"}


def test_pareto_front_and_determinism(searched):
    model, data, _, rep = searched
    front = rep.pareto
    assert front and all(p.on_front for p in front)
    costs = [p.cost for p in front]
    accs = [p.accuracy for p in front]
    assert costs == sorted(costs) and accs == sorted(accs)  # cheaper -> less accurate
    for p in rep.points:  # nothing dominates a front point
        for f in front:
            assert not (p.cost < f.cost and p.accuracy > f.accuracy)
    _, again = search_mixed_precision(model, data[0], data, accuracy, allowed_drop=0.5,
                                      progress=False)
    assert again.chosen == rep.chosen and again.points == rep.points


def test_bitops_objective_and_report(searched, tmp_path):
    model, data, _, _ = searched
    _, rep = search_mixed_precision(model, data[0], data[:2], lambda m: accuracy(m, 250),
                                    allowed_drop=1.0, objective="bitops", progress=False)
    assert rep.objective == "bitops"
    assert rep.chosen.cost <= rep.uniform(16).cost
    assert rep.uniform(4).cost < rep.uniform(8).cost < rep.uniform(16).cost
    out = report(tmp_path / "s.html", search=rep)
    assert (tmp_path / "s_pareto.png").is_file() and "Pareto" in open(out).read()


def test_bad_objective():
    model = trained_cnn()
    with pytest.raises(ValueError, match="objective"):
        search_mixed_precision(model, calib_batches()[0], calib_batches(), accuracy, 0.5,
                               objective="latency", progress=False)
