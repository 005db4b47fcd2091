"""Choosing ``(scale, zero_point)`` from an observed range.

Rules (per tensor, or element-wise per channel):

* The range is first widened to contain 0, so 0 is always exactly representable.
* symmetric, signed dtype: ``zero_point = 0``, ``scale = amax / qmax`` with
  ``amax = max(|min|, |max|)`` (TensorRT / NVIDIA convention: ``amax`` maps to ``qmax``).
* symmetric, unsigned dtype: ``zero_point = (qmin + qmax + 1) // 2`` (128 for uint8),
  ``scale = amax / (qmax - zero_point)``.
* asymmetric: ``scale = (max - min) / (qmax - qmin)``,
  ``zero_point = clamp(qmin - round(min / scale), qmin, qmax)``.
* ``scale`` is at least ``eps`` (all-zero or constant input still gives a positive scale).
* ``power_of_two``: ``scale`` is rounded *up* to a power of two (never clips more), and the
  zero point is recomputed for the new scale.

Returns float32 ``scale`` and int32 ``zero_point`` with the shape of ``min_val``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import torch

from .affine import ScaleMath, broadcast_param, clip_mask, dequantize, quantize
from .dtypes import QDType
from .granularity import Granularity, PerChannel, PerTensor
from .paths import fake_quantize

__all__ = ["choose_qparams", "DEFAULT_EPS", "QParams"]

DEFAULT_EPS = float(torch.finfo(torch.float32).eps)
_MIN_NORMAL32 = float(torch.finfo(torch.float32).tiny)
_MAX_NORMAL32 = float(torch.finfo(torch.float32).max)
_PER_TENSOR = PerTensor()


def choose_qparams(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    dtype: QDType,
    symmetric: bool,
    power_of_two: bool = False,
    eps: float = DEFAULT_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for the range ``[min_val, max_val]`` (see module docstring).

    The arithmetic is float64 (the range is widened exactly), rounded to a float32 scale at the
    end.  One finite range on the CPU (the per-tensor case of every observer) is computed with
    Python floats, which are IEEE float64 too: the same operations, the same bits, without a
    dozen tensor operations on 0-d tensors (tested against the tensor arithmetic).
    """
    scalar = _finite_cpu_scalars(min_val, max_val)
    if scalar is not None:
        lo, hi = scalar
        if lo > hi:
            raise ValueError(f"choose_qparams: min_val > max_val ({lo} > {hi})")
        done = _choose_qparams_float(lo, hi, dtype, symmetric, power_of_two, eps)
        if done is not None:
            return (torch.full((), done[0], dtype=torch.float32),
                    torch.full((), done[1], dtype=torch.int32))
    if _float32_symmetric_applies(min_val, max_val, dtype, symmetric, power_of_two, eps):
        if bool((min_val > max_val).any()):
            raise ValueError(f"choose_qparams: min_val > max_val ({min_val} > {max_val})")
        # float32 throughout gives the float64 result's bits here: max(-min, max, 0) is exact,
        # and a quotient of two float32 numbers rounded once to float64 and then to float32
        # equals the float32 quotient (53 >= 2 * 24 + 2 bits: the double rounding is
        # innocuous) unless it underflows, and anything below eps (a normal float32) becomes
        # eps either way (clamping commutes with the monotone rounding)
        scale = torch.maximum(min_val.neg(), max_val).clamp_(min=0.0).div_(dtype.qmax)
        scale = scale.clamp_(min=eps)
        return scale, torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
    min_val = torch.as_tensor(min_val, dtype=torch.float64)
    max_val = torch.as_tensor(max_val, dtype=torch.float64)
    if bool((min_val > max_val).any()):
        raise ValueError(f"choose_qparams: min_val > max_val ({min_val} > {max_val})")
    lo = torch.clamp(min_val, max=0.0)
    hi = torch.clamp(max_val, min=0.0)
    qmin, qmax = dtype.qmin, dtype.qmax
    if symmetric:
        amax = torch.maximum(-lo, hi)
        mid = dtype.symmetric_zero_point
        zp = torch.full_like(amax, float(mid))
        scale = amax / (qmax - mid)
        scale = torch.clamp(scale, min=eps)
        if power_of_two:
            scale = torch.exp2(torch.ceil(torch.log2(scale)))
    else:
        scale = torch.clamp((hi - lo) / (qmax - qmin), min=eps)
        if power_of_two:
            scale = torch.exp2(torch.ceil(torch.log2(scale)))
        zp = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    scale32 = scale.to(torch.float32)
    # float32 rounding must not push the scale below eps
    scale32 = torch.clamp(scale32, min=eps)
    return scale32, zp.to(torch.int32)


