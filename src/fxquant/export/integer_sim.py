"""Integer-kernel simulation: a prepared model evaluated with a runtime's integer arithmetic.

The fake-quant model (the *simulation*) defines every quantized tensor as
``Q(op(DQ(inputs)))``.  A runtime that fuses ``DQ -> op -> Q`` into an integer kernel computes
the same quantity with different arithmetic: an exact int32 accumulator, an int32 bias rounded
to ``input_scale * weight_scale``, and a float32 requantization multiplier.  The results differ
only where the value lies within that rounding error of a rounding tie -- but in a deep
network one flipped code can flip several downstream, so "identical at the output" needs the
runtime's arithmetic at every fused op.

:func:`integer_simulation` returns a float64 copy of a prepared model in which each op that the
runtime fuses (given as ``{quantized tensor name: kernel}``, e.g. read from ONNX Runtime's
optimized graph by :func:`fxquant.verify`) computes exactly what that kernel computes
(:mod:`fxquant.export.ort_math`); every other op runs the fake-quant graph in float64 (exact
for integer-valued products and sums).  The quantizers, their scales and the weights' codes are
the simulation's own: nothing is read back from the exported file, so an export that wrote
different constants still shows up as a difference.

Emulated (ONNX Runtime CPU): ``QLinearConv`` (Conv1d/2d/3d, incl. ConvBn), ``QGemm`` (Linear),
``MatMulIntegerToFloat`` (a Linear on 3-D input, float output), ``QLinearMatMul`` (``@`` of two
quantized tensors), ``QLinearAdd`` and ``QLinearGlobalAveragePool``.  Quantizers fed by float
ops quantize as ``QuantizeLinear`` does on float32 values.  Needs an fx-captured model (eager
capture falls back to the float64 evaluation, with the reason listed).
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .. import nn as qnn
from ..fake_quant import FakeQuantize
from ..graph.report import get_report
from ..numerics import ScaleMath
from ..numerics.affine import quantize_codes
from . import bias as bias_math
from . import ort_math
from .naming import quantized_tensor_name
from .quantizers import quantizer_index

__all__ = ["IntegerSimulation", "integer_simulation", "ORT_KERNELS"]

ORT_KERNELS = frozenset({"QLinearConv", "QGemm", "QLinearAdd", "QLinearGlobalAveragePool",
                         "QLinearMatMul", "MatMulIntegerToFloat"})
"""ONNX Runtime kernels :func:`integer_simulation` reproduces."""

_WEIGHTED = (qnn.QuantConv1d, qnn.QuantConv2d, qnn.QuantConv3d, qnn.ConvBn1d, qnn.ConvBn2d,
             qnn.ConvBn3d, qnn.QuantLinear)
# clipping activations between a fused op and its output quantizer: ORT drops them when the
# quantizer's own saturation does the clipping (the kernel then clamps to the code range)
_CLIP_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.hardtanh, F.hardtanh_,
                   torch.clamp, torch.clip}
_CLIP_METHODS = {"relu", "relu_", "clamp", "clip", "clamp_", "clip_"}
_CLIP_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
# ops that pass an input's codes on unchanged
_SHARE_FUNCTIONS = {torch.flatten, torch.reshape, F.max_pool1d, F.max_pool2d, F.max_pool3d,
                    F.dropout, operator.getitem, torch.transpose, torch.permute, torch.chunk,
                    torch.split, torch.squeeze, torch.unsqueeze}
_SHARE_METHODS = {"flatten", "view", "reshape", "contiguous", "transpose", "permute", "chunk",
                  "split", "squeeze", "unsqueeze", "t"}
_SHARE_MODULES = (nn.Flatten, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Dropout)
_EMULATOR_PREFIX = "_fxquant_integer_"


@dataclass
class IntegerSimulation:
    """What :func:`integer_simulation` built.

    Attributes:
        model: the float64 copy (eval mode) with the emulated ops.
        emulated: quantized tensor name -> kernel, for every op computed as the kernel does.
        skipped: quantized tensor name -> why that fused op is evaluated in float64 instead.
    """

    model: nn.Module
    emulated: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def integer_simulation(qmodel: nn.Module, fused: dict[str, str]) -> IntegerSimulation:
    """A float64 copy of ``qmodel`` whose fused ops use ONNX Runtime's integer arithmetic.

    Args:
        qmodel: a prepared (calibrated) model; not modified.
        fused: quantized tensor name (the ONNX name of the tensor an output quantizer
            quantizes) -> the ORT kernel that produces it (one of :data:`ORT_KERNELS`; other
            kernels are listed in ``skipped``).
    """
    report = get_report(qmodel)
    ref = copy.deepcopy(qmodel).double().eval()
    sim = IntegerSimulation(ref)
    paths = {
        quantized_tensor_name(op, role): path
        for path, (op, role) in quantizer_index(report).items() if role != "weight"
    }
    if not isinstance(ref, fx.GraphModule):
        sim.skipped = {t: "model captured in eager mode: no graph to rewrite" for t in fused}
        for path in set(paths.values()):
            _quantize_in_float32(ref.get_submodule(path))
        return sim
    calls: dict[str, list[fx.Node]] = {}
    for n in ref.graph.nodes:
        if n.op == "call_module":
            calls.setdefault(str(n.target), []).append(n)
    for tensor, kernel in sorted(fused.items()):
        reason = _install(qmodel, ref, tensor, kernel, paths, calls)
        if reason is None:
            sim.emulated[tensor] = kernel
        else:
            sim.skipped[tensor] = reason
    ref.graph.lint()
    ref.recompile()
    fed_by_kernel = {
        str(n.target) for n in ref.graph.nodes
        if n.op == "call_module" and isinstance(ref.get_submodule(str(n.target)), FakeQuantize)
        and _behind_emulator(ref, n.args[0])
    }
    for path in set(paths.values()) - fed_by_kernel:
        _quantize_in_float32(ref.get_submodule(path))
    return sim


def _install(qmodel, ref, tensor, kernel, paths, calls) -> str | None:
    """Rewrite the op producing ``tensor``; returns why not (None when done)."""
    if kernel not in ORT_KERNELS:
        return f"{kernel} is not emulated"
    path = paths.get(tensor)
    if path is None or len(calls.get(path, ())) != 1:
        return "no single quantizer call for this tensor"
    out_fq = qmodel.get_submodule(path)
    if not _per_tensor(out_fq) or out_fq.scale_math is not ScaleMath.DIVIDE:
        return "output quantizer is not per-tensor with ScaleMath.DIVIDE"
    node = calls[path][0].args[0]
    while isinstance(node, fx.Node) and _is_clip(ref, node) and len(node.users) == 1:
        node = node.args[0]
    if not isinstance(node, fx.Node) or len(node.users) != 1:
        return "the producing op is not a single-use node"
    if kernel in ("QLinearConv", "QGemm", "MatMulIntegerToFloat"):
        return _install_weighted(qmodel, ref, node, out_fq, kernel == "MatMulIntegerToFloat")
    if kernel in _BINARY:
        return _install_binary(qmodel, ref, node, out_fq, kernel)
    return _install_gap(qmodel, ref, node, out_fq)


# -- graph helpers ------------------------------------------------------------------------------
def _is_clip(root: nn.Module, n: fx.Node) -> bool:
    if n.op == "call_module":
        return isinstance(root.get_submodule(str(n.target)), _CLIP_MODULES)
    if n.op == "call_function":
        return n.target in _CLIP_FUNCTIONS
    return n.op == "call_method" and n.target in _CLIP_METHODS


def _quantizer_behind(qmodel: nn.Module, n: object) -> FakeQuantize | None:
    """The per-tensor quantizer whose codes reach ``n`` unchanged (through reshapes / max
    pooling), or None."""
    while isinstance(n, fx.Node):
        if n.op == "call_module":
            m = qmodel.get_submodule(str(n.target))
            if isinstance(m, FakeQuantize):
                return m if _per_tensor(m) else None
            if not isinstance(m, _SHARE_MODULES):
                return None
        elif n.op == "call_function" and n.target not in _SHARE_FUNCTIONS:
            return None
        elif n.op == "call_method" and n.target not in _SHARE_METHODS:
            return None
        elif n.op not in ("call_module", "call_function", "call_method"):
            return None
        n = n.args[0] if n.args else None
    return None


def _per_tensor(fq: nn.Module) -> bool:
    return isinstance(fq, FakeQuantize) and fq.scale.numel() == 1 and fq.ch_axis is None


def _as_module_call(ref: fx.GraphModule, node: fx.Node, new: nn.Module, args: tuple) -> None:
    name, i = f"{_EMULATOR_PREFIX}0", 0
    while hasattr(ref, name):
        i += 1
        name = f"{_EMULATOR_PREFIX}{i}"
    ref.add_module(name, new)
    node.op, node.target, node.args, node.kwargs = "call_module", name, args, {}


def _scale_zp(fq: FakeQuantize) -> tuple[Tensor, Tensor]:
    return (fq.scale.detach().to(torch.float32).reshape(()).double(),
            fq.zero_point.detach().round().reshape(()).double())


def _behind_emulator(ref: nn.Module, n: object) -> bool:
    """Whether ``n`` is (through clipping) an emulated kernel's integer-grid output."""
    while isinstance(n, fx.Node) and _is_clip(ref, n):
        n = n.args[0]
    if not (isinstance(n, fx.Node) and n.op == "call_module"
            and str(n.target).startswith(_EMULATOR_PREFIX)):
        return False
    return not getattr(ref.get_submodule(str(n.target)), "float_output", False)


