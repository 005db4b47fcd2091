"""Weighted runtime kernels: a weight-quantized conv / linear as ``QLinearConv`` / ``QGemm`` /
``MatMulIntegerToFloat`` (ONNX Runtime) or LiteRT's 16x8 conv / fully connected.

:class:`WeightedKernel` keeps its constants -- centred weight codes, the int32 (int64) bias, the
per-channel weight scale, the requantization multiplier and the exact accumulation's route -- in
a :class:`_WeightPlan`, rebuilt only when the weight / bias (compared by content,
:class:`fxquant.numerics.held.Snapshot`) or one of its grids (the same objects while they
hold, :func:`fxquant.runtime_math.grids.grid_of`) changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .. import nn as qnn
from ..fake_quant import FakeQuantize
from ..numerics import QParams
from ..numerics.affine import unclamped_codes
from ..numerics.bias import channel_scale, quantize_bias
from ..numerics.held import Snapshot
from . import ort, tflite
from .exact import Route, accumulate, accumulation_route
from .grids import Grid, checked, grid_of, mark_on_grid, qparams_of
from .kernels import RuntimeKernel, clip_implied

__all__ = ["WeightedKernel"]

_F32 = torch.float32


# -- QLinearConv / QGemm / MatMulIntegerToFloat --------------------------------------------------
def _weight_and_bias(layer: nn.Module) -> tuple[Tensor, Tensor | None]:
    if isinstance(layer, qnn.ConvBnNd):
        w, b = layer.folded_weight_and_bias()
        return w.detach(), b.detach()
    return layer.weight.detach(), None if layer.bias is None else layer.bias.detach()


def _param(module: nn.Module, name: str) -> Any:
    """``getattr(module, name)`` for a parameter / buffer, through the module's tables."""
    d = module.__dict__
    for table in ("_parameters", "_buffers"):
        if name in d[table]:
            return d[table][name]
    return getattr(module, name)


