"""Ops computed with a runtime's integer arithmetic: the modules of the runtime simulation.

Each kernel stands in for one op of a prepared model (:mod:`fxquant.graph.simulate` puts it
there) and takes the op's own arguments.  It reads the grids of the quantizers around the op
(``FakeQuantize.qparams()``, at every call, so it follows what the model's quantizers apply) and
computes what the runtime's fused kernel computes, returning the dequantized output (on the
output quantizer's grid, which re-quantizes it exactly) or, for a float-output kernel, the float
value the runtime produces.

A kernel falls back to the op itself (the float simulation) while any of its quantizers is not
*settled* -- calibrating, off, or still observing in QAT -- or when the arguments are outside what
the runtime fuses (a clip the output grid does not imply, an int32 bias overflow, ...):
:meth:`RuntimeKernel.why_not` says why.

Arithmetic of ONNX Runtime: :mod:`fxquant.runtime_math.ort`; exact accumulation:
:mod:`fxquant.runtime_math.exact`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .. import nn as qnn
from ..fake_quant import FakeQuantize, FakeQuantState, LearnableFakeQuantize
from ..numerics import QParams, native
from ..numerics.affine import unclamped_codes
from ..numerics.bias import channel_scale, quantize_bias
from . import ort, tflite
from .exact import exact_conv, exact_linear, exact_matmul
from .grids import Grid, grid_of, mark_on_grid, qparams_of

__all__ = [
    "RuntimeKernel",
    "WeightedKernel",
    "BinaryKernel",
    "GlobalAvgPoolKernel",
    "AvgPoolKernel",
    "LookupKernel",
    "MeanKernel",
    "FixedPointMeanKernel",
    "FloatFunctionKernel",
    "settled",
    "FLOAT_FUNCTIONS",
    "LOOKUP_FUNCTIONS",
]

_F32 = torch.float32


def settled(fq: FakeQuantize) -> bool:
    """Whether ``fq`` fake-quantizes with fixed qparams in this forward (VALIDATION, or QAT with
    a frozen or learned range), i.e. whether a runtime kernel can be built around it."""
    if not bool(fq.calibrated):
        return False
    state = fq.state
    if state is FakeQuantState.VALIDATION:
        return True
    if state is FakeQuantState.QAT:
        return fq.fixed_in_qat or isinstance(fq, LearnableFakeQuantize)
    return False


class RuntimeKernel(nn.Module):
    """Base class: one op with a runtime's arithmetic, falling back to the op itself.

    Args:
        kernel: the runtime's kernel name (``QLinearConv`` ...).
        fallback: the op as the float simulation computes it, called with the same arguments.
        quantizers: every quantizer the kernel reads (inputs, weight, output).
    """

    def __init__(self, kernel: str, fallback: Callable[..., Any],
                 quantizers: tuple[FakeQuantize, ...]) -> None:
        super().__init__()
        self.kernel = kernel
        self.fallback = fallback
        self.quantizers = nn.ModuleList(quantizers)

    def current_quantizers(self) -> tuple[FakeQuantize, ...]:
        """The quantizers this call reads."""
        return tuple(self.quantizers)  # type: ignore[arg-type]

    def why_not(self, *args: Any, **kwargs: Any) -> str | None:
        """Why this call runs the fallback (None: it runs the runtime arithmetic)."""
        for fq in self.current_quantizers():
            if not isinstance(fq, FakeQuantize):
                return "a quantizer was removed"
            if not settled(fq):
                return f"quantizer {fq.name or '?'!r} is not settled ({fq.state.name})"
        return self.check(*args, **kwargs)

    def check(self, *args: Any, **kwargs: Any) -> str | None:
        """Kernel-specific conditions on the arguments (None: fine)."""
        return None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.why_not(*args, **kwargs) is not None:
            return self.fallback(*args, **kwargs)
        return self.compute(*args, **kwargs)

    def compute(self, *args: Any, **kwargs: Any) -> Tensor:
        """The runtime's arithmetic for this call (each kernel class defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute")

    def extra_repr(self) -> str:
        return self.kernel