def _quantize_in_float32(fq: nn.Module) -> None:
    """Make ``fq`` (in a float64 copy) quantize as ``QuantizeLinear`` does on a float32 tensor:
    the input rounded to float32, divided by the float32 scale in float32; the dequantized
    codes are exact in float64."""
    if not isinstance(fq, FakeQuantize):
        return

    def hook(m: FakeQuantize, inputs: tuple, output: Tensor) -> Tensor:
        x = inputs[0]
        if output is x or not x.is_floating_point():  # FLOAT state: passed through
            return output
        scale = m.scale.detach().to(torch.float32)
        zp = m.zero_point.detach().round().to(torch.float32)
        axis = m.ch_axis if scale.numel() > 1 else None
        if axis is None:
            scale, zp = scale.reshape(()), zp.reshape(())
        codes = quantize_codes(x.to(torch.float32), scale, zp, m.dtype, axis, m.scale_math)
        shape = [1] * x.dim()
        if axis is not None:
            shape[axis] = -1
        return (codes.double() - zp.double().reshape(shape)) * scale.double().reshape(shape)

    fq.register_forward_hook(hook)


# -- QLinearConv / QGemm ------------------------------------------------------------------------
class _IntegerWeighted(nn.Module):
    """conv / linear on the input's codes: int32 accumulator + int32 bias, float32 requant."""

    def __init__(self, layer: nn.Module, codes: Tensor, bias: Tensor | None, in_scale: Tensor,
                 multiplier: Tensor, out_scale: Tensor, float_output: bool = False) -> None:
        super().__init__()
        self.layer = layer
        self.float_output = float_output
        self.register_buffer("codes", codes)
        self.register_buffer("bias_codes", bias)
        self.register_buffer("in_scale", in_scale)
        self.register_buffer("multiplier", multiplier)
        self.register_buffer("out_scale", out_scale)

    def forward(self, x: Tensor) -> Tensor:
        xc = torch.round(x / self.in_scale)  # x = (q - zp) * scale exactly: this is q - zp
        if self.float_output:  # MatMulIntegerToFloat, then the float bias Add
            y = ort_math.requantize(F.linear(xc, self.codes), self.multiplier)
            if self.bias_codes is not None:
                y = (y.float() + self.bias_codes.float()).to(y.dtype)
            return y
        if isinstance(self.layer, nn.Identity):  # a linear layer
            acc = F.linear(xc, self.codes, self.bias_codes)
            mult = self.multiplier
        else:
            acc = qnn.conv_forward(self.layer, xc, self.codes, self.bias_codes)
            mult = self.multiplier.reshape(-1, *([1] * (acc.dim() - 2)))
        return ort_math.requantize(acc, mult) * self.out_scale


