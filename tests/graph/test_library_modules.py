"""Library modules through the whole prepare side: prepare -> float mode (bit-exact with the
original model) -> calibrate -> summary (what computes in float) -> capture
(``fxquant.export.program.capture`` reproduces the simulation bit for bit).

Families: torchvision's ViT (``nn.MultiheadAttention``), ``nn.TransformerEncoderLayer``, LSTM /
GRU models, ``F.scaled_dot_product_attention`` call sites, a ``forward`` with an optional
``mask=None`` argument, dict-output detection backbones, a tiny Hugging Face BertModel, and a
function torch.fx keeps opaque (``torch.fx.wrap``)."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant import FakeQuantState
from fxquant.export.program import capture
from fxquant.modelio import as_inputs, call_model, flatten_outputs, output_tensors

from .._tv import torchvision_module, transformers_module

CALIB = fxquant.default_calibration_qconfig_setter


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum()))


def _float_mode_is_exact(model: nn.Module, qmodel: nn.Module, batch) -> None:
    """Every quantizer off: the prepared model computes what the original computes."""
    inputs = as_inputs(batch)
    with fxquant.fake_quantize_state(qmodel, FakeQuantState.FLOAT), torch.no_grad():
        got = output_tensors(call_model(qmodel, inputs))
        want = output_tensors(call_model(model, inputs))
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def _capture_is_exact(qmodel: nn.Module, batch):
    """The torch.export capture of the calibrated model computes the simulation bit for bit."""
    captured = capture(qmodel, batch, dynamic_batch=False)  # (half the time of a dynamic one)
    inputs = as_inputs(batch)
    with torch.no_grad():
        sim = output_tensors(call_model(qmodel, inputs))
        got = output_tensors(captured.program.module()(*inputs.args, **inputs.kwargs))
    for a, b in zip(got, sim, strict=True):
        assert torch.equal(a, b)
    return captured


def _roles(summary, op: str) -> set[str]:
    return {r.role for r in summary.quantizers if r.name == op}


# -- torchvision ViT: nn.MultiheadAttention -------------------------------------------------------
def _tiny_vit() -> nn.Module:
    tvm = torchvision_module()
    torch.manual_seed(0)
    model = tvm.VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2,
                                  hidden_dim=16, mlp_dim=32, num_classes=4).eval()
    nn.init.normal_(model.heads.head.weight, 0, 0.2)  # torchvision zero-initialises the head
    return model


def test_vit_attention_is_quantized_inside_and_zero_ops_are_left_in_float():
    model = _tiny_vit()
    x = [torch.randn(4, 3, 16, 16) for _ in range(3)]
    q = fxquant.prepare(model, x[0], CALIB)
    _float_mode_is_exact(model, q, x[0])  # MHA's fused inference path included
    keys = set(model.state_dict())
    assert keys <= set(q.state_dict())  # original parameter names kept (in_proj_weight ...)
    fxquant.calibrate(q, x, progress=False)
    s = fxquant.summary(q)
    mha = "encoder.layers.encoder_layer_0.self_attention"
    assert _roles(s, mha) == {"q_weight", "k_weight", "v_weight", "out_weight", "q", "k", "v",
                              "scores", "probs", "attn"}
    assert s.float_ops == () and "coverage: 0 op(s) left in float" in str(s)
    with torch.no_grad():
        assert _sqnr(model(x[1]), q(x[1])) > 10.0  # a tiny random ViT, 4 logits
    _capture_is_exact(q, x[0])


def test_vit_under_onnxruntime_lists_the_scores_softmax_reads_in_float():
    model = _tiny_vit()
    x = torch.randn(4, 3, 16, 16)
    q = fxquant.prepare(model, x, CALIB, backend="onnxruntime")
    s = fxquant.summary(q)
    mha = "encoder.layers.encoder_layer_0.self_attention"
    assert "scores" not in _roles(s, mha) and "probs" in _roles(s, mha)
    assert [(f.name, f.op_type) for f in s.float_ops] == [(f"{mha}.scores", "matmul, mul")]


def test_transformer_encoder_layer_is_captured_and_quantized_inside():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(self.enc(x).mean(1))

    torch.manual_seed(0)
    model = Net().eval()
    x = [torch.randn(3, 5, 16) for _ in range(2)]
    q = fxquant.prepare(model, x[0], CALIB)
    with _mha_fastpath(False):  # the layer's fused inference path is replaced by its reference
        _float_mode_is_exact(model, q, x[0])  # path, which the prepared model matches bit for bit
    s = fxquant.summary(q)
    assert "probs" in _roles(s, "enc.self_attn") and s.float_ops == ()
    assert [f.name for f in s.capture] == ["enc"]  # its forward runs eagerly
    fxquant.calibrate(q, x, progress=False)
    with torch.no_grad():
        assert _sqnr(model(x[1]), q(x[1])) > 20.0
    _capture_is_exact(q, x[0])


@contextlib.contextmanager
def _mha_fastpath(on: bool):
    old = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(on)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(old)


# -- recurrent layers -----------------------------------------------------------------------------
class RecurrentNet(nn.Module):
    """A 2-layer LSTM over a sequence, its last hidden state into a GRU cell, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 8, num_layers=2, batch_first=True)
        self.cell = nn.GRUCell(8, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y, (h, _) = self.lstm(x)
        return self.fc(self.cell(y[:, -1], h[-1]))


def test_lstm_and_gru_are_quantized_inside():
    torch.manual_seed(0)
    model = RecurrentNet().eval()
    x = [torch.randn(4, 3, 6) for _ in range(3)]
    q = fxquant.prepare(model, x[0], CALIB)
    assert set(model.state_dict()) <= set(q.state_dict())  # weight_ih_l0 ... kept
    _float_mode_is_exact(model, q, x[0])  # torch's fused recurrent kernels
    fxquant.calibrate(q, x, progress=False)
    s = fxquant.summary(q)
    assert {"l0.weight_ih", "l0.gates", "l0.hidden", "l1.ih", "l1.cell"} <= _roles(s, "lstm")
    assert {"weight_hh", "reset_gate", "new_gate", "hidden"} <= _roles(s, "cell")
    assert s.float_ops == ()
    with torch.no_grad():
        assert _sqnr(model(x[1]), q(x[1])) > 20.0
    _capture_is_exact(q, x[0])


def test_recurrent_module_skipped_by_the_user_is_listed_as_float():
    model = RecurrentNet().eval()
    q = fxquant.prepare(model, torch.randn(2, 3, 6), CALIB, skip_modules=["lstm"])
    floats = {f.name: f.reason for f in fxquant.summary(q).float_ops}
    assert "skipped by the user" in floats["lstm"]  # returns a tuple: still an op in float


# -- F.scaled_dot_product_attention call sites ----------------------------------------------------
class SdpaNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


def test_sdpa_call_site_keeps_its_name_and_is_quantized_inside():
    torch.manual_seed(0)
    model = SdpaNet().eval()
    x = [torch.randn(2, 6, 16) for _ in range(2)]
    q = fxquant.prepare(model, x[0], CALIB)
    _float_mode_is_exact(model, q, x[0])
    fxquant.calibrate(q, x, progress=False)
    s = fxquant.summary(q)
    op = "_generated_scaled_dot_product_attention_0"
    assert _roles(s, op) == {"output", "scores", "probs"}
    assert [f.name for f in s.float_ops] == [f"{op}.mask"]  # the causal mask, added in float
    _capture_is_exact(q, x[0])


# -- optional arguments ---------------------------------------------------------------------------
class MaskNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x, mask=None, scale: float = 1.0):
        x = self.fc(x) * scale
        if mask is not None:
            x = x.masked_fill(mask, 0.0)
        return self.fc2(x)


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = MaskNet()

    def forward(self, x, mask=None):
        return self.inner(x, mask=mask) + 1


