"""The demo: result structure, accuracy bounds, determinism, size accounting.

``run_demo`` is run once with reduced epochs (5 float + 1 QAT, about 2 s on one thread).  On
seeds 0..29 that run gave float 97.1-99.6 %, PTQ within 0.22 points and QAT within 0.44 points
of float, so the acceptance thresholds (PTQ within 1.0 point, QAT within 0.5 point) are
asserted on it as well, next to looser sanity bounds that tell a broken quantizer (accuracy
collapses) apart from an unlucky fine-tuning step.  The full default run is the slow test.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxquant
from fxquant.demo import DemoResult, StageResult, quantized_size_bytes, run_demo

REDUCED = {"epochs": 5, "qat_epochs": 1, "seed": 0}
PTQ_TOLERANCE = 1.0  # acceptance: PTQ within 1 point of float
QAT_TOLERANCE = 0.5  # acceptance: QAT within 0.5 point of float (or better)


@pytest.fixture(scope="module")
def reduced() -> DemoResult:
    return run_demo(**REDUCED, progress=False)


def test_result_structure(reduced):
    assert [s.stage for s in reduced.stages] == ["float", "PTQ W8A8", "QAT W8A8"]
    assert all(isinstance(s, StageResult) for s in reduced.stages)
    assert (reduced.num_train, reduced.num_test) == (1347, 450)
    assert (reduced.epochs, reduced.qat_epochs, reduced.seed) == (5, 1, 0)
    for s in reduced.stages:
        assert 0.0 <= s.accuracy <= 100.0 and s.size_kib > 0 and s.seconds >= 0
    with pytest.raises(AttributeError):
        reduced.float_accuracy = 0.0  # frozen


def test_table_lists_every_stage(reduced):
    lines = str(reduced).splitlines()
    assert lines[0].split(" | ") == [
        "stage   ", "accuracy (%)", "size (KiB)", "time (s)"
    ]
    assert set(lines[1]) <= {"-", "+"}
    for line, stage in zip(lines[2:5], reduced.stages, strict=True):
        cells = [c.strip() for c in line.split("|")]
        assert cells == [stage.stage, f"{stage.accuracy:.2f}", f"{stage.size_kib:.1f}",
                         f"{stage.seconds:.1f}"]
    assert f"{reduced.size_ratio:.2f}x" in lines[5]
    assert reduced.table() == str(reduced)


def test_accuracy_bounds(reduced):
    f, p, q = reduced.float_accuracy, reduced.ptq_accuracy, reduced.qat_accuracy
    assert f >= 95.0
    # sanity: quantization must not break the model
    assert p >= f - 3.0 and q >= f - 3.0
    # the acceptance thresholds
    assert p >= f - PTQ_TOLERANCE, reduced.table()
    assert q >= f - QAT_TOLERANCE, reduced.table()


def test_size_is_about_a_quarter(reduced):
    # int8 weights + per-channel scales + 32-bit BN / bias parameters: 3.5x .. 4x smaller
    assert 3.5 < reduced.size_ratio < 4.0


def test_deterministic_and_leaves_global_state_alone():
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    a = run_demo(epochs=1, qat_epochs=1, seed=3, progress=False)
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    b = run_demo(epochs=1, qat_epochs=1, seed=3, progress=False)
    accs = ("float_accuracy", "ptq_accuracy", "qat_accuracy", "float_size_kib",
            "quantized_size_kib")
    assert [getattr(a, k) for k in accs] == [getattr(b, k) for k in accs]


def test_quantized_size_counts_weight_bits_and_qparams():
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.randn(2, 4)
    q = fxquant.prepare(model, x)
    fxquant.calibrate(q, [x], progress=False)
    # 12 int8 weights + 3 channels x (32-bit scale + 32-bit zero point) + 3 int32 biases
    assert quantized_size_bytes(q) == (12 * 8 + 3 * 64 + 3 * 32) / 8


@pytest.mark.slow
def test_default_run_meets_acceptance():
    r = run_demo(progress=False)
    assert r.float_accuracy >= 97.0, r.table()
    assert r.ptq_accuracy >= r.float_accuracy - PTQ_TOLERANCE, r.table()
    assert r.qat_accuracy >= r.float_accuracy - QAT_TOLERANCE, r.table()