def _weight_and_bias(m: nn.Module) -> tuple[Tensor, Tensor | None]:
    if isinstance(m, qnn.ConvBnNd):
        w, b = m.folded_weight_and_bias()
        return w.detach(), b.detach()
    return m.weight.detach(), None if m.bias is None else m.bias.detach()


def _install_weighted(qmodel, ref, node: fx.Node, out_fq: FakeQuantize,
                      float_output: bool = False) -> str | None:
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return "the producing op is not a single-input module call"
    m = qmodel.get_submodule(str(node.target))
    if not isinstance(m, _WEIGHTED) or m.weight_fake_quant is None:
        return f"{type(m).__name__} is not a weight-quantized conv / linear"
    in_fq = _quantizer_behind(qmodel, node.args[0])
    if in_fq is None:
        return "the input does not come straight from a per-tensor quantizer"
    wfq = m.weight_fake_quant
    w, b = _weight_and_bias(m)
    axis = wfq.ch_axis if wfq.scale.numel() > 1 else None
    w_scale = wfq.scale.detach().to(torch.float32)
    w_zp = wfq.zero_point.detach().round()
    if axis not in (None, 0):
        return "the weight is not quantized per output channel"
    codes = quantize_codes(w, w_scale.reshape(-1) if axis is not None else w_scale.reshape(()),
                           w_zp.reshape(-1) if axis is not None else w_zp.reshape(()),
                           wfq.dtype, axis, wfq.scale_math).double()
    zp_view = w_zp.double().reshape(-1, *([1] * (codes.dim() - 1))) if axis is not None \
        else w_zp.double().reshape(())
    codes = codes - zp_view
    s_in, _ = _scale_zp(in_fq)
    channels = w.shape[0]
    s_c = bias_math.channel_scale(w_scale, channels)
    s_out, _ = _scale_zp(out_fq)
    if float_output:  # dequantize scale s_in * s_w in float32; the bias stays float
        if not isinstance(m, nn.Linear):
            return "MatMulIntegerToFloat of a non-linear layer"
        mult = (s_in.float() * s_c).double()
        bias_f = None if b is None else b.to(torch.float32).double()
        emulator = _IntegerWeighted(_geometry(m), codes, bias_f, s_in, mult, s_out, True)
        _as_module_call(ref, node, emulator, (node.args[0],))
        return None
    bias = None
    if b is not None:
        try:
            q, _ = bias_math.quantize_bias(b, s_in.float(), s_c)
        except OverflowError:
            return "int32 bias overflow (the export raises the weight scale there)"
        bias = q.double()
    mult = ort_math.requantize_multiplier(s_in, s_c, s_out)
    emulator = _IntegerWeighted(_geometry(m), codes, bias, s_in, mult.double(), s_out)
    _as_module_call(ref, node, emulator, (node.args[0],))
    return None


