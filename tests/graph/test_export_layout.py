"""The exported graph's layout as the runtime simulation predicts it, against the file
``export_onnx`` writes and the kernels ONNX Runtime fuses in it."""

from __future__ import annotations

import doctest
import importlib
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant.graph.export_layout import changed_before, shared_ops


def test_docstring_examples_run():
    module = importlib.import_module("fxquant.graph.export_layout")
    assert doctest.testmod(module, raise_on_error=True).attempted > 0


class LayoutZoo(nn.Module):
    """Quantized constants behind data movement, a Sigmoid shared with a SiLU, an in-place op on
    a quantized tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.lin2 = nn.Linear(8, 8)
        self.pos = nn.Parameter(torch.randn(1, 12, 8) * 0.5)
        self.w = nn.Parameter(torch.randn(8, 12) * 0.5)

    def forward(self, x):
        y = self.lin(x)
        a = y + self.pos[:, : x.shape[1]]  # a full slice: dropped by the export
        b = y + self.w.t()  # a transpose: folded into the integer initializer
        c = y + self.pos.reshape(12, 8)  # a real reshape: stays, requantized: QLinearAdd
        d = y[:, :6] + self.pos[:, :6]  # a real slice: stays, requantized
        s = torch.sigmoid(a) * F.silu(a)  # one Sigmoid node for both
        h = self.lin2(b)
        h.mul_(2)
        e = self.lin2(h)  # reads the changed, unquantized value
        return torch.cat([s, c, e, d.repeat(1, 2, 1)], dim=-1)


def _data(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 12, 8, generator=torch.Generator().manual_seed(seed))


def _prepared() -> torch.fx.GraphModule:
    torch.manual_seed(0)
    qmodel = fxquant.prepare(LayoutZoo().eval(), _data(2, 0),
                             fxquant.default_calibration_qconfig_setter, backend="onnxruntime")
    fxquant.calibrate(qmodel, [_data(8, 1)], progress=False)
    return qmodel



def _node(qmodel, name: str):
    return next(n for n in qmodel.graph.nodes if n.name == name)


def test_layout_predictions_on_the_prepared_graph():
    qmodel = _prepared()
    assert {n.name for n in shared_ops(qmodel)} == {"sigmoid"}
    readers = [n for n in qmodel.graph.nodes if n.op == "call_module" and n.target == "lin2"]
    first_out = next(iter(readers[0].users))  # lin2's output quantizer, changed by mul_
    assert changed_before(first_out, readers[1]) and not changed_before(first_out, readers[0])
    plan = fxquant.runtime_plan(qmodel)
    assert plan.kernels["_generated_add_0"] == plan.kernels["_generated_add_1"] == "QLinearAdd"
    assert plan.kernels["_generated_sigmoid_0"] == "Sigmoid"  # float, then QuantizeLinear
    # a constant's movement is requantized by the exporter: the adds reading it fuse too
    assert plan.kernels["_generated_add_2"] == plan.kernels["_generated_add_3"] == "QLinearAdd"
    assert "lin2_1" in plan.skipped


def test_the_plan_is_what_onnxruntime_fuses(tmp_path):
    pytest.importorskip("onnxruntime")
    from fxquant.export import export_onnx, verify
    from fxquant.export.verify import KernelMismatchWarning

    qmodel = _prepared()
    path = export_onnx(qmodel, _data(2, 0), tmp_path / "layout.onnx").path
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelMismatchWarning)
        report = verify(qmodel, path, _data(32, 5), "onnxruntime")
    assert report.kernel_mismatch == {}
    assert report.integer_ops["QLinearAdd"] == 4 and "QLinearSigmoid" not in report.integer_ops
    assert all(t.identical == 1.0 for t in (*report.outputs, *report.tensors)), str(report)
