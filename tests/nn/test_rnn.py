"""fxquant.nn.rnn: the float forward *is* torch's recurrent kernel (bit for bit), the unrolled
forward computes the same function, and the quantized forward rounds exactly the documented
values (bit-exact against a reference step written here)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fxquant
from fxquant import FakeQuantState, set_fake_quantize
from fxquant.graph.library_modules import quantize_library_module
from fxquant.nn import QuantGRU, QuantLSTM, QuantLSTMCell

QCONFIG = fxquant.get_qconfig(observer=fxquant.MinMaxObserver)

CASES = [
    (nn.LSTM, {"num_layers": 2, "bidirectional": True, "proj_size": 3}),
    (nn.LSTM, {"batch_first": True}),
    (nn.GRU, {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    (nn.RNN, {"nonlinearity": "relu", "bias": False}),
    (nn.LSTMCell, {}),
    (nn.GRUCell, {}),
    (nn.RNNCell, {}),
]
IDS = ["lstm_bi_proj", "lstm_bf", "gru_bi", "rnn_relu", "lstm_cell", "gru_cell", "rnn_cell"]


def _build(cls: type, cfg: dict, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return cls(4, 5, **cfg).eval()


def _quantized(module: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    return quantize_library_module(module, QCONFIG, fxquant.get_profile("generic"), "op", "")


def _inputs(cls: type, cfg: dict, gen: torch.Generator, with_state: bool, batched: bool = True):
    cell = cls in (nn.LSTMCell, nn.GRUCell, nn.RNNCell)
    if cell:
        x = torch.randn(3, 4, generator=gen) if batched else torch.randn(4, generator=gen)
        lead = (3,) if batched else ()
    else:  # 3 sequences of 6 steps
        shape = ((3, 6) if cfg.get("batch_first") else (6, 3)) if batched else (6,)
        x = torch.randn(*shape, 4, generator=gen)
        layers = cfg.get("num_layers", 1) * (2 if cfg.get("bidirectional") else 1)
        lead = (layers, 3) if batched else (layers,)
    if not with_state:
        return (x,)
    hidden = cfg.get("proj_size") or 5
    h = torch.randn(*lead, hidden, generator=gen)
    if cls in (nn.LSTM, nn.LSTMCell):
        return x, (h, torch.randn(*lead, 5, generator=gen))
    return x, h


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


@pytest.mark.parametrize("cls, cfg", CASES, ids=IDS)
def test_float_forward_is_torchs_kernel_bit_for_bit(cls, cfg):
    gen = torch.Generator().manual_seed(0)
    ref = _build(cls, cfg, 0)
    q, roles = _quantized(_build(cls, cfg, 0))
    assert roles and set(ref.state_dict()) <= set(q.state_dict())
    set_fake_quantize(q, FakeQuantState.FLOAT)
    for with_state in (False, True):
        for batched in (True, False):
            args = _inputs(cls, cfg, gen, with_state, batched)
            with torch.no_grad():
                for a, b in zip(_flat(q(*args)), _flat(ref(*args)), strict=True):
                    assert torch.equal(a, b)


@pytest.mark.parametrize("cls, cfg", CASES, ids=IDS)
def test_unrolled_forward_computes_the_same_function(cls, cfg):
    gen = torch.Generator().manual_seed(1)
    ref = _build(cls, cfg, 1)
    q, _ = _quantized(_build(cls, cfg, 1))
    set_fake_quantize(q, FakeQuantState.CALIBRATION)  # observes, returns float: unrolled
    for with_state in (False, True):
        for batched in (True, False):
            args = _inputs(cls, cfg, gen, with_state, batched)
            with torch.no_grad():
                for a, b in zip(_flat(q(*args)), _flat(ref(*args)), strict=True):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_lstm_quantized_step_rounds_every_documented_value():
    gen = torch.Generator().manual_seed(2)
    m, roles = _quantized(_build(nn.LSTM, {}, 2))
    assert isinstance(m, QuantLSTM) and {"l0.weight_ih", "l0.hidden", "l0.cell"} <= set(roles)
    assert "l0.input" not in roles  # layer 0's input is quantized by the graph
    x = torch.randn(3, 2, 4, generator=gen)  # 3 steps, 2 sequences
    set_fake_quantize(m, FakeQuantState.CALIBRATION)
    with torch.no_grad():
        m(x)
    set_fake_quantize(m, FakeQuantState.VALIDATION)
    qs = m.quant_l0
    fq = {name: mod.qparams().fake_quantize for name, mod in qs.named_children()}
    gi = fq["ih"](F.linear(x, fq["weight_ih"](m.weight_ih_l0), m.bias_ih_l0))
    w_hh = fq["weight_hh"](m.weight_hh_l0)
    h, c = torch.zeros(2, 5), torch.zeros(2, 5)
    ys = []
    for t in range(3):
        gates = fq["gates"](gi[t] + fq["hh"](F.linear(h, w_hh, m.bias_hh_l0)))
        i, f, g, o = gates.chunk(4, -1)
        i, f = fq["input_gate"](torch.sigmoid(i)), fq["forget_gate"](torch.sigmoid(f))
        g, o = fq["cell_gate"](torch.tanh(g)), fq["output_gate"](torch.sigmoid(o))
        c_out = fq["forget_cell"](f * c) + fq["input_cell"](i * g)
        c = fq["cell"](c_out)
        y = o * fq["cell_tanh"](torch.tanh(c))
        h = fq["hidden"](y)
        ys.append(y)
    with torch.no_grad():
        out, (h_n, c_n) = m(x)
    assert torch.equal(out, torch.stack(ys))  # outputs: the float values, rounded by consumers
    assert torch.equal(h_n[0], ys[-1]) and torch.equal(c_n[0], c_out)


def test_gru_and_cell_quantizers_are_shared_by_time_steps_and_layers_get_their_own():
    m, roles = _quantized(_build(nn.GRU, {"num_layers": 2}, 3))
    assert isinstance(m, QuantGRU)
    assert {r.split(".")[0] for r in roles} == {"l0", "l1"}
    assert "l1.input" not in roles  # layer 1 reads layer 0's hidden grid
    _, roles = _quantized(_build(nn.GRU, {"num_layers": 2, "bidirectional": True}, 3))
    assert "l1.input" in roles and "l0.input" not in roles  # two directions: one grid
    cell, roles = _quantized(_build(nn.LSTMCell, {}, 3))
    assert isinstance(cell, QuantLSTMCell) and "hidden" in roles and "input" not in roles


def test_packed_sequence_runs_the_float_forward_with_a_warning():
    m, _ = _quantized(_build(nn.LSTM, {}, 4))
    ref = _build(nn.LSTM, {}, 4)
    x = torch.randn(5, 2, 4)
    set_fake_quantize(m, FakeQuantState.CALIBRATION)
    packed = pack_padded_sequence(x, torch.tensor([5, 3]))
    with pytest.warns(UserWarning, match="PackedSequence"), torch.no_grad():
        out = m(packed)
    assert torch.equal(out[0].data, ref(packed)[0].data)


def test_qat_gradients_reach_every_parameter():
    m, _ = _quantized(_build(nn.LSTM, {"num_layers": 2}, 5))
    m.train()
    set_fake_quantize(m, FakeQuantState.QAT)
    out, (h, c) = m(torch.randn(4, 2, 4))
    (out.square().mean() + h.sum() + c.sum()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.any(), name
