"""Ops computed with a runtime's integer arithmetic: the modules of the runtime simulation.

Each kernel stands in for one op of a prepared model (:mod:`fxquant.graph.simulate` puts it
there) and takes the op's own arguments.  It reads the grids of the quantizers around the op
(``FakeQuantize.qparams()``, at every call, so it follows what the model's quantizers apply) and
computes what the runtime's fused kernel computes, returning the dequantized output (on the
output quantizer's grid, which re-quantizes it exactly) or, for a float-output kernel, the float
value the runtime produces.

Constants a kernel derives from its weight and grids (weight codes, int32 bias, multipliers) are
kept from call to call while their sources hold (:meth:`RuntimeKernel.held`; the grids come as
the same objects while a quantizer's grid holds, :func:`fxquant.runtime_math.grids.grid_of`, and
tensors are compared by content, :class:`fxquant.numerics.held.Snapshot`).

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

from ..fake_quant import FakeQuantize, FakeQuantState, LearnableFakeQuantize
from ..numerics import native
from ..numerics.held import Snapshot
from . import ort, tflite
from .exact import exact_matmul
from .grids import Grid, grid_of, mark_on_grid, qparams_of

__all__ = [
    "RuntimeKernel",
    "clip_implied",
    "BinaryKernel",
    "GlobalAvgPoolKernel",
    "AvgPoolKernel",
    "LookupKernel",
    "MeanKernel",
    "FixedPointMeanKernel",
    "FloatFunctionKernel",
    "BatchNormKernel",
    "settled",
    "FLOAT_FUNCTIONS",
    "LOOKUP_FUNCTIONS",
]

_F32 = torch.float32


def settled(fq: FakeQuantize) -> bool:
    """Whether ``fq`` fake-quantizes with fixed qparams in this forward (VALIDATION, or QAT with
    a frozen or learned range), i.e. whether a runtime kernel can be built around it."""
    if not fq._is_calibrated():
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
        # read at every call: a plain tuple (the model's quantizers are not replaced under a
        # built kernel -- the runtime module is rebuilt when one is)
        self.__dict__["_quantizer_tuple"] = tuple(quantizers)

    def current_quantizers(self) -> tuple[FakeQuantize, ...]:
        """The quantizers this call reads."""
        return self.__dict__["_quantizer_tuple"]

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

    def kept_sources(self) -> list[tuple[Any, tuple[Tensor | None, ...], Snapshot]]:
        """Constants this kernel keeps across passes with their sources now and their snapshot
        (:func:`fxquant.runtime_math.grids.check_kept` checks them once per pass); grids are
        checked through the quantizers."""
        return []

    def held(self, tag: str, keys: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """The constant ``build()`` made from ``keys`` -- objects that stay the same while what
        they stand for holds (:class:`Grid` / :class:`QParams` from :func:`grid_of` /
        :func:`qparams_of`, plain values) -- kept until one of them changes (compared with
        ``is``)."""
        store = self.__dict__.setdefault("_held_constants", {})
        entry = store.get(tag)
        if entry is not None and len(entry[0]) == len(keys) and all(
                a is b for a, b in zip(entry[0], keys, strict=True)):
            return entry[1]
        value = build()
        store[tag] = (keys, value)
        return value

    def extra_repr(self) -> str:
        return self.kernel


def clip_implied(clip: tuple[float | None, float | None] | None, out: Grid) -> bool:
    """Whether the output grid's saturation already does ``clip`` (ORT then drops the clip).

    ``clip``: ``(low, high)`` bounds (None: unbounded) of a clamp / relu between an op and its
    output quantizer, or None for no clip."""
    if clip is None:
        return True
    lo, hi = clip
    low, high = out.extent
    return (lo is None or lo <= low) and (hi is None or hi >= high)


# -- QLinearAdd / QLinearMul / QLinearMatMul -----------------------------------------------------
class BinaryKernel(RuntimeKernel):
    """``a (op) b`` of two quantized tensors: ``QLinearAdd``, ``QLinearMul`` or
    ``QLinearMatMul``; with no output quantizer, ``MatMulIntegerToFloat`` (ONNX Runtime's
    ``float32(exact int32 a @ b) * (sa * sb)``, e.g. attention scores before a float softmax)."""

    def __init__(self, kernel: str, fallback: Callable[..., Any], a_fq: FakeQuantize,
                 b_fq: FakeQuantize, out_fq: FakeQuantize | None,
                 clip: tuple[float | None, float | None] | None) -> None:
        super().__init__(kernel, fallback, (a_fq, b_fq) if out_fq is None else
                         (a_fq, b_fq, out_fq))
        self.a_fq, self.b_fq, self.out_fq = a_fq, b_fq, out_fq
        self.clip = clip

    def check(self, a: Any, b: Any, *rest: Any, **kwargs: Any) -> str | None:
        if rest or kwargs or not isinstance(a, Tensor) or not isinstance(b, Tensor):
            return "not a plain two-tensor call"
        if self.out_fq is not None and not clip_implied(self.clip, grid_of(self.out_fq)):
            return "the clip between the op and its output quantizer is not implied by the grid"
        return None

    def compute(self, a: Tensor, b: Tensor) -> Tensor:
        ga, gb = grid_of(self.a_fq), grid_of(self.b_fq)
        if self.out_fq is None:  # MatMulIntegerToFloat
            acc = exact_matmul(ga.centred(a), gb.centred(b), ga.bound, gb.bound)
            mult = self.held("float_multiplier", (ga, gb), lambda: ga.scale * gb.scale)
            return acc.mul_(mult)
        out = grid_of(self.out_fq)
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
            mult = self.held("multiplier", (ga, gb, out), lambda: ort.requantize_multiplier(
                ga.scale, gb.scale, out.scale))
            return mark_on_grid(ort.requantize_dequantize(acc, mult, out.scale,
                                                      bounds=(out.qmin - out.zp,
                                                              out.qmax - out.zp)), self.out_fq)
        if self.kernel == "ADD":  # LiteRT (XNNPACK delegate)
            codes = tflite.xnnpack_add(ga.codes(a).long(), float(ga.scale), ga.zp,
                                       gb.codes(b).long(), float(gb.scale), gb.zp,
                                       float(out.scale), out.zp, out.qmin, out.qmax)
            return out.value(codes.to(_F32))
        if self.kernel == "QLinearAdd":
            params = self.held("qlinear_add", (ga, gb, out), lambda: ort.qlinear_add_params(
                ga.scale, ga.zp, gb.scale, gb.zp, out.scale, out.zp, out.qmin, out.qmax))
            fast = ort.qlinear_add_dequantized(a, ga.scale, ga.zp, b, gb.scale, gb.zp,
                                               out.scale, out.zp, out.qmin, out.qmax, params)
            if fast is not None:  # one native pass with true fmas
                return mark_on_grid(fast, self.out_fq)
            bounds = (max(abs(g.qmin), abs(g.qmax)) for g in (ga, gb))
            codes = ort.qlinear_add(
                ga.codes(a), ga.scale, ga.zp, gb.codes(b), gb.scale, gb.zp, out.scale, out.zp,
                out.qmin, out.qmax, *bounds)
        else:  # QLinearMul: ORT's float32 steps on the centred codes, in place
            ratio = self.held("ratio", (ga, gb, out), lambda: ort.requantize_multiplier(
                ga.scale, gb.scale, out.scale))
            return mark_on_grid(ort.qlinear_mul_dequantized(
                ga.centred(a), gb.centred(b), ratio, out.scale, out.zp, out.qmin, out.qmax),
                self.out_fq)
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
        table, values = self.held("table", (g, out, self.fn), lambda: self._tables(g, out))
        looked_up = native.grid_lookup(x, g.scale, g.zp, g.qmin, g.qmax, values)
        if looked_up is not None:  # one native pass (None: not applicable, or off the grid)
            return looked_up
        index = (g.codes(x) - g.qmin).long()
        return out.value(table[index])

    def _tables(self, g: Grid, out: Grid) -> tuple[Tensor, Tensor]:
        """ORT's lookup table (output codes per input code) and its dequantized values."""
        table = ort.lookup_table(self.fn, g.scale, g.zp, g.qmin, g.qmax, out.scale, out.zp,
                                 out.qmin, out.qmax)
        return table, out.value(table.clone())


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

    With the native kernels the function runs on every element in one vectorized pass
    (:func:`fxquant.runtime_math.ort.logistic` / :func:`~fxquant.runtime_math.ort.silu`).
    Without them (or on a non-contiguous input) the input's at most ``2^bits`` values (its
    grid's) are evaluated once and looked up -- the same float32 results at the cost of a
    gather (the input is checked to lie exactly on the grid; otherwise the function runs on
    every element)."""

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
        if native.available() and x.dtype == _F32 and x.is_contiguous():
            return self.fn(x)  # the runtime's function in one native pass: no table needed
        g = grid_of(self.in_fq)
        if g.qmax - g.qmin >= self._TABLE_LIMIT or x.dtype != _F32 or x.numel() < 4 * (
                g.qmax - g.qmin + 1):
            return self.fn(x)
        values, table = self.held("table", (g, self.fn), lambda: self._table(g))
        looked_up = native.grid_lookup(x, g.scale, g.zp, g.qmin, g.qmax, table)
        if looked_up is not None:  # one native pass (None: not applicable, or off the grid)
            return looked_up
        index = g.codes(x).sub_(g.qmin).clamp_(0, g.qmax - g.qmin).long()
        if not torch.equal(values[index], x):  # not on the grid: compute every element
            return self.fn(x)
        return table[index]


    def _table(self, g: Grid) -> tuple[Tensor, Tensor]:
        """The grid's values and the function at each."""
        values = torch.arange(g.qmin, g.qmax + 1, dtype=_F32).sub_(g.zp).mul_(g.scale)
        return values, self.fn(values)