def _clip_implied(clip: tuple[float | None, float | None] | None, out: Grid) -> bool:
    """Whether the output grid's saturation already does ``clip`` (ORT then drops the clip)."""
    if clip is None:
        return True
    lo, hi = clip
    low = float((out.qmin - out.zp) * out.scale)
    high = float((out.qmax - out.zp) * out.scale)
    return (lo is None or lo <= low) and (hi is None or hi >= high)


# -- QLinearConv / QGemm / MatMulIntegerToFloat --------------------------------------------------
def _weight_and_bias(layer: nn.Module) -> tuple[Tensor, Tensor | None]:
    if isinstance(layer, qnn.ConvBnNd):
        w, b = layer.folded_weight_and_bias()
        return w.detach(), b.detach()
    return layer.weight.detach(), None if layer.bias is None else layer.bias.detach()


class WeightedKernel(RuntimeKernel):
    """A weight-quantized conv / linear: ``QLinearConv`` / ``QGemm`` (exact int32 accumulation
    over the codes, int32 bias, float32 requantization) or, with ``float_output``,
    ``MatMulIntegerToFloat`` (``float32(acc) * (sx * sw)`` then the float bias add).

    ``layer``: the conv / linear module (called with the input only), or ``None`` for
    ``F.linear(x, weight, bias)`` -- or, with ``conv``, ``F.conv1d/2d/3d(x, weight, bias, stride,
    padding, dilation, groups)`` -- whose weight argument comes from ``weight_fq``.
    """

    def __init__(self, kernel: str, layer: nn.Module | None, in_fq: FakeQuantize,
                 out_fq: FakeQuantize | None, clip: tuple[float | None, float | None] | None,
                 float_output: bool = False, weight_fq: FakeQuantize | None = None,
                 conv: Callable[..., Tensor] | None = None) -> None:
        fqs = (in_fq,) if out_fq is None else (in_fq, out_fq)
        function = conv if conv is not None else torch.nn.functional.linear
        super().__init__(kernel, layer if layer is not None else function, fqs)
        self.layer = layer
        self.weight_fq = weight_fq
        self.conv_function = conv if layer is None else None
        self.in_fq, self.out_fq = in_fq, out_fq
        self.clip = clip
        self.float_output = float_output
        self.is_conv = conv is not None or (layer is not None and not isinstance(layer, nn.Linear))

    @property
    def wfq(self) -> FakeQuantize:
        """The weight quantizer (a module's is read at every call: it may be replaced)."""
        return self.weight_fq if self.layer is None else self.layer.weight_fake_quant

    def current_quantizers(self) -> tuple[FakeQuantize, ...]:
        return (*self.quantizers, self.wfq)  # type: ignore[return-value]

    def _operands(self, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(input, fake-quantized weight or None, bias)`` of this call."""
        if self.layer is not None:
            return args[0], None, None
        a = dict(zip(_CONV_ARGS, args, strict=False)) | dict(kwargs)
        return a["input"], a["weight"], a.get("bias")

    def _groups(self, args: tuple, kwargs: dict) -> int:
        if self.layer is not None:
            return int(getattr(self.layer, "groups", 1))
        a = dict(zip(_CONV_ARGS, args, strict=False)) | dict(kwargs)
        return int(a.get("groups", 1))

    def _conv(self, args: tuple, kwargs: dict) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
        """``conv(x, w, bias)`` with this call's geometry."""
        layer, fn = self.layer, self.conv_function
        if fn is None:
            return lambda xi, wi, bi: qnn.conv_forward(layer, xi, wi, bi)
        geometry = dict(zip(_CONV_ARGS, args, strict=False)) | dict(kwargs)
        for k in ("input", "weight", "bias"):
            geometry.pop(k, None)
        return lambda xi, wi, bi: fn(xi, wi, bi, **geometry)

    def check(self, *args: Any, **kwargs: Any) -> str | None:
        if isinstance(self.layer, qnn.ConvBnNd) and self.layer.bn.training:
            return "BatchNorm in training mode"
        if self.layer is not None and (len(args) != 1 or kwargs):
            return "not a one-input call"
        qp = qparams_of(self.wfq)
        if qp.axis not in (None, 0):
            return "weight not quantized per output channel"
        if self.fixed_point:  # LiteRT 16x8: a fused relu / relu6 clamps the output codes
            if qparams_of(self.in_fq).dtype.bits <= 8:
                return "an 8-bit input (the 16x8 kernel takes 16-bit activations)"
            return None
        if self.out_fq is not None and not _clip_implied(self.clip, grid_of(self.out_fq)):
            return "the clip between the op and its output quantizer is not implied by the grid"
        return None

    @property
    def fixed_point(self) -> bool:
        """LiteRT's 16x8 kernels: int64 accumulator, fixed-point requantization."""
        return self.kernel.endswith("_16x8")

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        if self.why_not(*args, **kwargs) is not None:
            return self.fallback(*args, **kwargs)
        try:
            return self.compute(*args, **kwargs)
        except OverflowError:  # int32 bias overflow: the exporter raises the weight scale
            return self.fallback(*args, **kwargs)

    def _weight_codes(self, wq: Tensor | None) -> tuple[Tensor, Tensor | None, QParams]:
        """Centred weight codes, the float bias, the weight grid."""
        qp: QParams = qparams_of(self.wfq)
        axis = qp.axis
        if self.layer is None:  # F.linear / F.convNd: the argument is on the weight grid
            assert wq is not None
            s = qp.scale.to(_F32)
            view = (-1, *([1] * (wq.dim() - 1))) if axis is not None else ()
            return torch.round(wq.to(_F32) / s.reshape(view)), None, qp
        w, b = _weight_and_bias(self.layer)
        view = (-1, *([1] * (w.dim() - 1))) if axis is not None else ()
        zp = qp.zero_point.to(_F32).reshape(view)
        # q - zp = clamp(round(w / s), qmin - zp, qmax - zp): QuantizeLinear's codes, centred
        codes = unclamped_codes(w.to(_F32), qp.scale, torch.zeros_like(qp.scale), axis,
                                qp.scale_math)
        return torch.clamp(codes, qp.dtype.qmin - zp, qp.dtype.qmax - zp, out=codes), b, qp

    def compute(self, *args: Any, **kwargs: Any) -> Tensor:
        x, wq, bias_arg = self._operands(args, kwargs)
        grid_in = grid_of(self.in_fq)
        codes, b, wqp = self._weight_codes(wq)
        if self.layer is None and isinstance(bias_arg, Tensor):
            b = bias_arg.detach()
        s_c = channel_scale(wqp.scale, codes.shape[0])
        xc = grid_in.centred(x)
        if self.float_output:  # MatMulIntegerToFloat; the bias is a float Add after it
            acc = exact_linear(xc, codes, None, grid_in.bound)
            y = acc * (grid_in.scale * s_c)
            return y if b is None else y + b.to(_F32)
        bias = None
        if b is not None and self.fixed_point:  # int64 bias
            bias = torch.round(b.detach().double() / (grid_in.scale * s_c).double())
        elif b is not None:
            q, _ = quantize_bias(b, grid_in.scale, s_c)  # OverflowError: see forward
            bias = q.double()
        assert self.out_fq is not None
        out = grid_of(self.out_fq)
        if self.fixed_point:
            return out.value(self._fixed_point(x, xc, codes, bias, grid_in, s_c, out,
                                               self._conv(args, kwargs)))
        mult = ort.requantize_multiplier(grid_in.scale, s_c, out.scale)
        if self.is_conv:
            acc = exact_conv(self._conv(args, kwargs), xc, codes, bias, grid_in.bound,
                             self._groups(args, kwargs))
        else:
            acc = exact_linear(xc, codes, bias, grid_in.bound)
        # round(acc * m) * s_out: the output quantizer after the kernel saturates it (the value
        # it sees is on its grid, so it reproduces q - zp exactly)
        bounds = (out.qmin - out.zp, out.qmax - out.zp)
        y = ort.requantize_dequantize(acc, mult, out.scale, channel_axis_last=not self.is_conv,
                                      bounds=bounds)
        return mark_on_grid(y, self.out_fq)


    def _fixed_point(self, x: Tensor, xc: Tensor, codes: Tensor, bias: Tensor | None,
                     grid_in: Grid, s_c: Tensor, out: Grid,
                     conv: Callable[[Tensor, Tensor, Tensor | None], Tensor]) -> Tensor:
        """LiteRT's 16x8 conv / fully connected: exact accumulation, int64 bias, per-channel
        fixed-point requantization (:func:`fxquant.runtime_math.tflite.requantize`)."""
        bound = grid_in.bound
        if self.is_conv:
            acc = exact_conv(conv, xc, codes, bias, bound, int(getattr(self.layer, "groups", 1)))
            shape = (-1, *([1] * (acc.dim() - 2)))
        else:
            acc = exact_linear(xc, codes, bias, bound)
            shape = (-1,)
        q, shift = tflite.channel_multipliers(float(grid_in.scale), s_c, float(out.scale))
        lo, hi = out.qmin, out.qmax
        if self.clip is not None:
            c_lo, c_hi = self.clip
            if c_lo is not None:
                lo = max(lo, out.zp + round(c_lo / float(out.scale)))
            if c_hi is not None:
                hi = min(hi, out.zp + round(c_hi / float(out.scale)))
        # LiteRT's 16x8 conv kernels scale with a 16-bit multiplier, its fully connected one
        # with the 32-bit multiplier in one rounding step
        codes_out = tflite.requantize(acc.to(torch.int64), q.reshape(shape),
                                      shift.reshape(shape), out.zp, lo, hi,
                                      mode="wide" if self.is_conv else "single")
        return codes_out.to(_F32)


_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
"""Positional arguments of ``F.convNd`` (``F.linear``: the first three)."""


# -- QLinearAdd / QLinearMul / QLinearMatMul -----------------------------------------------------
class BinaryKernel(RuntimeKernel):
    """``a (op) b`` of two quantized tensors: ``QLinearAdd``, ``QLinearMul`` or
    ``QLinearMatMul``."""

    def __init__(self, kernel: str, fallback: Callable[..., Any], a_fq: FakeQuantize,
                 b_fq: FakeQuantize, out_fq: FakeQuantize,
                 clip: tuple[float | None, float | None] | None) -> None:
        super().__init__(kernel, fallback, (a_fq, b_fq, out_fq))
        self.a_fq, self.b_fq, self.out_fq = a_fq, b_fq, out_fq
        self.clip = clip

    def check(self, a: Any, b: Any, *rest: Any, **kwargs: Any) -> str | None:
        if rest or kwargs or not isinstance(a, Tensor) or not isinstance(b, Tensor):
            return "not a plain two-tensor call"
        if not _clip_implied(self.clip, grid_of(self.out_fq)):
            return "the clip between the op and its output quantizer is not implied by the grid"
        return None

    def compute(self, a: Tensor, b: Tensor) -> Tensor:
        ga, gb, out = grid_of(self.a_fq), grid_of(self.b_fq), grid_of(self.out_fq)
        if self.kernel == "BATCH_MATMUL" and gb.zp != 0:
            # LiteRT: XNNPACK takes a quantized BATCH_MATMUL only when its right operand has
            # zero point 0 (like GEMM weights); else the builtin kernel requantizes in fixed point
            acc = exact_matmul(ga.centred(a), gb.centred(b), ga.bound, gb.bound)
            codes = tflite.requantize_product(acc.to(torch.int64), float(ga.scale),
                                              float(gb.scale), float(out.scale), out.zp,
                                              out.qmin, out.qmax)
            return out.value(codes.to(_F32))
        if self.kernel in ("QLinearMatMul", "BATCH_MATMUL"):
            acc = exact_matmul(ga.centred(a), gb.centred(b), ga.bound, gb.bound)
            mult = ort.requantize_multiplier(ga.scale, gb.scale, out.scale)
            return mark_on_grid(ort.requantize_dequantize(acc, mult, out.scale,
                                                      bounds=(out.qmin - out.zp,
                                                              out.qmax - out.zp)), self.out_fq)
        if self.kernel == "ADD":  # LiteRT (XNNPACK delegate)
            codes = tflite.xnnpack_add(ga.codes(a).long(), float(ga.scale), ga.zp,
                                       gb.codes(b).long(), float(gb.scale), gb.zp,
                                       float(out.scale), out.zp, out.qmin, out.qmax)
            return out.value(codes.to(_F32))
        if self.kernel == "QLinearAdd":
            fast = ort.qlinear_add_dequantized(a, ga.scale, ga.zp, b, gb.scale, gb.zp,
                                               out.scale, out.zp, out.qmin, out.qmax)
            if fast is not None:  # one native pass with true fmas
                return mark_on_grid(fast, self.out_fq)
            bounds = (max(abs(g.qmin), abs(g.qmax)) for g in (ga, gb))
            codes = ort.qlinear_add(
                ga.codes(a), ga.scale, ga.zp, gb.codes(b), gb.scale, gb.zp, out.scale, out.zp,
                out.qmin, out.qmax, *bounds)
        else:
            codes = ort.qlinear_mul(ga.codes(a), ga.scale, ga.zp, gb.codes(b), gb.scale, gb.zp,
                                    out.scale, out.zp, out.qmin, out.qmax)
        return mark_on_grid(out.value(codes), self.out_fq)


# -- pooling -------------------------------------------------------------------------------------
class GlobalAvgPoolKernel(RuntimeKernel):
    """``QLinearGlobalAveragePool``: exact code sum, float32 scale, rounding before the zero
    point."""

    def __init__(self, fallback: Callable[..., Any], in_fq: FakeQuantize,
                 out_fq: FakeQuantize) -> None:
        super().__init__("QLinearGlobalAveragePool", fallback, (in_fq, out_fq))
        self.in_fq, self.out_fq = in_fq, out_fq

    def check(self, x: Any, *rest: Any, **kwargs: Any) -> str | None:
        if not isinstance(x, Tensor) or x.dim() < 3:
            return "input is not batched NC + spatial"
        return None

    def compute(self, x: Tensor, *rest: Any, **kwargs: Any) -> Tensor:
        g, out = grid_of(self.in_fq), grid_of(self.out_fq)
        dims = tuple(range(2, x.dim()))
        count = 1
        for d in dims:
            count *= x.shape[d]
        total = g.codes(x).sum(dims, keepdim=True)  # exact: count * 255 < 2^24
        return out.value(ort.global_average_pool(total, count, g.scale, g.zp, out.scale,
                                                 out.zp, out.qmin, out.qmax))


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (tuple, list)):
        return tuple(int(i) for i in v) if len(v) == n else tuple(int(v[0]) for _ in range(n))
    return tuple(int(v) for _ in range(n))