def _float32_symmetric_applies(min_val, max_val, dtype: QDType, symmetric: bool,
                               power_of_two: bool, eps: float) -> bool:
    """Symmetric signed grid of at most 24 bits (``qmax`` exact in float32) on float32 ranges,
    with ``eps`` a normal float32 (no scale below it can underflow)."""
    return (
        symmetric and dtype.signed and not power_of_two and dtype.bits <= 24
        and _MIN_NORMAL32 <= eps <= _MAX_NORMAL32
        and isinstance(min_val, torch.Tensor) and isinstance(max_val, torch.Tensor)
        and min_val.dtype == torch.float32 and max_val.dtype == torch.float32
        and min_val.shape == max_val.shape and min_val.device == max_val.device
    )


def _finite_cpu_scalars(min_val, max_val) -> tuple[float, float] | None:
    """``(min, max)`` as Python floats when both are one finite number on the CPU, else None."""
    vals = []
    for v in (min_val, max_val):
        if isinstance(v, torch.Tensor):
            if v.numel() != 1 or v.dim() != 0 or v.device.type != "cpu" or v.is_complex():
                return None
            v = v.item()
        elif not isinstance(v, (int, float)) or isinstance(v, bool):
            return None
        v = float(v)
        if not math.isfinite(v):
            return None
        vals.append(v)
    return vals[0], vals[1]


def _float32(v: float) -> float:
    """``v`` rounded to float32 (to nearest, ties to even; overflow gives +-inf)."""
    try:
        return struct.unpack("f", struct.pack("f", v))[0]
    except OverflowError:
        return math.copysign(math.inf, v)


def _pow2_up(scale: float) -> float:
    # torch's own log2 / exp2, not libm's: the ceiling depends on the last ulp near 2**k
    t = torch.tensor(scale, dtype=torch.float64)
    return float(torch.exp2(torch.ceil(torch.log2(t))))


def _choose_qparams_float(
    lo: float, hi: float, dtype: QDType, symmetric: bool, power_of_two: bool, eps: float
) -> tuple[float, int] | None:
    """:func:`choose_qparams` of one finite range in Python floats (IEEE float64), step by step
    the same operations as the tensor arithmetic, so the same bits (``torch.round`` and Python's
    ``round`` both round half to even; a signed zero never reaches the result: the scale is
    clamped to ``eps`` and the zero point is an integer).  None where the tensor arithmetic
    would meet a zero or infinite scale (``eps <= 0``, overflow): it handles those itself."""
    lo = min(lo, 0.0)
    hi = max(hi, 0.0)
    qmin, qmax = dtype.qmin, dtype.qmax
    if symmetric:
        amax = max(-lo, hi)
        if dtype.signed:
            zp = 0.0
            scale = amax / qmax
        else:
            mid = (qmin + qmax + 1) // 2
            zp = float(mid)
            scale = amax / (qmax - mid)
        scale = max(scale, eps)
        if power_of_two:
            scale = _pow2_up(scale)
        if not 0.0 < scale < math.inf:
            return None
    else:
        scale = max((hi - lo) / (qmax - qmin), eps)
        if power_of_two:
            scale = _pow2_up(scale)
        if not 0.0 < scale < math.inf:
            return None
        zp = min(max(float(qmin) - float(round(lo / scale)), float(qmin)), float(qmax))
    scale32 = max(_float32(scale), _float32(eps))
    if not scale32 < math.inf:
        return None
    return scale32, int(zp)


