"""Torch quantized modules built from fxquant's prepared modules (tables + small builders).

The only place, with :mod:`.qparams`, that imports ``torch.ao``: the rest of fxquant never does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .. import nn as qnn
from ..fake_quant import FakeQuantize
from ..graph.meta import value_info
from .qparams import ActQParams, Unsupported, quantized_weight

__all__ = [
    "QUANTIZED_CONV",
    "QUANTIZED_LINEAR",
    "not_converted_reason",
    "weighted_float_parts",
    "average_pool_builder",
    "build_quantized_weighted",
    "GlobalAvgPool",
    "AvgPool2d",
]

# fxquant module type -> (torch quantized module, the same fused with relu)
QUANTIZED_CONV: dict[type, tuple[type, type]] = {
    qnn.QuantConv1d: (nnq.Conv1d, nniq.ConvReLU1d),
    qnn.QuantConv2d: (nnq.Conv2d, nniq.ConvReLU2d),
    qnn.QuantConv3d: (nnq.Conv3d, nniq.ConvReLU3d),
    qnn.ConvBn1d: (nnq.Conv1d, nniq.ConvReLU1d),
    qnn.ConvBn2d: (nnq.Conv2d, nniq.ConvReLU2d),
    qnn.ConvBn3d: (nnq.Conv3d, nniq.ConvReLU3d),
}
QUANTIZED_LINEAR: dict[type, tuple[type, type]] = {
    qnn.QuantLinear: (nnq.Linear, nniq.LinearReLU),
}

_NOT_CONVERTED: dict[type, str] = {
    **{
        t: "torch's engines have no per-channel transposed conv (fbgemm: 'currently disabled') "
        "and the x86 engine's transposed conv disagrees with the float reference; kept float"
        for t in (qnn.QuantConvTranspose1d, qnn.QuantConvTranspose2d, qnn.QuantConvTranspose3d)
    },
    qnn.QuantEmbedding: "torch's quantized Embedding needs float per-row zero points and returns "
    "float; the lookup of the fake-quantized table runs in float",
}


def not_converted_reason(mod: nn.Module) -> str | None:
    """Why weighted module ``mod`` stays float whatever its dtypes (None: it converts)."""
    return _NOT_CONVERTED.get(type(mod))


def weighted_float_parts(mod: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float ``(weight, bias)`` a deployed weighted module runs: BN folded with running stats."""
    with torch.no_grad():
        if isinstance(mod, qnn.ConvBnNd):
            w, b = mod.folded_weight_and_bias()
            return w.detach(), b.detach().float()
        bias = mod.bias.detach().float() if mod.bias is not None else None
        return mod.weight.detach(), bias


def _conv_padding(mod: nn.Module) -> tuple[int, ...]:
    padding = mod.padding
    if padding == "valid":
        return (0,) * len(mod.kernel_size)
    if padding == "same":
        out = []
        for k, d in zip(mod.kernel_size, mod.dilation, strict=True):
            total = d * (k - 1)
            if total % 2:
                raise Unsupported(
                    "padding='same' with an even receptive field pads asymmetrically, which "
                    "torch's quantized conv cannot express"
                )
            out.append(total // 2)
        return tuple(out)
    return tuple(padding)


def build_quantized_weighted(mod: nn.Module, out: ActQParams, relu: bool) -> nn.Module:
    """A torch quantized conv / linear (``relu``: the fused ``...ReLU`` form) equivalent to
    fxquant module ``mod`` whose output is quantized with ``out``.

    Raises :class:`Unsupported` (with the reason) for what torch's engines cannot run.
    """
    kind = type(mod)
    if kind in _NOT_CONVERTED:
        raise Unsupported(_NOT_CONVERTED[kind])
    fq = getattr(mod, "weight_fake_quant", None)
    if not isinstance(fq, FakeQuantize):
        raise Unsupported("its weight is not quantized (no weight quantizer)")
    w, b = weighted_float_parts(mod)
    qweight = quantized_weight(w, fq)
    if kind in QUANTIZED_CONV:
        cls = QUANTIZED_CONV[kind][1 if relu else 0]
        padding_mode = mod.padding_mode
        if padding_mode not in ("zeros", "reflect") or (
            padding_mode == "reflect" and len(mod.kernel_size) == 3
        ):
            raise Unsupported(f"padding_mode={padding_mode!r} has no quantized conv")
        qmod = cls(
            mod.in_channels,
            mod.out_channels,
            mod.kernel_size,
            stride=mod.stride,
            padding=_conv_padding(mod),
            dilation=mod.dilation,
            groups=mod.groups,
            bias=b is not None,
            padding_mode=padding_mode,
        )
    elif kind in QUANTIZED_LINEAR:
        cls = QUANTIZED_LINEAR[kind][1 if relu else 0]
        qmod = cls(mod.in_features, mod.out_features, b is not None)
    else:
        raise Unsupported(f"no torch quantized module for {kind.__name__}")
    qmod.set_weight_bias(qweight, b)
    qmod.scale = out.scale
    qmod.zero_point = out.zero_point
    return qmod


class _DepthwiseAverage(nn.Module):
    """Average pooling on the integer path, requantized to new ``(scale, zero_point)``.

    torch's quantized ``avg_pool2d`` / ``adaptive_avg_pool2d`` keep the input's scale and round
    the average on that grid, while fxquant averages in float and quantizes once with the op's
    own output quantizer.  A depthwise quantized convolution whose weights all equal ``1 / k``
    (code 127, scale ``1 / (127 k)``) computes exactly that: ``sum(q - zp_in) * s_in / k``
    requantized to the output parameters in the kernel's integer accumulator.
    Kernels are built per (channels, kernel, stride, padding) on first use and kept as
    submodules (``kernels``), so that ``torch.jit.trace`` and ``state_dict`` see them.
    """

    def __init__(self, out: ActQParams) -> None:
        super().__init__()
        self.scale = out.scale
        self.zero_point = out.zero_point
        self.kernels = nn.ModuleDict()

    def _conv(self, channels: int, kernel: tuple[int, int], stride, padding) -> nn.Module:
        key = "_".join(str(int(v)) for v in (channels, *kernel, *stride, *padding))
        conv = self.kernels[key] if key in self.kernels else None
        if conv is None:
            k = kernel[0] * kernel[1]
            conv = nnq.Conv2d(
                channels, channels, kernel, stride=stride, padding=padding, groups=channels,
                bias=False,
            )
            w = torch.full((channels, 1, *kernel), 1.0 / k)
            qw = torch.quantize_per_tensor(w, 1.0 / (127.0 * k), 0, torch.qint8)  # code 127
            conv.set_weight_bias(qw, None)
            conv.scale, conv.zero_point = self.scale, self.zero_point
            self.kernels[key] = conv
        return conv

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}, zero_point={self.zero_point}"