def _geometry(m: nn.Module) -> nn.Module:
    """A parameter-free stand-in carrying ``m``'s conv geometry (stride, padding ...)."""
    if isinstance(m, nn.Linear):
        return nn.Identity()
    keep = ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode",
            "_reversed_padding_repeated_twice")
    g = nn.Module()
    for k in keep:
        if hasattr(m, k):
            setattr(g, k, getattr(m, k))
    return g


# -- QLinearAdd ----------------------------------------------------------------------------------
class _IntegerAdd(nn.Module):
    def __init__(self, a: FakeQuantize, b: FakeQuantize, out: FakeQuantize) -> None:
        super().__init__()
        for name, fq in (("a", a), ("b", b), ("out", out)):
            s, z = _scale_zp(fq)
            self.register_buffer(f"{name}_scale", s)
            self.register_buffer(f"{name}_zp", z)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        qa = torch.round(a / self.a_scale) + self.a_zp
        qb = torch.round(b / self.b_scale) + self.b_zp
        v = ort_math.qlinear_add(qa, self.a_scale, self.a_zp, qb, self.b_scale, self.b_zp,
                                 self.out_scale, self.out_zp)
        return (v - self.out_zp) * self.out_scale


# binary ops: kernel -> (functions, method name, emulator); both inputs must be quantized
_BINARY = {
    "QLinearAdd": ((operator.add, torch.add), "add", _IntegerAdd),
}


