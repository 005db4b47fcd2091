"""fxquant.nn.attention: the float forward *is* torch's (bit for bit, fast paths included), the
written-out forward computes the same function, and the quantized forward rounds exactly the
values it documents, in order (bit-exact against a reference written here)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant import FakeQuantState, set_fake_quantize
from fxquant.graph.library_modules import quantize_library_module
from fxquant.nn import QuantMultiheadAttention, ScaledDotProductAttention

QCONFIG = fxquant.get_qconfig(observer=fxquant.MinMaxObserver)


def _quantized(module: nn.Module, backend: str = "generic") -> tuple[nn.Module, dict[str, str]]:
    return quantize_library_module(module, QCONFIG, fxquant.get_profile(backend), "op", "")


def _calibrate(module: nn.Module, *calls: tuple) -> None:
    set_fake_quantize(module, FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for args, kwargs in calls:
            module(*args, **kwargs)
    set_fake_quantize(module, FakeQuantState.VALIDATION)


def _qkv(gen: torch.Generator, b=2, h=2, lq=5, lk=6, e=8) -> tuple[torch.Tensor, ...]:
    return (torch.randn(b, h, lq, e, generator=gen), torch.randn(b, h, lk, e, generator=gen),
            torch.randn(b, h, lk, e, generator=gen))


def _sdpa_cases(gen: torch.Generator) -> list[dict]:
    keep = torch.rand(5, 6, generator=gen) > 0.3
    keep[:, 0] = True
    return [{}, {"attn_mask": keep}, {"attn_mask": torch.randn(5, 6, generator=gen)},
            {"is_causal": True}, {"scale": 0.3}]


# -- ScaledDotProductAttention --------------------------------------------------------------------
def test_sdpa_float_forward_is_torchs_op_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    sdpa, roles = _quantized(ScaledDotProductAttention())
    assert set(roles) == {"scores", "probs"}
    set_fake_quantize(sdpa, FakeQuantState.FLOAT)
    q, k, v = _qkv(gen)
    for kw in _sdpa_cases(gen):
        assert torch.equal(sdpa(q, k, v, **kw), F.scaled_dot_product_attention(q, k, v, **kw)), kw
    kv = _qkv(gen, h=1)  # grouped-query attention
    assert torch.equal(sdpa(q, *kv[1:], enable_gqa=True),
                       F.scaled_dot_product_attention(q, *kv[1:], enable_gqa=True))


def test_sdpa_written_out_forward_computes_the_same_function():
    gen = torch.Generator().manual_seed(1)
    sdpa, _ = _quantized(ScaledDotProductAttention())
    set_fake_quantize(sdpa, FakeQuantState.CALIBRATION)  # observes, returns float: written out
    q, k, v = _qkv(gen)
    for kw in _sdpa_cases(gen):
        ref = F.scaled_dot_product_attention(q, k, v, **kw)
        torch.testing.assert_close(sdpa(q, k, v, **kw), ref, rtol=1e-5, atol=1e-6)
    kv = _qkv(gen, h=1)
    torch.testing.assert_close(sdpa(q, *kv[1:], enable_gqa=True),
                               F.scaled_dot_product_attention(q, *kv[1:], enable_gqa=True),
                               rtol=1e-5, atol=1e-6)


def test_sdpa_quantized_forward_rounds_scores_then_probabilities():
    gen = torch.Generator().manual_seed(2)
    sdpa, _ = _quantized(ScaledDotProductAttention())
    q, k, v = _qkv(gen)
    bias = torch.randn(5, 6, generator=gen)
    _calibrate(sdpa, ((q, k, v), {"attn_mask": bias}))
    scores = sdpa.scores_fake_quant.qparams().fake_quantize(q @ k.transpose(-2, -1)
                                                            * (1 / math.sqrt(8)))
    probs = sdpa.probs_fake_quant.qparams().fake_quantize(torch.softmax(scores + bias, -1))
    assert torch.equal(sdpa(q, k, v, attn_mask=bias), probs @ v)


def test_sdpa_profiles_decide_which_values_are_rounded():
    ort, roles = _quantized(ScaledDotProductAttention(), "onnxruntime")
    assert set(roles) == {"probs"} and ort.scores_fake_quant is None  # softmax input float
    _, roles = _quantized(ScaledDotProductAttention(), "tensorrt")
    assert set(roles) == {"q", "k", "v", "probs"}  # weighted-op inputs, inside the op


# -- QuantMultiheadAttention ----------------------------------------------------------------------
MHA_CASES = [
    ({"batch_first": True}, "self", {}),
    ({"batch_first": True}, "self", {"need_weights": False}),
    ({}, "cross", {"key_padding_mask": "bool"}),
    ({"batch_first": True, "kdim": 6, "vdim": 10}, "cross", {"attn_mask": "float"}),
    ({"batch_first": True}, "self", {"attn_mask": "bool", "average_attn_weights": False}),
    ({"add_bias_kv": True, "add_zero_attn": True}, "cross", {"key_padding_mask": "bool"}),
    ({"batch_first": True, "bias": False}, "unbatched", {}),
]


def _mha_call(gen: torch.Generator, cfg: dict, kind: str, kw: dict):
    e, b, lq, lk = 8, 3, 4, 5
    bf = cfg.get("batch_first", False)
    shape = (lambda n, d: (b, n, d)) if bf else (lambda n, d: (n, b, d))
    if kind == "unbatched":
        shape = lambda n, d: (n, d)  # noqa: E731
    if kind != "cross":
        lk = lq
    query = torch.randn(*shape(lq, e), generator=gen)
    if kind == "self" or kind == "unbatched":
        key = value = query
    else:
        key = torch.randn(*shape(lk, cfg.get("kdim", e)), generator=gen)
        value = torch.randn(*shape(lk, cfg.get("vdim", e)), generator=gen)
    kwargs = dict(kw)
    if kw.get("key_padding_mask") == "bool":
        pad = torch.zeros(b, lk, dtype=torch.bool)
        pad[1, -2:] = True
        kwargs["key_padding_mask"] = pad
    if kw.get("attn_mask") == "bool":
        kwargs["attn_mask"] = torch.triu(torch.ones(lq, lk, dtype=torch.bool), 1)
    elif kw.get("attn_mask") == "float":
        kwargs["attn_mask"] = torch.randn(lq, lk, generator=gen)
    return (query, key, value), kwargs


def _mha(cfg: dict, seed: int) -> nn.MultiheadAttention:
    torch.manual_seed(seed)
    m = nn.MultiheadAttention(8, 2, **cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


@pytest.mark.parametrize("cfg, kind, kw", MHA_CASES)
def test_mha_float_forward_is_torchs_bit_for_bit(cfg, kind, kw):
    gen = torch.Generator().manual_seed(3)
    ref = _mha(cfg, 0)
    q, roles = _quantized(_mha(cfg, 0))
    assert isinstance(q, QuantMultiheadAttention) and "q_weight" in roles
    set_fake_quantize(q, FakeQuantState.FLOAT)
    args, kwargs = _mha_call(gen, cfg, kind, kw)
    for grad in (False, True):  # no_grad takes torch's fused inference path where it can
        with torch.set_grad_enabled(grad):
            out, w = q(*args, **kwargs)
            ref_out, ref_w = ref(*args, **kwargs)
        assert torch.equal(out, ref_out)
        assert (w is None and ref_w is None) or torch.equal(w, ref_w)


@pytest.mark.parametrize("cfg, kind, kw", MHA_CASES)
def test_mha_written_out_forward_computes_the_same_function(cfg, kind, kw):
    gen = torch.Generator().manual_seed(4)
    ref = _mha(cfg, 1)
    q, _ = _quantized(_mha(cfg, 1))
    set_fake_quantize(q, FakeQuantState.CALIBRATION)
    args, kwargs = _mha_call(gen, cfg, kind, kw)
    with torch.no_grad():
        out, w = q(*args, **kwargs)
        ref_out, ref_w = ref(*args, **kwargs)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    if ref_w is not None:
        torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)


def test_mha_quantized_forward_rounds_every_documented_value():
    gen = torch.Generator().manual_seed(5)
    m, roles = _quantized(_mha({"batch_first": True}, 2))
    assert set(roles) == {"q_weight", "k_weight", "v_weight", "out_weight", "q", "k", "v",
                          "scores", "probs", "attn"}
    x = torch.randn(2, 4, 8, generator=gen)
    _calibrate(m, ((x, x, x), {"need_weights": False}))
    qp = {r: getattr(m, f"{r}_fake_quant").qparams().fake_quantize for r in roles}
    wq, wk, wv = m.in_proj_weight.split(8)
    bq, bk, bv = m.in_proj_bias.split(8)

    def heads(t):  # (B, L, E) -> (B, H, L, E/H)
        return t.view(2, 4, 2, 4).transpose(1, 2)

    q = heads(qp["q"](F.linear(x, qp["q_weight"](wq), bq) * 0.5))  # 1/sqrt(head_dim 4)
    k = heads(qp["k"](F.linear(x, qp["k_weight"](wk), bk)))
    v = heads(qp["v"](F.linear(x, qp["v_weight"](wv), bv)))
    probs = qp["probs"](torch.softmax(qp["scores"](q @ k.transpose(-2, -1)), -1))
    attn = qp["attn"]((probs @ v).permute(2, 0, 1, 3).reshape(8, 8))
    out = F.linear(attn, qp["out_weight"](m.out_proj.weight), m.out_proj.bias)
    ref = out.view(4, 2, 8).transpose(0, 1)
    with torch.no_grad():
        assert torch.equal(m(x, x, x, need_weights=False)[0], ref)
    # the packed in-projection is quantized per output row, each block with its own grid
    assert m.q_weight_fake_quant.qparams().scale.shape == (8,)


def test_mha_keeps_parameter_names_and_rejects_subclasses():
    m = _mha({}, 0)
    keys = set(m.state_dict())
    q, _ = _quantized(m)
    assert keys <= set(q.state_dict()) and q.in_proj_weight is m.in_proj_weight

    class MyMHA(nn.MultiheadAttention):
        pass

    with pytest.raises(TypeError, match=r"nn\.MultiheadAttention"):
        QuantMultiheadAttention.from_float(MyMHA(8, 2))


def test_mha_qat_gradients_reach_every_parameter():
    m, _ = _quantized(_mha({"batch_first": True}, 6))
    m.train()
    set_fake_quantize(m, FakeQuantState.QAT)
    x = torch.randn(2, 4, 8)
    m(x, x, x)[0].square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.any(), name
