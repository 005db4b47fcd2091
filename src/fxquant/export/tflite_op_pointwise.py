"""TFLite handlers of elementwise ops and normalizations: ADD / SUB / MUL / DIV, the
activations (RELU / RELU6 / LOGISTIC / TANH / HARD_SWISH / GELU / LEAKY_RELU), SOFTMAX, and the
ops TFLite has no integer kernel for (SiLU, hard sigmoid, LayerNorm, a BatchNorm left unfolded),
which run in float32 between DEQUANTIZE and QUANTIZE.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..errors import ExportError
from .tflite_lower import (
    Const,
    Dyn,
    Lowerer,
    clip_kind,
    identity,
    permuted,
)
from .tflite_op_support import (
    ACT,
    aten,
    broadcast_dyn,
    decide,
    dyn_input,
    float_inputs,
    float_unary,
    layout_for,
    on_output_grid,
    operand_tensor,
    out_tensor,
)

__all__ = [
    "BINARY", "batch_norm", "binary", "clip_opcode", "gelu", "hardsigmoid", "hardswish",
    "layer_norm", "leaky_relu", "relu", "sigmoid", "silu", "softmax", "tanh"
]


BINARY = {
    aten.add: "ADD", aten.add_: "ADD", aten.sub: "SUB", aten.sub_: "SUB", aten.mul: "MUL",
    aten.mul_: "MUL", aten.div: "DIV", aten.rsub: "SUB",
}


def binary(L: Lowerer, n: fx.Node) -> Dyn:
    opcode = BINARY[n.target.overloadpacket]
    a, b = L.value(n.args[0]), L.value(n.args[1])
    alpha = n.kwargs.get("alpha", 1)
    if n.target.overloadpacket is aten.rsub:
        a, b = b, a
    if opcode == "DIV" and not isinstance(b, Dyn):
        value = b.float_value() if isinstance(b, Const) else torch.tensor(float(b))
        b, opcode = Const(1.0 / value), "MUL"
    if alpha != 1:
        if isinstance(b, Dyn):
            raise ExportError(f"{n.name}: add / sub with alpha and a run-time operand")
        b = Const((b.float_value() if isinstance(b, Const) else torch.tensor(float(b))) * alpha)
    out_shape = L.shape(n)
    rank = len(out_shape)
    dyns = [v for v in (a, b) if isinstance(v, Dyn)]
    perm = layout_for(dyns, rank)
    kernel = opcode != "DIV"
    grid, covered, act, why = decide(L, n, dyns, fusable=opcode in ("ADD", "SUB", "MUL"),
                                      kernel=kernel)
    if grid is None:
        ins_f = float_inputs(L, n, dyns, why)
        mapping = dict(zip((id(d) for d in dyns), ins_f, strict=True))
        a = mapping.get(id(a), a)
        b = mapping.get(id(b), b)
    dtype = grid.dtype if grid is not None else None
    tensors = []
    for i, v in enumerate((a, b)):
        if isinstance(v, Dyn):
            tensors.append(broadcast_dyn(L, v, rank, perm, n))
        else:
            tensors.append(operand_tensor(L, v, perm, rank, dtype, f"{n.name}_operand{i}"))
    out = out_tensor(L, n, out_shape, perm, grid, covered, None if grid is not None else n.name)
    options = {"FusedActivationFunction": ACT[act]}
    if opcode in ("ADD", "SUB") and grid is not None and grid.dtype == "INT16":
        options["PotScaleInt16"] = False
    L.emit(opcode, tensors, [out.tensor], (f"{opcode.capitalize()}Options", options))
    return out


def _unary(L: Lowerer, n: fx.Node, opcode: str, kernel: bool = True,
           options: tuple[str, dict[str, Any]] | None = None, last_axis: int | None = None
           ) -> Dyn:
    x = dyn_input(L, n.args[0], n)
    perm = x.perm
    if last_axis is not None:  # the op works on TFLite's last axis: that must be torch's axis
        if perm[-1] != last_axis:
            rest = [d for d in identity(x.rank) if d != last_axis]
            perm = (*rest, last_axis) if perm == identity(x.rank) else perm
            if perm[-1] != last_axis:
                perm = (*rest, last_axis)
    grid, covered, _, why = decide(L, n, [x], kernel=kernel)
    fixed = FIXED_OUTPUT.get((opcode, grid.dtype)) if grid is not None else None
    if grid is not None and fixed is not None and not (
            math.isclose(grid.scale, fixed[0], rel_tol=1e-6) and grid.zero_point == fixed[1]):
        grid, covered, why = None, [], (
            f"its output grid (scale {grid.scale:.6g}, zero point {grid.zero_point}) is not "
            f"TFLite's fixed {opcode} grid ({fixed[0]:.6g}, {fixed[1]}); a fixed-scale quantizer "
            "on that grid lets it run in integer")
    if grid is None:
        x = float_inputs(L, n, [x], why)[0]
    out = out_tensor(L, n, L.shape(n), perm, grid, covered, None if grid is not None else n.name)
    L.emit(opcode, [L.get(x, perm)], [out.tensor], options)
    return out


FIXED_OUTPUT = {
    ("SOFTMAX", "INT8"): (1 / 256, -128), ("SOFTMAX", "INT16"): (1 / 32768, 0),
    ("LOGISTIC", "INT8"): (1 / 256, -128), ("LOGISTIC", "INT16"): (1 / 32768, 0),
    ("TANH", "INT8"): (1 / 128, 0), ("TANH", "INT16"): (1 / 32768, 0),
    ("LOG_SOFTMAX", "INT8"): (16 / 256, 127),
}
"""``(opcode, output type) -> (scale, zero point)`` LiteRT's integer kernel requires of its output
(an op quantized on another grid runs in float32 between DEQUANTIZE and QUANTIZE)."""


def relu(L: Lowerer, n: fx.Node) -> Dyn:
    return _unary(L, n, clip_opcode(n))


def clip_opcode(n: fx.Node) -> str:
    kind = clip_kind(n)
    if kind is None:
        raise ExportError(f"{n.name}: only relu / relu6 clamps have a TFLite form")
    return kind


def sigmoid(L: Lowerer, n: fx.Node) -> Dyn:
    return _unary(L, n, "LOGISTIC")


def tanh(L: Lowerer, n: fx.Node) -> Dyn:
    return _unary(L, n, "TANH")


def hardswish(L: Lowerer, n: fx.Node) -> Dyn:
    x = dyn_input(L, n.args[0], n)
    kernel = x.grid is None or x.grid.dtype == "INT8"
    return _unary(L, n, "HARD_SWISH", kernel=kernel)


def gelu(L: Lowerer, n: fx.Node) -> Dyn:
    approx = n.kwargs.get("approximate", n.args[1] if len(n.args) > 1 else "none")
    x = dyn_input(L, n.args[0], n)
    kernel = x.grid is None or x.grid.dtype == "INT8"
    return _unary(L, n, "GELU", kernel=kernel,
                  options=("GeluOptions", {"Approximate": approx == "tanh"}))


def leaky_relu(L: Lowerer, n: fx.Node) -> Dyn:
    slope = float(n.args[1]) if len(n.args) > 1 else 0.01
    return _unary(L, n, "LEAKY_RELU", options=("LeakyReluOptions", {"Alpha": slope}))


def softmax(L: Lowerer, n: fx.Node) -> Dyn:
    x = dyn_input(L, n.args[0], n)
    dim = int(n.args[1]) % x.rank
    opcode = "LOG_SOFTMAX" if n.target.overloadpacket is aten.log_softmax else "SOFTMAX"
    options = ("SoftmaxOptions", {"Beta": 1.0}) if opcode == "SOFTMAX" else None
    return _unary(L, n, opcode, options=options, last_axis=dim)


# -- float-only decompositions --------------------------------------------------------------------
def layer_norm(L: Lowerer, n: fx.Node) -> Dyn:
    x = dyn_input(L, n.args[0], n)
    shape = list(n.args[1])
    w = L.value(n.args[2]) if len(n.args) > 2 else None
    b = L.value(n.args[3]) if len(n.args) > 3 else None
    eps = float(n.args[4]) if len(n.args) > 4 else 1e-5
    grid, covered, _ = L.output_grid(n, False)
    if L.quantize:
        L.note_float(n, "TFLite has no integer layer norm (it runs in float32)")
    xf = L.as_layout(L.dequantized(x), identity(x.rank))
    axes = list(range(x.rank - len(shape), x.rank))
    sh = permuted(x.shape, identity(x.rank))
    red = tuple(1 if i in axes else s for i, s in enumerate(sh))

    def t(name: str, shp: tuple[int, ...]) -> int:
        return L.new(f"{n.name}_{name}", shp, None)

    axes_t = L.int_const(f"{n.name}_axes", axes)
    mu, centred, sq, var, var_eps, inv, normed = (t("mean", red), t("centred", sh), t("sq", sh),
                                                 t("var", red), t("var_eps", red),
                                                 t("rstd", red), t("normed", sh))
    L.emit("MEAN", [xf.tensor, axes_t], [mu], ("ReducerOptions", {"KeepDims": True}))
    L.emit("SUB", [xf.tensor, mu], [centred], ("SubOptions", {}))
    L.emit("MUL", [centred, centred], [sq], ("MulOptions", {}))
    L.emit("MEAN", [sq, axes_t], [var], ("ReducerOptions", {"KeepDims": True}))
    L.emit("ADD", [var, L.const(f"{n.name}_eps", np.float32(eps), "FLOAT32")], [var_eps],
           ("AddOptions", {}))
    L.emit("RSQRT", [var_eps], [inv])
    L.emit("MUL", [centred, inv], [normed], ("MulOptions", {}))
    cur = normed
    if isinstance(w, Const):
        nxt = t("scaled", sh)
        L.emit("MUL", [cur, L.const(f"{n.name}_gamma", w.float_value(), "FLOAT32")], [nxt],
               ("MulOptions", {}))
        cur = nxt
    if isinstance(b, Const):
        nxt = t("shifted", sh)
        L.emit("ADD", [cur, L.const(f"{n.name}_beta", b.float_value(), "FLOAT32")], [nxt],
               ("AddOptions", {}))
        cur = nxt
    out = Dyn(cur, identity(x.rank), None, x.shape)
    return on_output_grid(L, out, grid, covered)


def batch_norm(L: Lowerer, n: fx.Node) -> Dyn:
    x = dyn_input(L, n.args[0], n)
    w, b, mu, var = (L.value(a) for a in n.args[1:5])
    # eps: _native_batch_norm_legit_no_training's 7th argument, batch_norm's 8th
    eps_at = 6 if "legit" in str(n.target) else 7
    eps = float(n.args[eps_at]) if len(n.args) > eps_at else 1e-5
    if not all(isinstance(v, Const) or v is None for v in (w, b, mu, var)):
        raise ExportError(f"{n.name}: batch norm statistics must be constants")
    c = x.shape[1]
    inv = 1.0 / torch.sqrt(var.value.double() + eps)
    scale = (w.float_value().double() if w is not None else torch.ones(c)) * inv
    shift = (b.float_value().double() if b is not None else torch.zeros(c)) - mu.value * scale
    if L.quantize:
        L.note_float(n, "a batch norm that was not folded runs in float32")
    xf = L.dequantized(x)
    shp = (1, c) + (1,) * (x.rank - 2)
    sc = operand_tensor(L, Const(scale.float().reshape(shp)), xf.perm, x.rank, None,
                        f"{n.name}_scale")
    sh = operand_tensor(L, Const(shift.float().reshape(shp)), xf.perm, x.rank, None,
                        f"{n.name}_shift")
    mid = L.new(f"{n.name}_mul", permuted(x.shape, xf.perm), None)
    L.emit("MUL", [xf.tensor, sc], [mid], ("MulOptions", {}))
    out = L.new(n.name, permuted(x.shape, xf.perm), None)
    L.emit("ADD", [mid, sh], [out], ("AddOptions", {}))
    res = Dyn(out, xf.perm, None, x.shape)
    return res if not isinstance(n.meta.get("val"), (tuple, list)) else (res, None, None)


def _hardsigmoid_steps(L: Lowerer, x: int, shape: tuple[int, ...], name: str) -> int:
    a, b, c = (L.new(f"{name}_{k}", shape, None) for k in ("plus3", "relu6", "out"))
    L.emit("ADD", [x, L.const(f"{name}_3", np.float32(3.0), "FLOAT32")], [a], ("AddOptions", {}))
    L.emit("RELU6", [a], [b])
    L.emit("MUL", [b, L.const(f"{name}_sixth", np.float32(1 / 6), "FLOAT32")], [c],
           ("MulOptions", {}))
    return c


def _silu_steps(L: Lowerer, x: int, shape: tuple[int, ...], name: str) -> int:
    a, b = L.new(f"{name}_sigmoid", shape, None), L.new(f"{name}_out", shape, None)
    L.emit("LOGISTIC", [x], [a])
    L.emit("MUL", [x, a], [b], ("MulOptions", {}))
    return b


def hardsigmoid(L: Lowerer, n: fx.Node) -> Dyn:
    return float_unary(L, n, "TFLite has no hard sigmoid (ADD, RELU6, MUL in float32)",
                        _hardsigmoid_steps)


def silu(L: Lowerer, n: fx.Node) -> Dyn:
    return float_unary(L, n, "TFLite has no SiLU (LOGISTIC, MUL in float32)", _silu_steps)