@pytest.mark.parametrize("cls", [MaskNet, Outer])
def test_forward_with_an_optional_mask_none_argument(cls):
    torch.manual_seed(0)
    model = cls().eval()
    x = [torch.randn(4, 8) for _ in range(2)]
    q = fxquant.prepare(model, x[0], CALIB)  # used to trace `if mask is not None` as taken
    assert fxquant.summary(q).capture_mode == "fx"
    _float_mode_is_exact(model, q, x[0])
    fxquant.calibrate(q, [(t, torch.zeros(4)) for t in x], progress=False)  # labels dropped
    assert fxquant.summary(q).float_ops == ()
    _capture_is_exact(q, x[0])
    with pytest.raises(AssertionError, match="mask has been specialized to have value None"):
        q(x[0], torch.ones(4, 8, dtype=torch.bool))
    masked = fxquant.prepare(model, (x[0], torch.rand(4, 8) > 0.5), CALIB)  # mask traced
    assert any(f.name.endswith("masked_fill_0") for f in fxquant.summary(masked).float_ops)


# -- dict outputs ---------------------------------------------------------------------------------
def test_dict_output_detection_backbone_outputs_have_stable_names():
    tvm = torchvision_module()
    ops = torchvision_module("torchvision.ops")
    utils = torchvision_module("torchvision.models._utils")
    torch.manual_seed(0)
    body = utils.IntermediateLayerGetter(
        tvm.resnet18(num_classes=4), {"layer1": "c2", "layer2": "c3"}).eval()

    class Backbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body
            self.fpn = ops.FeaturePyramidNetwork([64, 128], 16)

        def forward(self, x):
            return self.fpn(self.body(x))

    model = Backbone().eval()
    x = [torch.randn(2, 3, 32, 32) for _ in range(2)]
    q = fxquant.prepare(model, x[0], CALIB)
    fxquant.calibrate(q, x, progress=False)
    assert fxquant.summary(q).float_ops == ()
    with torch.no_grad():
        out = q(x[1])
    assert list(out) == ["c2", "c3"] and _sqnr(model(x[1])["c3"], out["c3"]) > 20.0
    assert [n for n, _ in flatten_outputs(out)] == ["c2", "c3"]
    assert _capture_is_exact(q, x[0]).output_names == ("c2", "c3")