_AVG_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                  "divisor_override")


class AvgPoolKernel(RuntimeKernel):
    """``QLinearAveragePool`` of ``avg_pool1d/2d/3d`` (function or module)."""

    def __init__(self, fallback: Callable[..., Any], in_fq: FakeQuantize,
                 out_fq: FakeQuantize, spatial: int) -> None:
        super().__init__("QLinearAveragePool", fallback, (in_fq, out_fq))
        self.in_fq, self.out_fq = in_fq, out_fq
        self.spatial = spatial

    def _args(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if isinstance(self.fallback, nn.Module):
            m = self.fallback
            return {"input": args[0], "kernel_size": m.kernel_size, "stride": m.stride,
                    "padding": m.padding, "ceil_mode": m.ceil_mode,
                    "count_include_pad": m.count_include_pad,
                    "divisor_override": getattr(m, "divisor_override", None)}
        a = dict(zip(_AVG_POOL_ARGS, args, strict=False)) | dict(kwargs)
        a.setdefault("stride", None)
        a.setdefault("padding", 0)
        a.setdefault("ceil_mode", False)
        a.setdefault("count_include_pad", True)
        a.setdefault("divisor_override", None)
        return a

    def check(self, *args: Any, **kwargs: Any) -> str | None:
        a = self._args(*args, **kwargs)
        if a["ceil_mode"] or a["divisor_override"] is not None:
            return "ceil_mode / divisor_override"
        x = a["input"]
        if not isinstance(x, Tensor) or x.dim() != self.spatial + 2:
            return "input is not batched NC + spatial"
        return None

    def compute(self, *args: Any, **kwargs: Any) -> Tensor:
        a = self._args(*args, **kwargs)
        n = self.spatial
        k = _tuple(a["kernel_size"], n)
        s = k if a["stride"] in (None, [], ()) else _tuple(a["stride"], n)
        p = _tuple(a["padding"], n)
        out = grid_of(self.out_fq)
        codes = ort.average_pool(a["input"], k, s, p, bool(a["count_include_pad"]), out.scale,
                                 out.zp, out.qmin, out.qmax)
        return out.value(codes)


# -- lookup-table kernels ------------------------------------------------------------------------
class LookupKernel(RuntimeKernel):
    """An elementwise function the runtime runs as a 256-entry lookup table built with its own
    float32 implementation (``QLinearSigmoid``: MLAS's logistic approximation)."""

    def __init__(self, kernel: str, fallback: Callable[..., Any], fn: Callable[[Tensor], Tensor],
                 in_fq: FakeQuantize, out_fq: FakeQuantize) -> None:
        super().__init__(kernel, fallback, (in_fq, out_fq))
        self.fn = fn
        self.in_fq, self.out_fq = in_fq, out_fq

    def check(self, x: Any, *rest: Any, **kwargs: Any) -> str | None:
        if not isinstance(x, Tensor) or rest or kwargs:
            return "not a plain one-tensor call"
        if qparams_of(self.in_fq).dtype.bits > 8:
            return "input wider than 8 bits"
        return None

    def compute(self, x: Tensor) -> Tensor:
        g, out = grid_of(self.in_fq), grid_of(self.out_fq)
        table = ort.lookup_table(self.fn, g.scale, g.zp, g.qmin, g.qmax, out.scale, out.zp,
                                 out.qmin, out.qmax)
        index = (g.codes(x) - g.qmin).long()
        return out.value(table[index])


class MeanKernel(RuntimeKernel):
    """ORT's float ``ReduceMean`` over the trailing dimensions of a quantized tensor (Eigen's
    summation order; see :func:`fxquant.runtime_math.ort.reduce_mean_trailing`)."""

    def __init__(self, fallback: Callable[..., Any], in_fq: FakeQuantize) -> None:
        super().__init__("ReduceMean", fallback, (in_fq,))

    @staticmethod
    def _args(*args: Any, **kwargs: Any) -> dict[str, Any]:
        a = dict(zip(("input", "dim", "keepdim"), args, strict=False)) | dict(kwargs)
        a.setdefault("keepdim", False)
        return a

    def check(self, *args: Any, **kwargs: Any) -> str | None:
        a = self._args(*args, **kwargs)
        x, dim = a.get("input"), a.get("dim")
        if not isinstance(x, Tensor) or a.get("dtype") is not None or dim is None:
            return "not a mean over given dimensions"
        dims = sorted(d % x.dim() for d in (dim if isinstance(dim, (tuple, list)) else (dim,)))
        if dims != list(range(x.dim() - len(dims), x.dim())) or not x.is_contiguous():
            return "not a mean over the trailing dimensions of a contiguous tensor"
        return None

    def compute(self, *args: Any, **kwargs: Any) -> Tensor:
        a = self._args(*args, **kwargs)
        x, dim = a["input"], a["dim"]
        k = len(dim) if isinstance(dim, (tuple, list)) else 1
        lead = tuple(x.shape[: x.dim() - k])
        n = 1
        for s in x.shape[x.dim() - k:]:
            n *= s
        y = ort.reduce_mean_trailing(x, n).reshape(lead)
        return y.reshape(*lead, *([1] * k)) if a["keepdim"] else y


class FixedPointMeanKernel(RuntimeKernel):
    """LiteRT's 16-bit MEAN (``x.mean(dims)`` or global average pooling): the exact sum of
    ``q - zp`` requantized by :func:`fxquant.runtime_math.tflite.mean` (TFLite's builtin
    kernel; XNNPACK takes no 16-bit tensors).

    ``dims``: ``(dims, keepdim)`` of a mean; ``None``: global pooling over the spatial dims.
    """

    NAME = "MEAN_16x8"

    def __init__(self, fallback: Callable[..., Any], in_fq: FakeQuantize, out_fq: FakeQuantize,
                 dims: tuple[tuple[int, ...], bool] | None) -> None:
        super().__init__(self.NAME, fallback, (in_fq, out_fq))
        self.in_fq, self.out_fq = in_fq, out_fq
        self.dims = dims

    def check(self, x: Any, *rest: Any, **kwargs: Any) -> str | None:
        if not isinstance(x, Tensor) or (self.dims is None and x.dim() < 3):
            return "input is not a batched tensor"
        if qparams_of(self.in_fq).dtype.bits <= 8:
            return "an 8-bit input (the 16-bit kernel takes 16-bit activations)"
        return None

    def compute(self, x: Tensor, *rest: Any, **kwargs: Any) -> Tensor:
        g, out = grid_of(self.in_fq), grid_of(self.out_fq)
        if self.dims is None:
            dims, keep = tuple(range(2, x.dim())), True
        else:
            dims, keep = tuple(d % x.dim() for d in self.dims[0]), self.dims[1]
        count = 1
        for d in dims:
            count *= x.shape[d]
        total = g.centred(x).to(torch.int64).sum(dims, keepdim=keep)
        codes = tflite.mean(total, count, float(g.scale), float(out.scale), out.zp, out.qmin,
                            out.qmax)
        return out.value(codes.to(_F32))


class FloatFunctionKernel(RuntimeKernel):
    """An elementwise float op the runtime computes with a float32 function of its own (ORT's
    Sigmoid: MLAS's logistic approximation), on a quantized input.

    The input takes at most ``2^bits`` values (its grid's), so the function is evaluated once per
    grid value and looked up -- the same float32 results at the cost of a gather (the input is
    checked to lie exactly on the grid; otherwise the function runs on every element)."""

    _TABLE_LIMIT = 2**16

    def __init__(self, kernel: str, fallback: Callable[..., Any], fn: Callable[[Tensor], Tensor],
                 in_fq: FakeQuantize) -> None:
        super().__init__(kernel, fallback, (in_fq,))
        self.fn = fn
        self.in_fq = in_fq

    def check(self, x: Any, *rest: Any, **kwargs: Any) -> str | None:
        if not isinstance(x, Tensor) or rest or any(v for v in kwargs.values()):
            return "not a plain one-tensor call"
        return None

    def compute(self, x: Tensor, *rest: Any, **kwargs: Any) -> Tensor:
        g = grid_of(self.in_fq)
        if g.qmax - g.qmin >= self._TABLE_LIMIT or x.dtype != _F32 or x.numel() < 4 * (
                g.qmax - g.qmin + 1):
            return self.fn(x)
        values = torch.arange(g.qmin, g.qmax + 1, dtype=_F32).sub_(g.zp).mul_(g.scale)
        table = self.fn(values)
        looked_up = native.grid_lookup(x, g.scale, g.zp, g.qmin, g.qmax, table)
        if looked_up is not None:  # one native pass (None: not applicable, or off the grid)
            return looked_up
        index = g.codes(x).sub_(g.qmin).clamp_(0, g.qmax - g.qmin).long()
        if not torch.equal(values[index], x):  # not on the grid: compute every element
            return self.fn(x)
        return table[index]


def _silu(x: Tensor) -> Tensor:
    """SiLU as exported (``Mul(x, Sigmoid(x))``) and run by ORT in float32."""
    return x.to(_F32) * ort.logistic(x)


FLOAT_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {"Sigmoid": ort.logistic,
                                                           "Sigmoid*x": _silu}
"""Float kernels -> the runtime's float32 implementation."""

LOOKUP_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {"QLinearSigmoid": ort.logistic}
"""Lookup-table kernels -> the runtime's float32 implementation of their function."""