class BatchNormKernel(RuntimeKernel):
    """ONNX Runtime's float ``BatchNormalization`` (a BatchNorm in eval mode that is not folded
    into a conv) of a quantized input: ``x * s + t`` per channel with ``s = (1 / sqrt(var +
    eps)) * gamma`` and ``t = beta - mean * s``, every step in float32 and no fused multiply-add
    (:func:`fxquant.runtime_math.ort.batch_norm`); torch's ``batch_norm`` rounds differently."""

    def __init__(self, fallback: Callable[..., Any], bn: nn.Module, in_fq: FakeQuantize) -> None:
        super().__init__("BatchNormalization", fallback, (in_fq,))
        self.bn = bn

    def check(self, x: Any, *rest: Any, **kwargs: Any) -> str | None:
        bn = self.bn
        if not isinstance(x, Tensor) or rest or kwargs or x.dim() < 2 or x.dtype != _F32:
            return "not a plain float32 one-tensor call"
        if bn.training or bn.running_mean is None or bn.running_var is None:
            return "BatchNorm in training mode or without running statistics"
        return None

    def compute(self, x: Tensor, *rest: Any, **kwargs: Any) -> Tensor:
        bn = self.bn
        return ort.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                              float(bn.eps))


class LayerNormKernel(RuntimeKernel):
    """ONNX Runtime's float ``LayerNormalization`` of a quantized input
    (:func:`fxquant.runtime_math.ort.layer_norm`): an ``nn.LayerNorm`` module (``layer``) or
    ``F.layer_norm(x, normalized_shape, weight, bias, eps)`` called with its arguments."""

    def __init__(self, fallback: Callable[..., Any], layer: nn.Module | None,
                 in_fq: FakeQuantize) -> None:
        super().__init__("LayerNormalization", fallback, (in_fq,))
        self.layer = layer

    def _args(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """``(x, normalized_shape, weight, bias, eps)`` of this call."""
        if self.layer is not None:
            m = self.layer
            return (args[0] if args else kwargs.get("input"), m.normalized_shape, m.weight,
                    m.bias, m.eps)
        names = ("input", "normalized_shape", "weight", "bias", "eps")
        defaults: dict[str, Any] = {"weight": None, "bias": None, "eps": 1e-5}
        values = {**defaults, **dict(zip(names, args, strict=False)), **kwargs}
        return tuple(values.get(k) for k in names)

    def check(self, *args: Any, **kwargs: Any) -> str | None:
        if (self.layer is None and len(args) > 5) or (self.layer is not None and
                                                      (len(args) != 1 or kwargs)):
            return "not a plain layer_norm call"
        x, shape, _, _, eps = self._args(*args, **kwargs)
        if not isinstance(x, Tensor) or x.dtype != _F32 or not isinstance(eps, float):
            return "not a float32 tensor input"
        size = _numel(shape)
        if size % ort.LAYER_NORM_LANES:
            return (f"normalized size {size} is not a multiple of {ort.LAYER_NORM_LANES} "
                    "(ORT's other paths are not reproduced)")
        return None

    def compute(self, *args: Any, **kwargs: Any) -> Tensor:
        x, shape, weight, bias, eps = self._args(*args, **kwargs)
        return ort.layer_norm(x, weight, bias, eps, _numel(shape))


def _numel(shape: Any) -> int:
    """Number of elements of a normalized shape (an int or a sequence of ints)."""
    size = 1
    for d in shape if isinstance(shape, (tuple, list, torch.Size)) else (shape,):
        size *= int(d)
    return size


FLOAT_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {"Sigmoid": ort.logistic,
                                                           "Sigmoid*x": ort.silu}
"""Float kernels -> the runtime's float32 implementation."""

LOOKUP_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {"QLinearSigmoid": ort.logistic}
"""Lookup-table kernels -> the runtime's float32 implementation of their function."""
