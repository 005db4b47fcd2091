"""NVIDIA ``pytorch_quantization.tensor_quant``: descriptors and the amax-based quantization.

Numerics (NVIDIA's, kept exactly because scripts and checkpoints depend on them):
``scale = max_bound / amax`` is a *multiplier* with ``max_bound = 2^(bits-1) - 1`` (``2^bits - 1``
unsigned); ``q = clamp(round_half_even(x * scale), min_bound, max_bound)`` with
``min_bound = -max_bound`` (narrow range), ``-max_bound - 1`` (full) or ``0`` (unsigned);
``fake_tensor_quant`` returns ``q / scale``.  An ``amax`` at or below ``2^-24`` quantizes to 0
(scale reported as 1).  The gradient is straight-through where ``|x| <= amax``, zero outside.
``amax`` broadcasts against ``x`` (per-channel amax keeps the reduced dims, e.g. ``[C, 1, 1, 1]``).

The same grid written as fxquant quantizers (scale ``amax / max_bound``, zero point 0) is what
:func:`fxquant.compat.pytorch_quantization.export_onnx` exports for TensorRT.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...errors import ConfigError

__all__ = [
    "ScaledQuantDescriptor",
    "QuantDescriptor",
    "QUANT_DESC_8BIT_PER_TENSOR",
    "QUANT_DESC_UNSIGNED_8BIT_PER_TENSOR",
    "QUANT_DESC_8BIT_CONV1D_WEIGHT_PER_CHANNEL",
    "QUANT_DESC_8BIT_CONV2D_WEIGHT_PER_CHANNEL",
    "QUANT_DESC_8BIT_CONV3D_WEIGHT_PER_CHANNEL",
    "QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW",
    "QUANT_DESC_8BIT_CONVTRANSPOSE1D_WEIGHT_PER_CHANNEL",
    "QUANT_DESC_8BIT_CONVTRANSPOSE2D_WEIGHT_PER_CHANNEL",
    "QUANT_DESC_8BIT_CONVTRANSPOSE3D_WEIGHT_PER_CHANNEL",
    "TensorQuantFunction",
    "FakeTensorQuantFunction",
    "tensor_quant",
    "fake_tensor_quant",
    "bounds",
]

_TINY_AMAX = 1.0 / (1 << 24)


class ScaledQuantDescriptor:
    """How one tensor is quantized (NVIDIA's ``QuantDescriptor``).

    Args:
        num_bits: integer bit width (default 8).
        name: optional label.
        fake_quant: fake quantization (float output) when True.
        axis: ``None`` per tensor, else the axis (or a 1-tuple) that keeps its own amax.
        amax: a fixed amax (float or list).
        learn_amax: not supported (use :class:`fxquant.LearnableFakeQuantize`).
        scale_amax: multiply amax by this.
        calib_method: ``"max"`` or ``"histogram"``.
        unsigned: unsigned range ``[0, 2^bits - 1]``.
        narrow_range: ``[-max_bound, max_bound]`` instead of ``[-max_bound - 1, max_bound]``.
    """

    def __init__(self, num_bits: int = 8, name: str | None = None, **kwargs: Any) -> None:
        if not isinstance(num_bits, int) or num_bits <= 0:
            raise ConfigError(f"QuantDescriptor: num_bits must be a positive int, got {num_bits!r}")
        self._num_bits = num_bits
        self._name = name
        self._fake_quant = kwargs.pop("fake_quant", True)
        axis = kwargs.pop("axis", None)
        if isinstance(axis, (tuple, list)):
            if len(axis) != 1:
                raise ConfigError(f"QuantDescriptor: only one quantization axis is supported, "
                                  f"got {axis}")
            axis = axis[0]
        self._axis = axis
        self._learn_amax = kwargs.pop("learn_amax", False)
        if self._learn_amax:
            raise ConfigError("QuantDescriptor(learn_amax=True) is not supported; train scales "
                              "with fxquant's LearnableFakeQuantize (get_qconfig(learnable=True))")
        amax = kwargs.pop("amax", None)
        self._amax = None if amax is None else torch.tensor(amax, dtype=torch.float32)
        self._scale_amax = kwargs.pop("scale_amax", None)
        self._calib_method = kwargs.pop("calib_method", "max")
        if self._calib_method not in ("max", "histogram"):
            raise ConfigError(f"QuantDescriptor: calib_method must be 'max' or 'histogram', got "
                              f"{self._calib_method!r}")
        self._unsigned = kwargs.pop("unsigned", False)
        self._narrow_range = kwargs.pop("narrow_range", False)
        if kwargs:
            raise ConfigError(f"QuantDescriptor: unknown arguments {sorted(kwargs)}")

    num_bits = property(lambda self: self._num_bits)
    name = property(lambda self: self._name)
    fake_quant = property(lambda self: self._fake_quant)
    axis = property(lambda self: self._axis)
    amax = property(lambda self: self._amax)
    learn_amax = property(lambda self: self._learn_amax)
    scale_amax = property(lambda self: self._scale_amax)
    calib_method = property(lambda self: self._calib_method)
    unsigned = property(lambda self: self._unsigned)
    narrow_range = property(lambda self: self._narrow_range)

    def dict(self) -> dict[str, Any]:
        """The non-default settings."""
        out: dict[str, Any] = {"num_bits": self._num_bits, "name": self._name}
        for key, default in (("fake_quant", True), ("axis", None), ("scale_amax", None),
                             ("unsigned", False), ("narrow_range", False),
                             ("calib_method", "max")):
            value = getattr(self, "_" + key)
            if value != default:
                out[key] = value
        if self._amax is not None:
            out["amax"] = self._amax.tolist()
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScaledQuantDescriptor) and self.dict() == other.dict()

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, str(v)) for k, v in self.dict().items())))

    def __repr__(self) -> str:
        parts = [f"{'unsigned ' if self._unsigned else ''}{self._num_bits}bit",
                 "fake" if self._fake_quant else "real",
                 f"axis={self._axis}" if self._axis is not None else "per-tensor"]
        if self._narrow_range:
            parts.append("narrow")
        return f"QuantDescriptor({' '.join(parts)})"


QuantDescriptor = ScaledQuantDescriptor

QUANT_DESC_8BIT_PER_TENSOR = QuantDescriptor(num_bits=8)
QUANT_DESC_UNSIGNED_8BIT_PER_TENSOR = QuantDescriptor(num_bits=8, unsigned=True)
QUANT_DESC_8BIT_CONV1D_WEIGHT_PER_CHANNEL = QuantDescriptor(num_bits=8, axis=0)
QUANT_DESC_8BIT_CONV2D_WEIGHT_PER_CHANNEL = QuantDescriptor(num_bits=8, axis=0)
QUANT_DESC_8BIT_CONV3D_WEIGHT_PER_CHANNEL = QuantDescriptor(num_bits=8, axis=0)
QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW = QuantDescriptor(num_bits=8, axis=0)
QUANT_DESC_8BIT_CONVTRANSPOSE1D_WEIGHT_PER_CHANNEL = QuantDescriptor(num_bits=8, axis=0)
QUANT_DESC_8BIT_CONVTRANSPOSE2D_WEIGHT_PER_CHANNEL = QuantDescriptor(num_bits=8, axis=0)
QUANT_DESC_8BIT_CONVTRANSPOSE3D_WEIGHT_PER_CHANNEL = QuantDescriptor(num_bits=8, axis=0)


def bounds(num_bits: int, unsigned: bool, narrow_range: bool) -> tuple[int, int]:
    """``(min_bound, max_bound)`` of the integer range."""
    max_bound = (1 << (num_bits - 1 + int(unsigned))) - 1
    if unsigned:
        return 0, max_bound
    return (-max_bound if narrow_range else -max_bound - 1), max_bound


def _quant(x: Tensor, amax: Tensor, num_bits: int, unsigned: bool,
           narrow_range: bool) -> tuple[Tensor, Tensor]:
    if unsigned and bool((x < 0).any()):
        raise ConfigError("tensor_quant: negative values in an unsigned quantization")
    in_dtype = x.dtype
    if x.dtype == torch.half:
        x = x.float()
    amax = amax.float()
    if bool((amax < 0).any()):
        raise ConfigError("tensor_quant: amax must be >= 0")
    lo, hi = bounds(num_bits, unsigned, narrow_range)
    scale = torch.tensor(float(hi), device=amax.device) / amax
    tiny = amax <= _TINY_AMAX
    scale = torch.where(tiny, torch.zeros_like(scale), scale)  # amax ~ 0: everything -> 0
    q = torch.clamp(torch.round(x * scale), lo, hi)
    scale = torch.where(tiny, torch.ones_like(scale), scale)
    return q.to(in_dtype), scale


def _ste_mask(x: Tensor, amax: Tensor, grad: Tensor) -> Tensor:
    return torch.where(x.abs() <= amax, grad, torch.zeros_like(grad))


class TensorQuantFunction(torch.autograd.Function):
    """``(q, scale) = tensor_quant(x, amax, num_bits=8, unsigned=False, narrow_range=True)``:
    integer values as floats and the scale multiplier; straight-through gradient for
    ``|x| <= amax``."""

    @staticmethod
    def forward(ctx: Any, inputs: Tensor, amax: Tensor, num_bits: int = 8,
                unsigned: bool = False, narrow_range: bool = True) -> tuple[Tensor, Tensor]:
        amax = torch.as_tensor(amax, dtype=torch.float32, device=inputs.device)
        ctx.save_for_backward(inputs, amax)
        q, scale = _quant(inputs, amax, num_bits, unsigned, narrow_range)
        return q, scale.to(inputs.dtype)

    @staticmethod
    def backward(ctx: Any, grad_q: Tensor, grad_scale: Tensor) -> tuple[Any, ...]:
        inputs, amax = ctx.saved_tensors
        return _ste_mask(inputs, amax, grad_q), None, None, None, None


class FakeTensorQuantFunction(torch.autograd.Function):
    """``fake_tensor_quant(x, amax, num_bits=8, unsigned=False, narrow_range=True)`` =
    ``q / scale``; straight-through gradient for ``|x| <= amax``."""

    @staticmethod
    def forward(ctx: Any, inputs: Tensor, amax: Tensor, num_bits: int = 8,
                unsigned: bool = False, narrow_range: bool = True) -> Tensor:
        amax = torch.as_tensor(amax, dtype=torch.float32, device=inputs.device)
        ctx.save_for_backward(inputs, amax)
        q, scale = _quant(inputs, amax, num_bits, unsigned, narrow_range)
        return q / scale.to(inputs.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        inputs, amax = ctx.saved_tensors
        return _ste_mask(inputs, amax, grad), None, None, None, None


tensor_quant = TensorQuantFunction.apply
fake_tensor_quant = FakeTensorQuantFunction.apply