class GlobalAvgPool(_DepthwiseAverage):
    """``adaptive_avg_pool2d(x, 1)`` (``keepdim``) or ``x.mean((2, 3))`` on a quantized NCHW
    tensor, output quantized with the op's own parameters (see :class:`_DepthwiseAverage`)."""

    def __init__(self, out: ActQParams, keepdim: bool = True) -> None:
        super().__init__(out)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = (int(d) for d in x.shape)
        y = self._conv(c, (h, w), (1, 1), (0, 0))(x)
        return y if self.keepdim else y.reshape(n, c)


class AvgPool2d(_DepthwiseAverage):
    """``avg_pool2d`` with ``count_include_pad=True`` (or no padding), no ``ceil_mode``, on a
    quantized tensor, output quantized with the op's own parameters."""

    def __init__(self, out: ActQParams, kernel_size, stride, padding) -> None:
        super().__init__(out)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x.shape[1], self.kernel_size, self.stride, self.padding)(x)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            + super().extra_repr()
        )


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _is_one(size: Any) -> bool:
    return size == 1 or (isinstance(size, (list, tuple)) and all(s == 1 for s in size))


def _window(kw: dict[str, Any]) -> Callable[[ActQParams], nn.Module]:
    """Builder of an :class:`AvgPool2d` from avg_pool2d arguments (:class:`Unsupported` for the
    forms without an exact integer equivalent)."""

    def build(out: ActQParams) -> nn.Module:
        if kw.get("ceil_mode"):
            raise Unsupported("avg_pool2d with ceil_mode=True has no exact integer form here")
        if kw.get("divisor_override") is not None:
            raise Unsupported("avg_pool2d with divisor_override has no exact integer form here")
        kernel = _pair(kw["kernel_size"])
        stride = _pair(kw.get("stride") or kernel)
        padding = _pair(kw.get("padding", 0))
        if any(padding) and not kw.get("count_include_pad", True):
            raise Unsupported("avg_pool2d with count_include_pad=False and padding")
        return AvgPool2d(out, kernel, stride, padding)

    return build


def average_pool_builder(
    n: fx.Node, mod: nn.Module | None
) -> Callable[[ActQParams], nn.Module] | None:
    """For a 2-d average pooling node (``AdaptiveAvgPool2d(1)``, ``AvgPool2d``,
    ``F.adaptive_avg_pool2d(x, 1)``, ``F.avg_pool2d``, ``x.mean((2, 3))``) the function that
    builds its integer module for given output parameters; None for other nodes."""
    info = value_info(n.args[0]) if n.args and isinstance(n.args[0], fx.Node) else None
    if info is None or info.shape is None or len(info.shape) != 4:
        return None
    if mod is not None:
        if isinstance(mod, nn.AdaptiveAvgPool2d) and _is_one(mod.output_size):
            return lambda out: GlobalAvgPool(out, keepdim=True)
        if isinstance(mod, nn.AvgPool2d):
            names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                     "divisor_override")
            return _window({k: getattr(mod, k) for k in names})
        return None
    if n.op == "call_function" and n.target is F.adaptive_avg_pool2d:
        size = n.args[1] if len(n.args) > 1 else n.kwargs.get("output_size")
        return (lambda out: GlobalAvgPool(out, keepdim=True)) if _is_one(size) else None
    if n.op == "call_function" and n.target is F.avg_pool2d:
        names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                 "divisor_override")
        return _window(dict(zip(names, n.args, strict=False)) | dict(n.kwargs))
    if (n.op == "call_method" and n.target == "mean") or (
        n.op == "call_function" and n.target is torch.mean
    ):
        kw = dict(zip(("input", "dim", "keepdim"), n.args, strict=False)) | dict(n.kwargs)
        dims = kw.get("dim")
        if kw.get("dtype") is None and isinstance(dims, (list, tuple)):
            if sorted(d % 4 for d in dims) == [2, 3]:
                keepdim = bool(kw.get("keepdim", False))
                return lambda out: GlobalAvgPool(out, keepdim=keepdim)
    return None
