"""Quantizable recurrent layers: ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` and their cells.

Like :mod:`fxquant.nn.attention`, each module keeps two forwards: while every internal quantizer
is absent or in ``FakeQuantState.FLOAT`` it is the torch module's own forward (its fused CPU /
oneDNN kernel: a prepared model in float mode computes bit for bit what the original computes);
otherwise the recurrence is unrolled over time with the gates written out and a quantizer on
every value an integer runtime consumes (as ``torch.ao.nn.quantizable.LSTM`` does).  One set of
quantizers per layer and direction, ``quant_l<k>[_reverse]`` (an :class:`RNNQuantizers`), is
shared by all time steps; parameters keep their names (``weight_ih_l0`` ...).

LSTM step (``ih`` is computed for the whole sequence at once)::

    gates = q_gates(q_ih(x W_ih + b_ih) + q_hh(h W_hh + b_hh));  i, f, g, o = chunk(gates, 4)
    c = q_cell(q_forget_cell(q_forget_gate(sigmoid f) * c) + q_input_cell(q_input_gate(sigmoid i)
                                                                         * q_cell_gate(tanh g)))
    h = q_output_gate(sigmoid o) * q_cell_tanh(tanh c)      (proj_size: q_proj_input(h) W_hr)

GRU step: ``r, z = q_reset_gate / q_update_gate(sigmoid(q_gates(ih_rz + hh_rz)))``,
``n = q_new_gate(tanh(q_new_pre(ih_n + q_reset_hidden(r * hh_n))))``,
``h = n + q_update(z * q_delta(h - n))``.  RNN step: ``h = act(q_gates(ih + hh))``.

The state fed back into the next step is quantized (``q_hidden``), and so is the sequence a
layer passes to the next layer (the hidden grid: a bidirectional layer's two directions are
requantized to one grid by the next layer's ``q_input``).  The module's outputs (the last
layer's sequence, the final states) are the float values of their last op, quantized by whoever
consumes them (the prepared graph), so nothing is rounded twice.  A ``PackedSequence`` input
runs the float forward (``fxquant.prepare`` reports such a module as float).
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .modules import quantizers_on, rebind_module

__all__ = [
    "RNNQuantizers",
    "QuantLSTM",
    "QuantGRU",
    "QuantRNN",
    "QuantLSTMCell",
    "QuantGRUCell",
    "QuantRNNCell",
    "RNN_SLOTS",
]

RNN_SLOTS: dict[str, tuple[str, ...]] = {
    "LSTM": ("weight_ih", "weight_hh", "weight_hr", "input", "ih", "hh", "gates", "input_gate",
             "forget_gate", "cell_gate", "output_gate", "forget_cell", "input_cell", "cell",
             "cell_tanh", "proj_input", "hidden"),
    "GRU": ("weight_ih", "weight_hh", "input", "ih", "hh", "gates", "reset_gate", "update_gate",
            "reset_hidden", "new_pre", "new_gate", "delta", "update", "hidden"),
    "RNN": ("weight_ih", "weight_hh", "input", "ih", "hh", "gates", "hidden"),
}  # fmt: skip
"""The quantizer slots of one layer / direction, per cell kind (``weight_*``: per-channel weight
quantizers; the rest activation quantizers named after the value they round)."""


class RNNQuantizers(nn.Module):
    """The quantizers of one layer / direction of a recurrent module (children, all optional).

    Args:
        kind: ``LSTM``, ``GRU`` or ``RNN``: which slots exist (:data:`RNN_SLOTS`).
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        for name in RNN_SLOTS[kind]:
            self.register_module(name, None)

    def q(self, slot: str, x: Tensor) -> Tensor:
        """``x`` through quantizer ``slot`` (unchanged when that slot is empty)."""
        fq = self._modules[slot]
        return x if fq is None else fq(x)


def _on(module: nn.Module) -> bool:
    return quantizers_on(
        m for c in module.children() if isinstance(c, RNNQuantizers) for m in c.children()
    )


def _io(module: nn.Module, slot: str, x: Any) -> Any:
    fq = module._modules.get(slot)
    return x if fq is None or not isinstance(x, Tensor) else fq(x)