# -- Hugging Face BertModel -----------------------------------------------------------------------
def test_tiny_bert_attention_is_quantized_inside():
    transformers = transformers_module()
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    batches = [(torch.randint(0, 64, (2, 8)), mask) for _ in range(2)]
    q = fxquant.prepare(model, batches[0], CALIB)
    _float_mode_is_exact(model, q, batches[0])
    fxquant.calibrate(q, batches, progress=False)
    s = fxquant.summary(q)
    sdpa = "encoder.layer.0.attention.self._generated_scaled_dot_product_attention_0"
    assert _roles(s, sdpa) == {"output", "scores", "probs"}
    # the padding mask is added to the quantized scores in float: the only float op
    assert [f.name for f in s.float_ops] == [f"{sdpa}.mask"]
    with torch.no_grad():
        ref = model(*batches[1]).last_hidden_state
        assert _sqnr(ref, q(*batches[1]).last_hidden_state) > 20.0
    captured = _capture_is_exact(q, batches[0])
    assert captured.output_names[0] == "last_hidden_state"


# -- functions torch.fx does not trace into -------------------------------------------------------
def _window_attention(x, weight):  # a library function marked torch.fx.wrap, like torchvision's
    q, k, v = F.linear(x, weight).chunk(3, -1)
    return torch.softmax(q @ k.transpose(-2, -1) * 0.5, -1) @ v


torch.fx.wrap("_window_attention")


class WrappedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(24, 8) * 0.3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(_window_attention(x, self.w))


def test_opaque_function_runs_as_an_eager_island_quantized_inside():
    torch.manual_seed(0)
    model = WrappedNet().eval()
    x = [torch.randn(2, 5, 8) for _ in range(2)]
    q = fxquant.prepare(model, x[0], CALIB)
    s = fxquant.summary(q)
    assert [f.name for f in s.capture] == ["_window_attention"]
    names = {(r.name, r.role) for r in s.quantizers}
    assert ("_window_attention._generated_linear_0", "weight") in names
    assert ("_window_attention._generated_softmax_0", "output") in names
    assert s.float_ops == ()
    _float_mode_is_exact(model, q, x[0])
    fxquant.calibrate(q, x, progress=False)
    _capture_is_exact(q, x[0])