@dataclass(frozen=True, eq=False)
class QParams:
    """The quantization parameters one quantizer *applies*: the single source every consumer asks.

    Export (ONNX, encodings, TFLite), convert, the integer simulation, AdaRound, compare and
    summary read a quantizer's grid from this value (``FakeQuantize.qparams()``), never from its
    buffers: a learnable (LSQ) quantizer clamps its scale at ``eps`` and rounds / clamps its
    zero point in forward, and only this value says so once.

    Attributes:
        scale: float32, 0-d (per tensor) or ``[C]`` (per channel), detached.
        zero_point: int64 codes within ``[dtype.qmin, dtype.qmax]``, same shape as ``scale``.
        dtype: the integer grid.
        granularity: :class:`PerTensor` or :class:`PerChannel` (its axis).
        scale_math: how the scale divides (:class:`ScaleMath`).

    >>> import torch
    >>> from fxquant.numerics import qint8
    >>> qp = QParams(torch.tensor(0.5), torch.tensor(0), qint8)
    >>> qp.quantize(torch.tensor([1.3, -100.0])).tolist()
    [3, -128]
    >>> float(qp.steps(torch.tensor(1.0), torch.tensor(0.0)))
    2.0
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    dtype: QDType
    granularity: Granularity = _PER_TENSOR
    scale_math: ScaleMath = ScaleMath.DIVIDE

    @property
    def axis(self) -> int | None:
        """Channel axis, ``None`` per tensor."""
        return self.granularity.axis if isinstance(self.granularity, PerChannel) else None

    @property
    def per_channel(self) -> bool:
        return isinstance(self.granularity, PerChannel)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes of ``x`` (ONNX QuantizeLinear), in :func:`storage_dtype`."""
        return quantize(x, self.scale, self.zero_point, self.dtype, self.axis, self.scale_math)

    def dequantize(self, q: torch.Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(q - zero_point) * scale`` (ONNX DequantizeLinear)."""
        return dequantize(q, self.scale, self.zero_point, self.axis, out_dtype)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``dequantize(quantize(x))`` in ``x``'s float dtype (no autograd rule)."""
        return fake_quantize(
            x, self.scale, self.zero_point, self.dtype, self.axis, self.scale_math
        )

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The real range the grid represents: ``((qmin - zp) * scale, (qmax - zp) * scale)``
        in float64, 0-d or per channel."""
        s, z = self.scale.double(), self.zero_point.double()
        return (self.dtype.qmin - z) * s, (self.dtype.qmax - z) * s

    def saturated(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the elements of ``x`` whose code saturates at ``qmin`` / ``qmax``
        (computed with this grid's scale math in ``x``'s dtype, as :meth:`quantize` does; NaN
        is not saturated)."""
        inside = clip_mask(x, self.scale, self.zero_point, self.dtype, self.axis, self.scale_math)
        return ~(inside | torch.isnan(x))

    def signed_steps(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a - b`` in quantization steps: ``round((a - b) / scale)`` in float64 (NaN / Inf
        where ``a`` or ``b`` is not finite).  Per channel, the scale broadcasts along
        :attr:`axis` of ``a``."""
        diff = a.double() - b.double()
        s = broadcast_param(self.scale.double(), diff, self.axis)
        return torch.round(diff / s)

    def steps(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``|a - b|`` in quantization steps (``round(|a - b| / scale)``, float64).

        0 means the same integer code for two values on this grid; the step count of two
        dequantized tensors.  Per channel, the scale broadcasts along :attr:`axis` of ``a``.
        """
        return self.signed_steps(a, b).abs()