# -- one time step of each cell kind ------------------------------------------------------------
def _lstm_step(qs: RNNQuantizers, gi: Tensor, h: Tensor, c: Tensor, w_hh: Tensor,
               b_hh: Tensor | None, w_hr: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns h and c as computed (float, for the outputs) and as fed back (quantized)."""
    gates = qs.q("gates", gi + qs.q("hh", F.linear(h, w_hh, b_hh)))
    i, f, g, o = gates.chunk(4, dim=-1)
    i = qs.q("input_gate", torch.sigmoid(i))
    f = qs.q("forget_gate", torch.sigmoid(f))
    g = qs.q("cell_gate", torch.tanh(g))
    o = qs.q("output_gate", torch.sigmoid(o))
    c_out = qs.q("forget_cell", f * c) + qs.q("input_cell", i * g)
    c = qs.q("cell", c_out)
    h_out = o * qs.q("cell_tanh", torch.tanh(c))
    if w_hr is not None:
        h_out = F.linear(qs.q("proj_input", h_out), w_hr)
    return h_out, qs.q("hidden", h_out), c_out, c


def _gru_step(qs: RNNQuantizers, gi: Tensor, h: Tensor, w_hh: Tensor,
              b_hh: Tensor | None) -> tuple[Tensor, Tensor]:
    gh = qs.q("hh", F.linear(h, w_hh, b_hh))
    size = h.size(-1)
    i_rz, i_n = gi.split([2 * size, size], dim=-1)
    h_rz, h_n = gh.split([2 * size, size], dim=-1)
    r, z = torch.sigmoid(qs.q("gates", i_rz + h_rz)).chunk(2, dim=-1)
    r, z = qs.q("reset_gate", r), qs.q("update_gate", z)
    n = qs.q("new_gate", torch.tanh(qs.q("new_pre", i_n + qs.q("reset_hidden", r * h_n))))
    h_out = n + qs.q("update", z * qs.q("delta", h - n))
    return h_out, qs.q("hidden", h_out)


def _rnn_step(qs: RNNQuantizers, gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None,
              relu: bool) -> tuple[Tensor, Tensor]:
    pre = qs.q("gates", gi + qs.q("hh", F.linear(h, w_hh, b_hh)))
    h_out = torch.relu(pre) if relu else torch.tanh(pre)
    return h_out, qs.q("hidden", h_out)


def _reverse(seq: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
    return seq.flip(0) if isinstance(seq, Tensor) else seq[::-1]


def _input_projection(qs: RNNQuantizers, seq: Tensor | list[Tensor], w_ih: Tensor,
                      b_ih: Tensor | None) -> Tensor | list[Tensor]:
    """``q_ih(x W_ih + b_ih)``: one matmul over a sequence tensor (the module's input), one per
    step for a list of steps (a previous layer's output)."""
    if isinstance(seq, Tensor):
        return qs.q("ih", F.linear(qs.q("input", seq), w_ih, b_ih))
    return [qs.q("ih", F.linear(qs.q("input", x), w_ih, b_ih)) for x in seq]


# -- full sequence modules -----------------------------------------------------------------------
class _QuantRNNBase:
    """Shared code of QuantLSTM / QuantGRU / QuantRNN (listed first, before the torch class)."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]]
    KIND: ClassVar[str]
    IO = ("input_fake_quant_0", "output_fake_quant")

    @classmethod
    def from_float(cls, mod: nn.Module) -> nn.Module:
        """Wrap ``mod`` (exactly of type ``_FLOAT_MODULE``), sharing its parameters; one empty
        :class:`RNNQuantizers` per layer and direction."""
        if type(mod) is not cls._FLOAT_MODULE:
            raise TypeError(f"{cls.__name__}.from_float expects an "
                            f"{cls._FLOAT_MODULE.__name__}, got {type(mod).__name__}")
        new = rebind_module(mod, cls)
        for layer in range(mod.num_layers):  # type: ignore[attr-defined]
            for suffix in new._suffixes():
                new.add_module(f"quant_l{layer}{suffix}", RNNQuantizers(cls.KIND))
        for name in cls.IO:
            new.register_module(name, None)
        return new

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)  # type: ignore[attr-defined]

    def forward(self, input: Any, hx: Any = None) -> Any:
        input = _io(self, "input_fake_quant_0", input)
        if not _on(self):  # type: ignore[arg-type]
            out = super().forward(input, hx)  # type: ignore[misc]
        elif isinstance(input, PackedSequence):
            if not self.__dict__.get("_fxq_warned"):
                self.__dict__["_fxq_warned"] = True
                warnings.warn(f"fxquant: {type(self).__name__} got a PackedSequence, which its "
                              "quantized forward does not take: this call runs in float",
                              stacklevel=2)
            out = super().forward(input, hx)  # type: ignore[misc]
        else:
            out = self._quantized_forward(input, hx)
        return (_io(self, "output_fake_quant", out[0]), out[1])

    def _weights(self, layer: int, suffix: str, qs: RNNQuantizers):
        name = f"l{layer}{suffix}"
        get = lambda p: getattr(self, f"{p}_{name}", None)  # noqa: E731
        return (qs.q("weight_ih", get("weight_ih")), get("bias_ih"),
                qs.q("weight_hh", get("weight_hh")), get("bias_hh"),
                qs.q("weight_hr", get("weight_hr")) if get("weight_hr") is not None else None)

    def _quantized_forward(self, input: Tensor, hx: Any) -> tuple[Tensor, Any]:
        batched = input.dim() == 3
        batch_first = self.batch_first  # type: ignore[attr-defined]
        if not batched:
            input = input.unsqueeze(0 if batch_first else 1)
        x = input.transpose(0, 1) if batch_first else input  # (T, B, F)
        states = self._initial_states(x, hx, batched)
        dirs = len(self._suffixes())
        finals: list[list[Tensor]] = [[] for _ in states]
        layer_in: Tensor | list[Tensor] = x  # a layer's input: the sequence or its steps
        for layer in range(self.num_layers):  # type: ignore[attr-defined]
            outs = []
            last_layer = layer == self.num_layers - 1  # type: ignore[attr-defined]
            for d, suffix in enumerate(self._suffixes()):
                qs = self._modules[f"quant_l{layer}{suffix}"]
                init = [s[layer * dirs + d] for s in states]
                seq = layer_in if d == 0 else _reverse(layer_in)
                ys, ys_q, last = self._run(qs, seq, init, self._weights(layer, suffix, qs))
                ys = ys if last_layer else ys_q  # the next layer reads the hidden grid
                outs.append(ys if d == 0 else ys[::-1])
                for f, v in zip(finals, last, strict=True):
                    f.append(v)
            # between layers the steps stay separate (each step's input projection is its own
            # matmul: OpenVINO's low-precision pass cannot take a matmul over a concatenation
            # of per-step dequantized values)
            steps = outs[0] if dirs == 1 else [torch.cat(p, -1) for p in zip(*outs, strict=True)]
            if self.dropout and self.training and not last_layer:  # type: ignore[attr-defined]
                steps = [F.dropout(t, self.dropout) for t in steps]  # type: ignore[attr-defined]
            layer_in = torch.stack(steps) if last_layer else steps
        assert isinstance(layer_in, Tensor)
        out = layer_in.transpose(0, 1) if batch_first else layer_in
        stacked = [torch.stack(f) for f in finals]
        if not batched:
            out = out.squeeze(0 if batch_first else 1)
            stacked = [s.squeeze(1) for s in stacked]
        return out, self._pack_states(stacked)

    def _initial_states(self, x: Tensor, hx: Any, batched: bool) -> list[Tensor]:
        dirs = len(self._suffixes())
        n, b = self.num_layers * dirs, x.size(1)  # type: ignore[attr-defined]
        sizes = self._state_sizes()
        if hx is None:
            return [x.new_zeros(n, b, s) for s in sizes]
        states = list(hx) if isinstance(hx, (tuple, list)) else [hx]
        return [s if batched else s.unsqueeze(1) for s in states]

    def _state_sizes(self) -> list[int]:
        return [self.hidden_size]  # type: ignore[attr-defined]

    def _pack_states(self, states: list[Tensor]) -> Any:
        return states[0]

    def _run(self, qs, seq, init, weights) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """(float outputs, quantized outputs, final states) of one direction of one layer, the
        outputs one tensor per step."""
        raise NotImplementedError


class QuantLSTM(_QuantRNNBase, nn.LSTM):
    """``nn.LSTM`` (any layers, bidirectional, ``proj_size``, batch_first), quantizable inside."""

    _FLOAT_MODULE = nn.LSTM
    KIND = "LSTM"

    def _state_sizes(self) -> list[int]:
        return [self.proj_size or self.hidden_size, self.hidden_size]

    def _pack_states(self, states: list[Tensor]) -> Any:
        return (states[0], states[1])

    def _run(self, qs, seq, init, weights):
        w_ih, b_ih, w_hh, b_hh, w_hr = weights
        gi = _input_projection(qs, seq, w_ih, b_ih)
        h, c = qs.q("hidden", init[0]), qs.q("cell", init[1])
        ys, ys_q = [], []
        h_out, c_out = h, c
        for t in range(len(gi)):
            h_out, h, c_out, c = _lstm_step(qs, gi[t], h, c, w_hh, b_hh, w_hr)
            ys.append(h_out)
            ys_q.append(h)
        return ys, ys_q, [h_out, c_out]


class QuantGRU(_QuantRNNBase, nn.GRU):
    """``nn.GRU`` (any layers, bidirectional, batch_first), quantizable inside."""

    _FLOAT_MODULE = nn.GRU
    KIND = "GRU"

    def _run(self, qs, seq, init, weights):
        w_ih, b_ih, w_hh, b_hh, _ = weights
        gi = _input_projection(qs, seq, w_ih, b_ih)
        h = qs.q("hidden", init[0])
        ys, ys_q = [], []
        h_out = h
        for t in range(len(gi)):
            h_out, h = _gru_step(qs, gi[t], h, w_hh, b_hh)
            ys.append(h_out)
            ys_q.append(h)
        return ys, ys_q, [h_out]


class QuantRNN(_QuantRNNBase, nn.RNN):
    """``nn.RNN`` (tanh or relu), quantizable inside."""

    _FLOAT_MODULE = nn.RNN
    KIND = "RNN"

    def _run(self, qs, seq, init, weights):
        w_ih, b_ih, w_hh, b_hh, _ = weights
        gi = _input_projection(qs, seq, w_ih, b_ih)
        h = qs.q("hidden", init[0])
        ys, ys_q = [], []
        h_out = h
        relu = self.nonlinearity == "relu"
        for t in range(len(gi)):
            h_out, h = _rnn_step(qs, gi[t], h, w_hh, b_hh, relu)
            ys.append(h_out)
            ys_q.append(h)
        return ys, ys_q, [h_out]


# -- cells ----------------------------------------------------------------------------------------
class _QuantCellBase:
    """Shared code of the cells: one :class:`RNNQuantizers` named ``quant``."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]]
    KIND: ClassVar[str]
    IO = ("input_fake_quant_0", "output_fake_quant")

    @classmethod
    def from_float(cls, mod: nn.Module) -> nn.Module:
        """Wrap ``mod`` (exactly of type ``_FLOAT_MODULE``), sharing its parameters."""
        if type(mod) is not cls._FLOAT_MODULE:
            raise TypeError(f"{cls.__name__}.from_float expects an "
                            f"{cls._FLOAT_MODULE.__name__}, got {type(mod).__name__}")
        new = rebind_module(mod, cls)
        new.add_module("quant", RNNQuantizers(cls.KIND))
        for name in cls.IO:
            new.register_module(name, None)
        return new

    def forward(self, input: Tensor, hx: Any = None) -> Any:
        input = _io(self, "input_fake_quant_0", input)
        if not _on(self):  # type: ignore[arg-type]
            out = super().forward(input, hx)  # type: ignore[misc]
        else:
            batched = input.dim() == 2
            x = input if batched else input.unsqueeze(0)
            states = self._states(x, hx, batched)
            qs = self.quant  # type: ignore[attr-defined]
            gi = qs.q("ih", F.linear(qs.q("input", x), qs.q("weight_ih", self.weight_ih),
                                     self.bias_ih))  # type: ignore[attr-defined]
            w_hh = qs.q("weight_hh", self.weight_hh)  # type: ignore[attr-defined]
            out = self._step(qs, gi, states, w_hh, self.bias_hh)  # type: ignore[attr-defined]
            if not batched:
                out = tuple(o.squeeze(0) for o in out) if isinstance(out, tuple) else \
                    out.squeeze(0)
        if isinstance(out, tuple):
            return (_io(self, "output_fake_quant", out[0]), *out[1:])
        return _io(self, "output_fake_quant", out)

    def _states(self, x: Tensor, hx: Any, batched: bool) -> list[Tensor]:
        sizes = [self.hidden_size] * (2 if self.KIND == "LSTM" else 1)  # type: ignore
        if hx is None:
            return [x.new_zeros(x.size(0), s) for s in sizes]
        states = list(hx) if isinstance(hx, (tuple, list)) else [hx]
        return [s if batched else s.unsqueeze(0) for s in states]

    def _step(self, qs, gi, states, w_hh, b_hh) -> Any:
        raise NotImplementedError


class QuantLSTMCell(_QuantCellBase, nn.LSTMCell):
    """``nn.LSTMCell``, quantizable inside (same step as :class:`QuantLSTM`)."""

    _FLOAT_MODULE = nn.LSTMCell
    KIND = "LSTM"

    def _step(self, qs, gi, states, w_hh, b_hh):
        h_out, _, c_out, _ = _lstm_step(qs, gi, qs.q("hidden", states[0]),
                                        qs.q("cell", states[1]), w_hh, b_hh, None)
        return (h_out, c_out)


class QuantGRUCell(_QuantCellBase, nn.GRUCell):
    """``nn.GRUCell``, quantizable inside (same step as :class:`QuantGRU`)."""

    _FLOAT_MODULE = nn.GRUCell
    KIND = "GRU"

    def _step(self, qs, gi, states, w_hh, b_hh):
        return _gru_step(qs, gi, qs.q("hidden", states[0]), w_hh, b_hh)[0]


class QuantRNNCell(_QuantCellBase, nn.RNNCell):
    """``nn.RNNCell`` (tanh or relu), quantizable inside."""

    _FLOAT_MODULE = nn.RNNCell
    KIND = "RNN"

    def _step(self, qs, gi, states, w_hh, b_hh):
        relu = self.nonlinearity == "relu"
        return _rnn_step(qs, gi, qs.q("hidden", states[0]), w_hh, b_hh, relu)[0]