def _weight_sources(layer: nn.Module, convbn: bool) -> tuple[tuple[Tensor | None, ...],
                                                               tuple[Any, ...]]:
    """What ``_weight_and_bias(layer)`` is computed from: the weight and bias -- and, folded
    with a BatchNorm, its statistics, affine parameters and eps."""
    if not convbn:
        return (_param(layer, "weight"), _param(layer, "bias")), ()
    bn = layer.__dict__["_modules"]["bn"]
    return ((_param(layer, "weight"), _param(layer, "bias"), _param(bn, "running_mean"),
             _param(bn, "running_var"), _param(bn, "weight"), _param(bn, "bias")), (bn.eps,))


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
        self.__dict__["_layer"] = layer  # the same module, without nn.Module's attribute lookup
        self.weight_fq = weight_fq
        self.conv_function = conv if layer is None else None
        self.in_fq, self.out_fq = in_fq, out_fq
        self.__dict__["_in_fq"], self.__dict__["_out_fq"] = in_fq, out_fq  # plain lookups
        self.clip = clip
        self.float_output = float_output
        self.is_conv = conv is not None or (layer is not None and not isinstance(layer, nn.Linear))
        self.__dict__["_convbn"] = isinstance(layer, qnn.ConvBnNd)

    @property
    def wfq(self) -> FakeQuantize:
        """The weight quantizer (a module's is read at every call: it may be replaced)."""
        layer = self.__dict__["_layer"]
        if layer is None:
            return self.weight_fq
        fq = layer.__dict__["_modules"].get("weight_fake_quant")
        return fq if fq is not None else layer.weight_fake_quant

    def current_quantizers(self) -> tuple[FakeQuantize, ...]:
        return (*self.__dict__["_quantizer_tuple"], self.wfq)

    def _operands(self, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(input, fake-quantized weight or None, bias)`` of this call."""
        if self._layer is not None:
            return args[0], None, None
        a = dict(zip(_CONV_ARGS, args, strict=False)) | dict(kwargs)
        return a["input"], a["weight"], a.get("bias")

    def _groups(self, args: tuple, kwargs: dict) -> int:
        if self._layer is not None:
            return int(getattr(self._layer, "groups", 1))
        a = dict(zip(_CONV_ARGS, args, strict=False)) | dict(kwargs)
        return int(a.get("groups", 1))

    def _conv(self, args: tuple, kwargs: dict) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
        """``conv(x, w, bias)`` with this call's geometry."""
        layer, fn = self._layer, self.conv_function
        if fn is None:
            return lambda xi, wi, bi: qnn.conv_forward(layer, xi, wi, bi)
        geometry = dict(zip(_CONV_ARGS, args, strict=False)) | dict(kwargs)
        for k in ("input", "weight", "bias"):
            geometry.pop(k, None)
        return lambda xi, wi, bi: fn(xi, wi, bi, **geometry)

    def check(self, *args: Any, **kwargs: Any) -> str | None:
        if self._convbn and self._layer.bn.training:
            return "BatchNorm in training mode"
        if self._layer is not None and (len(args) != 1 or kwargs):
            return "not a one-input call"
        qp = qparams_of(self.wfq)
        if qp.axis not in (None, 0):
            return "weight not quantized per output channel"
        if self.fixed_point:  # LiteRT 16x8: a fused relu / relu6 clamps the output codes
            if qparams_of(self._in_fq).dtype.bits <= 8:
                return "an 8-bit input (the 16x8 kernel takes 16-bit activations)"
            return None
        if self._out_fq is not None and not clip_implied(self.clip, grid_of(self._out_fq)):
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

    def _weight_codes(self, w: Tensor, qp: QParams) -> Tensor:
        """Centred weight codes of ``w`` -- the layer's float weight, or ``F.linear`` /
        ``F.convNd``'s weight argument, which is on the weight grid already."""
        axis = qp.axis
        view = (-1, *([1] * (w.dim() - 1))) if axis is not None else ()
        if self._layer is None:
            return torch.round(w.to(_F32) / qp.scale.to(_F32).reshape(view))
        zp = qp.zero_point.to(_F32).reshape(view)
        # q - zp = clamp(round(w / s), qmin - zp, qmax - zp): QuantizeLinear's codes, centred
        codes = unclamped_codes(w.to(_F32), qp.scale, torch.zeros_like(qp.scale), axis,
                                qp.scale_math)
        return torch.clamp(codes, qp.dtype.qmin - zp, qp.dtype.qmax - zp, out=codes)

    def _plan(self, args: tuple, kwargs: dict, grid_in: Grid, out: Grid | None) -> _WeightPlan:
        """This call's constants, rebuilt only when the weight, bias or a grid changed."""
        layer = self._layer
        wqp = qparams_of(self.wfq)
        keys = (wqp, grid_in, out, self._groups(args, kwargs) if self.is_conv else 1)
        plan: _WeightPlan | None = self.__dict__.get("_weight_plan")
        same_grids = plan is not None and all(
            a is b for a, b in zip(plan.keys, keys, strict=True))
        if same_grids and layer is not None and checked(plan):  # this pass's batch check
            return plan  # type: ignore[return-value]
        sources, extra = self._sources(args, kwargs)
        if same_grids and plan.snapshot.holds(sources, extra):  # type: ignore[union-attr]
            return plan  # type: ignore[return-value]
        if layer is None:
            w, b = sources[0].detach(), None if sources[1] is None else sources[1].detach()
        else:
            w, b = _weight_and_bias(layer)
        plan = self.__dict__["_weight_plan"] = _WeightPlan(self, keys, w, b, wqp, grid_in, out,
                                                           Snapshot(sources, extra))
        return plan

    def _sources(self, args: tuple, kwargs: dict) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """What this call's weight and bias derive from (:func:`_weight_sources`; a function's
        weight and bias arguments)."""
        if self._layer is not None:
            return _weight_sources(self._layer, self._convbn)
        _, wq, bias_arg = self._operands(args, kwargs)
        return (wq, bias_arg if isinstance(bias_arg, Tensor) else None), ()

    def kept_sources(self) -> list[tuple[Any, tuple[Tensor | None, ...], Snapshot]]:
        """The kept plan with what it was derived from now, for this pass's batch check (a
        module's weight only: a function's weight argument is known at the call)."""
        plan = self.__dict__.get("_weight_plan")
        layer = self._layer
        if plan is None or layer is None:
            return []
        sources, extra = _weight_sources(layer, self._convbn)
        if extra != plan.snapshot.extra:
            return []
        return [(plan, sources, plan.snapshot)]

    def compute(self, *args: Any, **kwargs: Any) -> Tensor:
        x = self._operands(args, kwargs)[0]
        grid_in = grid_of(self._in_fq)
        out = None if self._out_fq is None else grid_of(self._out_fq)
        plan = self._plan(args, kwargs, grid_in, out)
        if plan.overflow:  # int32 bias overflow: see forward
            raise OverflowError(plan.overflow)
        xc = grid_in.centred(x)
        if self.float_output:  # MatMulIntegerToFloat; the bias is a float Add after it
            acc = accumulate(plan.route, xc, plan.codes, None, torch.nn.functional.linear,
                             (-1,), -1)
            y = acc.mul_(plan.mult)  # acc is this call's own tensor: in place, the same bits
            return y if plan.float_bias is None else y.add_(plan.float_bias)
        assert out is not None
        if self.fixed_point:
            return out.value(self._fixed_point(x, xc, plan, grid_in, out,
                                               self._conv(args, kwargs)))
        acc = self._accumulate(plan, xc, args, kwargs)
        # round(acc * m) * s_out: the output quantizer after the kernel saturates it (the value
        # it sees is on its grid, so it reproduces q - zp exactly)
        bounds = (out.qmin - out.zp, out.qmax - out.zp)
        y = ort.requantize_dequantize(acc, plan.mult, out.scale,
                                      channel_axis_last=not self.is_conv, bounds=bounds)
        return mark_on_grid(y, self._out_fq)

    def _accumulate(self, plan: _WeightPlan, xc: Tensor, args: tuple, kwargs: dict) -> Tensor:
        """The exact accumulator ``float32(conv / linear(xc, codes) + bias)``."""
        if self.is_conv:
            view = (1, -1) + (1,) * (xc.dim() - 2)
            return accumulate(plan.route, xc, plan.codes, plan.bias, self._conv(args, kwargs),
                              view, 1)
        return accumulate(plan.route, xc, plan.codes, plan.bias, torch.nn.functional.linear,
                          (-1,), -1)

    def _fixed_point(self, x: Tensor, xc: Tensor, plan: _WeightPlan, grid_in: Grid,
                     out: Grid, conv: Callable[[Tensor, Tensor, Tensor | None], Tensor]) -> Tensor:
        """LiteRT's 16x8 conv / fully connected: exact accumulation, int64 bias, per-channel
        fixed-point requantization (:func:`fxquant.runtime_math.tflite.requantize`)."""
        if self.is_conv:
            view = (1, -1) + (1,) * (xc.dim() - 2)
            acc = accumulate(plan.route, xc, plan.codes, plan.bias, conv, view, 1)
            shape = (-1, *([1] * (acc.dim() - 2)))
        else:
            acc = accumulate(plan.route, xc, plan.codes, plan.bias, torch.nn.functional.linear,
                             (-1,), -1)
            shape = (-1,)
        q, shift = tflite.channel_multipliers(float(grid_in.scale), plan.s_c, float(out.scale))
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


class _WeightPlan:
    """A :class:`WeightedKernel`'s constants for one weight / bias (``snapshot``) and one set of
    grids (``keys``): centred weight codes, the int32 (LiteRT 16x8: int64) bias codes or the
    float bias, the per-channel weight scale, the requantization multiplier and the exact
    accumulation's :class:`~fxquant.runtime_math.exact.Route`.  ``overflow``: why the int32 bias
    does not fit (the kernel then falls back), or ``""``."""

    __slots__ = ("bias", "codes", "float_bias", "keys", "mult", "overflow", "route", "s_c",
                 "snapshot")

    def __init__(self, kernel: WeightedKernel, keys: tuple[Any, ...], w: Tensor,
                 b: Tensor | None, wqp: QParams, grid_in: Grid, out: Grid | None,
                 snapshot: Snapshot) -> None:
        self.keys = keys
        self.snapshot = snapshot
        self.codes = kernel._weight_codes(w, wqp)
        self.s_c = channel_scale(wqp.scale, self.codes.shape[0])
        self.overflow = ""
        self.bias: Tensor | None = None
        self.float_bias: Tensor | None = None
        splittable = not kernel.is_conv or keys[3] == 1
        if kernel.float_output:  # MatMulIntegerToFloat: float32(acc) * (sx * sw), + float bias
            self.mult = grid_in.scale * self.s_c
            self.float_bias = None if b is None else b.to(_F32)
            self.route = accumulation_route(self.codes, None, grid_in.bound, splittable)
            return
        if b is not None and kernel.fixed_point:  # int64 bias
            self.bias = torch.round(b.double() / (grid_in.scale * self.s_c).double())
        elif b is not None:
            try:
                self.bias = quantize_bias(b, grid_in.scale, self.s_c)[0].double()
            except OverflowError as exc:
                self.overflow = str(exc) or "int32 bias overflow"
        assert out is not None
        self.mult = ort.requantize_multiplier(grid_in.scale, self.s_c, out.scale)
        self.route: Route = (Route("float64") if self.overflow else
                             accumulation_route(self.codes, self.bias, grid_in.bound, splittable))


_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
"""Positional arguments of ``F.convNd`` (``F.linear``: the first three)."""
