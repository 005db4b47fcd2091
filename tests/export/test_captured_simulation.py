"""The runtime simulation built on the captured program, against ONNX Runtime itself.

Models whose fx graph hides quantized ops -- a library module the graph calls whole
(``nn.TransformerEncoder``), an eager capture of an untraceable root ``forward`` -- are verified
against the program the file was written from, so ORT's integer kernels inside them are
reproduced code for code (before, they ran as float ops: up to 20% of the codes one step off).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import fxquant
from fxquant.export.captured_simulation import captured_graph, captured_runtime_simulation
from fxquant.export.verify import KernelMismatchWarning
from fxquant.fake_quant import FakeQuantize
from fxquant.graph.report import get_report
from fxquant.graph.simulate import hidden_quantizers

pytest.importorskip("onnxruntime")


class _Encoder(nn.Module):
    """A token classifier around ``nn.TransformerEncoder`` (a library module fx calls whole)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(self.embed(x)).mean(1))


class _EagerAttention(nn.Module):
    """A root forward fx cannot trace (a condition on a tensor's rank): captured eagerly; its
    attention scores, plus a mask filled in place, go through a float softmax between two
    quantized matmuls."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.norm = nn.LayerNorm(16)
        self.proj = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0)
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, n, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
        mask = x.new_zeros(n, n)
        mask[:, : n // 2] = -2.0  # filled in place (Swin builds its shift mask so): kept
        o = torch.softmax(q @ k.transpose(-2, -1) * 0.35 + mask, -1) @ v
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


def _calibrated(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    torch.manual_seed(0)
    model = model.eval()
    batches = [torch.randn(*shape) for _ in range(3)]
    qmodel = fxquant.prepare(model, batches[0], backend="onnxruntime")
    fxquant.calibrate(qmodel, batches, progress=False)
    return qmodel


@pytest.mark.parametrize("model, shape", [(_Encoder, (8, 10, 12)),
                                          (_EagerAttention, (8, 6, 16))])
def test_hidden_ops_are_verified_code_for_code(model, shape, tmp_path):
    qmodel = _calibrated(model(), shape)
    assert hidden_quantizers(qmodel)  # the fx graph does not show them
    path = tmp_path / "m.onnx"
    fxquant.export_onnx(qmodel, torch.randn(*shape), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelMismatchWarning)
        report = fxquant.verify(qmodel, path, torch.randn(64, *shape[1:]), "onnxruntime",
                                tensors=True)
    assert report.reference == "runtime"
    assert all(d.identical == 1.0 for d in (*report.outputs, *report.tensors)), str(report)
    assert report.emulated.get("QLinearMatMul", 0) + report.emulated.get(
        "MatMulIntegerToFloat", 0) >= 3
    assert report.emulated.get("LayerNormalization", 0) >= 1
    assert report.kernel_mismatch == {}


def test_the_captured_graph_calls_the_models_own_quantizers():
    qmodel = _calibrated(_EagerAttention(), (4, 6, 16))
    assert get_report(qmodel).capture_mode == "eager"
    x = torch.randn(3, 6, 16)
    gm = captured_graph(qmodel, x)
    called = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    quantizers = {p for p, m in qmodel.named_modules() if isinstance(m, FakeQuantize)}
    assert called <= quantizers and called  # every module call is one of the model's quantizers
    assert all(gm.get_submodule(p) is qmodel.get_submodule(p) for p in called)
    with torch.no_grad(), fxquant.float_simulation():
        # the graph with the float simulation's quantizers is the model itself, bit for bit
        assert torch.equal(gm(x), qmodel(x))
    module, plan = captured_runtime_simulation(qmodel, x, "onnxruntime")
    assert module is not None and "LayerNormalization" in plan.kernels.values()


def test_fx_models_keep_their_own_graph():
    """A model fx traced completely hides nothing: verify uses its eval-mode runtime graph."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.LayerNorm(8))
    qmodel = _calibrated(model, (4, 8))
    assert hidden_quantizers(qmodel) == []
    assert fxquant.runtime_plan(qmodel).kernels.get("2") == "LayerNormalization"


class _Rolled(nn.Module):
    """``torch.roll`` (exported as Slice + Concat) and a zero ``F.pad`` between two linears, as
    in a shifted-window block."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.roll(self.a(x), 2, 1)
        return self.b(torch.nn.functional.pad(y, (0, 0, 0, 2)))


def test_roll_and_zero_pad_are_requantized_and_fused(tmp_path):
    """The exporter requantizes the Concat of a roll's pieces (one grid) and a zero Pad, so ORT
    fuses the linear after them, as the simulation computes it (before: a float MatMulNBits,
    12% of the output codes one step off)."""
    qmodel = _calibrated(_Rolled(), (4, 6, 8))
    path = tmp_path / "r.onnx"
    fxquant.export_onnx(qmodel, torch.randn(4, 6, 8), path)
    report = fxquant.verify(qmodel, path, torch.randn(32, 6, 8), "onnxruntime")
    assert report.outputs[0].identical == 1.0, str(report)
    assert "MatMulNBits" not in report.float_ops and report.integer_ops[
        "MatMulIntegerToFloat"] == 2