def _install_binary(qmodel, ref, node: fx.Node, out_fq: FakeQuantize, kernel: str) -> str | None:
    functions, method, emulator = _BINARY[kernel]
    matches = (node.op == "call_function" and node.target in functions) or (
        node.op == "call_method" and node.target == method)
    if not matches or len(node.args) != 2 or node.kwargs:
        return f"the producing op is not a two-tensor {method}"
    a, b = node.args
    fa, fb = _quantizer_behind(qmodel, a), _quantizer_behind(qmodel, b)
    if fa is None or fb is None:
        return f"a {method} input does not come straight from a per-tensor quantizer"
    _as_module_call(ref, node, emulator(fa, fb, out_fq), (a, b))
    return None


# -- QLinearMatMul -------------------------------------------------------------------------------
class _IntegerMatMul(nn.Module):
    def __init__(self, a: FakeQuantize, b: FakeQuantize, out: FakeQuantize) -> None:
        super().__init__()
        for name, fq in (("a", a), ("b", b), ("out", out)):
            self.register_buffer(f"{name}_scale", _scale_zp(fq)[0])
        self.register_buffer("multiplier", ort_math.requantize_multiplier(
            self.a_scale, self.b_scale, self.out_scale).double())

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        acc = torch.round(a / self.a_scale) @ torch.round(b / self.b_scale)
        return ort_math.requantize(acc, self.multiplier) * self.out_scale


_BINARY["QLinearMatMul"] = ((operator.matmul, torch.matmul), "matmul", _IntegerMatMul)


# -- QLinearGlobalAveragePool -------------------------------------------------------------------
class _IntegerGlobalAveragePool(nn.Module):
    def __init__(self, inp: FakeQuantize, out: FakeQuantize) -> None:
        super().__init__()
        s, z = _scale_zp(inp)
        self.register_buffer("in_scale", s)
        self.register_buffer("in_zp", z)
        self.register_buffer("out_scale", _scale_zp(out)[0])

    def forward(self, x: Tensor) -> Tensor:
        codes = torch.round(x / self.in_scale) + self.in_zp
        dims = tuple(range(2, x.dim()))
        count = 1
        for d in dims:
            count *= x.shape[d]
        total = codes.sum(dims, keepdim=True)
        v = ort_math.global_average_pool(total, count, self.in_zp, self.in_scale, self.out_scale)
        return v * self.out_scale


def _global_pool(root: nn.Module, n: fx.Node) -> bool:
    if n.op == "call_module":
        m = root.get_submodule(str(n.target))
        size = getattr(m, "output_size", None)
        return isinstance(m, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool3d) \
            and all(s == 1 for s in (size if isinstance(size, tuple) else (size,)))
    if n.op == "call_function" and n.target in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                                                F.adaptive_avg_pool3d):
        size = n.args[1] if len(n.args) > 1 else n.kwargs.get("output_size")
        return all(s == 1 for s in (size if isinstance(size, tuple | list) else (size,)))
    return False


def _install_gap(qmodel, ref, node: fx.Node, out_fq: FakeQuantize) -> str | None:
    if not _global_pool(qmodel, node):
        return "the producing op is not a global average pool"
    in_fq = _quantizer_behind(qmodel, node.args[0])
    if in_fq is None:
        return "the pool's input does not come straight from a per-tensor quantizer"
    _as_module_call(ref, node, _IntegerGlobalAveragePool(in_fq, out_fq), (node.args[0],))
    return None
