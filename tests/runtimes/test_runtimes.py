"""The runtimes layer: sessions in the real ONNX Runtime and OpenVINO, what ran, versions, and
step counting; verify and compare share it."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fxquant
from fxquant.backends import Runtime
from fxquant.debug.compare import compare
from fxquant.export import export_onnx, verify
from fxquant.runtimes import (
    SESSIONS,
    ExecutedOps,
    StepCounter,
    open_session,
    require_runtime,
    runtime_version,
    tensor_diff,
)

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


class _Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


def _exported(tmp_path, backend: str):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    q = fxquant.prepare(_Conv().eval(), x, fxquant.default_calibration_qconfig_setter,
                        backend=backend)
    fxquant.calibrate(q, [torch.randn(8, 3, 8, 8) for _ in range(2)], progress=False)
    path = tmp_path / f"{backend}.onnx"
    export_onnx(q, x, str(path))
    return q, str(path)


@pytest.fixture(scope="module")
def ort_model(tmp_path_factory):
    return _exported(tmp_path_factory.mktemp("rt"), "onnxruntime")


def test_every_runtime_has_a_session_and_a_version():
    assert set(SESSIONS) == set(Runtime)
    assert runtime_version("onnxruntime") == \
        f"onnxruntime {importlib.metadata.version('onnxruntime')}"
    assert runtime_version(Runtime.OPENVINO).startswith(
        f"openvino {importlib.metadata.version('openvino')}")
    with pytest.raises(fxquant.ConfigError, match=r"runtime must be one of .*'tflite'"):
        open_session("tflite", "model.onnx")


@pytest.mark.parametrize("runtime, kernel", [("onnxruntime", "QLinearConv"),
                                             ("openvino", "Convolution")])
def test_sessions_run_and_say_what_ran(ort_model, runtime, kernel):
    q, path = ort_model
    x = torch.randn(4, 3, 8, 8)
    feeds = [x.numpy()]
    with open_session(runtime, path) as s:
        out = s.run(feeds)
        assert list(out) == s.output_names and s.input_names == ["x"]
        ops = s.executed_ops()
    assert isinstance(ops, ExecutedOps) and ops.integer.get(kernel) == 1, ops
    with open_session(runtime, path, extra_outputs=["x_dequantized"]) as s:
        inst = s.run(feeds)
    assert set(inst) == {*out, "x_dequantized"}
    name = next(iter(out))
    np.testing.assert_array_equal(inst[name], out[name])
    # the runtime's quantized input is the simulation's, code for code
    fq = q.get_submodule("x.output_fake_quant")
    d = tensor_diff("x_dequantized", inst["x_dequantized"], fq(x), fq.qparams(),
                    "x.output_fake_quant")
    assert d.identical == 1.0 and d.max_step_diff == 0


def test_step_counter_accumulates_batches():
    fq = fxquant.FakeQuantize()
    fq(torch.linspace(-1, 1, 64))
    qp = fq.qparams()
    sims = [torch.randn(3, 5) for _ in range(3)]
    rts = [(s + qp.scale * torch.randint(-2, 3, s.shape)).numpy() for s in sims]
    counter = StepCounter("t", qp, "q")
    for rt, sim in zip(rts, sims, strict=True):
        counter.add(rt, sim)
    whole = tensor_diff("t", np.concatenate(rts), torch.cat(sims), qp, "q")
    got = counter.result()
    assert got.shape == (3, 5)  # a batch's shape; every statistic is over all batches
    assert dataclasses.replace(got, shape=whole.shape) == whole
    assert set(whole.histogram) <= {-2, -1, 0, 1, 2} and whole.max_step_diff <= 2


def test_verify_defaults_to_the_profiles_runtime_and_names_its_version(tmp_path, ort_model):
    q_ov, path_ov = _exported(tmp_path, "openvino")
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = verify(q_ov, path_ov, x, tensors=False)
    assert rep.runtime == "openvino" and rep.runtime is Runtime.OPENVINO
    assert rep.runtime_version == runtime_version("openvino")
    assert f"ran in:      {rep.runtime_version}" in str(rep)
    q_ort, path_ort = ort_model
    with pytest.warns(UserWarning, match=r"prepared for backend 'onnxruntime'.*verified in "
                                         r"openvino"):
        verify(q_ort, path_ort, x, "openvino", tensors=False)
    q_gen, path_gen = _exported(tmp_path, "generic")  # a profile without a runtime: ORT
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert verify(q_gen, path_gen, x, tensors=False).runtime == "onnxruntime"


def test_compare_reads_tensors_from_openvino_too(ort_model):
    q, path = ort_model
    x = torch.randn(4, 3, 8, 8)
    t = compare(None, q, [x, x * 0.5], stages=("sim", "onnxruntime", "openvino"),
                onnx_path=path)
    for stage in ("onnxruntime", "openvino"):
        rows = t.select(stage, "cumulative")
        assert rows and all(r.max_step_diff <= 1 for r in rows), rows
        assert rows[0].numel == 2 * x.numel()
    assert "ort steps" in str(t) and "ov steps" in str(t)


def test_every_runtime_names_its_packages():
    """Each Runtime has a session class and a package list (here all are installed)."""
    for rt in Runtime:
        assert rt in SESSIONS
        assert require_runtime(rt.value, "test") is rt
