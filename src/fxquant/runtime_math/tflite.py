"""LiteRT's (TFLite's) integer arithmetic as pure functions on code tensors.

TFLite requantizes with a fixed-point multiplier: a real multiplier ``m`` (``input_scale *
weight_scale / output_scale`` ...) becomes ``(q, shift)`` with ``m ~= q * 2^(shift - 31)``,
``q`` in ``[2^30, 2^31)`` (:func:`quantize_multiplier`), and an int32 value ``x`` is scaled by
``MultiplyByQuantizedMultiplier``: a saturating rounding doubling high multiply
(``(x * 2^left * q + 2^30) >> 31``, ties away from zero) followed by a rounding right shift
(ties away from zero) -- :func:`multiply_by_quantized_multiplier`.  Integer kernels built on it:

* conv / fully connected / batch matmul: exact int32 accumulation + int32 bias, requantized
  per output channel, plus the output zero point, clamped to the fused activation's range
  (:func:`requantize`);
* ADD / SUB: both inputs (minus their zero points) shifted left by 20 (int8; 15 for int16),
  scaled to the common ``2 * max(input scales)`` grid, added, scaled to the output
  (:func:`add`);
* MUL: the product of the centred inputs scaled by ``s_a * s_b / s_out`` (:func:`mul`);
* AVERAGE_POOL_2D: the sum of the raw codes divided by the count, rounded half away from zero
  (input and output share the grid) (:func:`average_pool`);
* MEAN: the centred sum scaled by ``s_in / (s_out * count)`` (:func:`mean`).

Every function works on int64 torch tensors holding the codes and returns codes; tests compare
them code for code with LiteRT's builtin kernels (``tests/runtime_math/test_tflite.py``).
"""

from __future__ import annotations

import math
import struct

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "quantize_multiplier",
    "multiply_by_quantized_multiplier",
    "requantize",
    "activation_range",
    "add",
    "mul",
    "average_pool",
    "mean",
    "ADD_LEFT_SHIFT",
    "xnnpack_add",
    "requantize_product",
    "multiply_by_quantized_multiplier_single",
]

_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1

ADD_LEFT_SHIFT = {8: 20, 16: 15}
"""Left shift of ADD / SUB's inputs by activation width (TFLite's ``left_shift``)."""


def quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: ``(q, shift)`` with ``m = q * 2^(shift - 31)``.

    ``frexp`` splits ``m`` into ``f * 2^shift`` with ``f`` in ``[0.5, 1)``; ``q =
    round(f * 2^31)`` (ties away from zero); ``q == 2^31`` halves it and bumps the shift; a
    shift below -31 flushes to zero.
    """
    if m == 0.0:
        return 0, 0
    frac, shift = math.frexp(m)
    q = int(math.copysign(math.floor(abs(frac) * 2.0**31 + 0.5), frac))
    if q == 2**31:
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q, shift


def _round_div_pot(x: Tensor, exponent: Tensor | int) -> Tensor:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2^exponent``, ties away from zero."""
    e = torch.as_tensor(exponent, dtype=torch.int64)
    mask = (torch.ones_like(e) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).to(torch.int64)
    return (x >> e) + (remainder > threshold).to(torch.int64)


def _srdhm(a: Tensor, b: Tensor) -> Tensor:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul`` on int32 values held in int64."""
    overflow = (a == _I32_MIN) & (b == _I32_MIN)
    ab = a * b
    nudge = torch.where(ab >= 0, torch.tensor(1 << 30), torch.tensor(1 - (1 << 30)))
    num = ab + nudge
    # C++ integer division by 2^31 truncates toward zero
    high = torch.where(num >= 0, num >> 31, -((-num) >> 31))
    return torch.where(overflow, torch.tensor(_I32_MAX), high)


def multiply_by_quantized_multiplier(x: Tensor, q: Tensor | int, shift: Tensor | int) -> Tensor:
    """TFLite's ``MultiplyByQuantizedMultiplier(x, q, shift)`` (double rounding): int32 ``x``
    (int64 tensor) times ``q * 2^(shift - 31)``; ``q`` / ``shift`` broadcast (per channel)."""
    q = torch.as_tensor(q, dtype=torch.int64)
    shift = torch.as_tensor(shift, dtype=torch.int64)
    left = shift.clamp(min=0)
    right = (-shift).clamp(min=0)
    shifted = (x * (torch.ones_like(left) << left)).clamp(_I32_MIN, _I32_MAX)
    return _round_div_pot(_srdhm(shifted, q), right)


def multiply_by_quantized_multiplier_64(x: Tensor, q: Tensor | int, shift: Tensor | int
                                        ) -> Tensor:
    """The int64-accumulator form (16x8 conv kernels): ``q`` rounded to 16 bits (capped at
    ``0x7FFF``), then ``(x * q16 + round) >> (15 - shift)``."""
    q = torch.as_tensor(q, dtype=torch.int64)
    shift = torch.as_tensor(shift, dtype=torch.int64)
    q16 = torch.where(q < 0x7FFF0000, (q + (1 << 15)) >> 16, torch.tensor(0x7FFF))
    total = 15 - shift
    rnd = torch.ones_like(total) << (total - 1)
    return ((x * q16 + rnd) >> total).clamp(_I32_MIN, _I32_MAX)


def activation_range(act: str, scale: float, zero_point: int, qmin: int, qmax: int
                     ) -> tuple[int, int]:
    """The code range of a fused activation (``NONE`` / ``RELU`` / ``RELU6``)."""
    if act == "NONE":
        return qmin, qmax
    lo = max(qmin, zero_point)
    if act == "RELU":
        return lo, qmax
    if act == "RELU6":
        return lo, min(qmax, zero_point + round(6.0 / scale))
    raise ValueError(f"unknown fused activation {act!r}")


def channel_multipliers(in_scale: float, w_scales: Tensor, out_scale: float
                        ) -> tuple[Tensor, Tensor]:
    """Per-channel ``(q, shift)`` of ``in_scale * w_scale / out_scale`` computed in double
    from the float32 scales, as TFLite's ``PopulateConvolutionQuantizationParams``."""
    qs, shifts = [], []
    for ws in w_scales.reshape(-1).tolist():
        m = float(torch.tensor(in_scale, dtype=torch.float32)) * float(
            torch.tensor(ws, dtype=torch.float32)) / float(torch.tensor(out_scale,
                                                                        dtype=torch.float32))
        q, s = quantize_multiplier(m)
        qs.append(q)
        shifts.append(s)
    return torch.tensor(qs, dtype=torch.int64), torch.tensor(shifts, dtype=torch.int64)


def multiply_by_quantized_multiplier_single(x: Tensor, q: Tensor | int, shift: Tensor | int
                                            ) -> Tensor:
    """Single rounding: ``(x * q + 2^(30 - shift)) >> (31 - shift)`` on int64 (LiteRT's 16x8
    FULLY_CONNECTED)."""
    q = torch.as_tensor(q, dtype=torch.int64)
    total = 31 - torch.as_tensor(shift, dtype=torch.int64)
    return ((x * q + (torch.ones_like(total) << (total - 1))) >> total).clamp(_I32_MIN, _I32_MAX)


_REQUANTIZERS = {
    "double": multiply_by_quantized_multiplier,
    "wide": multiply_by_quantized_multiplier_64,
    "single": multiply_by_quantized_multiplier_single,
}


def requantize(acc: Tensor, q: Tensor, shift: Tensor, zero_point: int, lo: int, hi: int,
               wide: bool = False, mode: str | None = None) -> Tensor:
    """Codes of an accumulator: scaled (``mode``: ``"double"`` -- the int8 kernels' double
    rounding --, ``"wide"`` -- the 16-bit multiplier of the 16x8 conv kernels -- or
    ``"single"``; ``wide=True`` means ``"wide"``), plus the zero point, clamped to ``[lo, hi]``.
    ``q`` / ``shift`` broadcast against ``acc``."""
    fn = _REQUANTIZERS[mode or ("wide" if wide else "double")]
    return (fn(acc, q, shift) + zero_point).clamp(lo, hi)

def add(a: Tensor, a_scale: float, a_zp: int, b: Tensor, b_scale: float, b_zp: int,
        out_scale: float, out_zp: int, lo: int, hi: int, bits: int = 8,
        subtract: bool = False) -> Tensor:
    """TFLite's quantized ADD / SUB (``PrepareGeneralSubOp`` / ``reference_integer_ops::Add``)."""
    left = ADD_LEFT_SHIFT[bits]
    f32 = torch.float32
    sa, sb, so = (float(torch.tensor(v, dtype=f32)) for v in (a_scale, b_scale, out_scale))
    twice_max = 2.0 * max(sa, sb)
    qa, sha = quantize_multiplier(sa / twice_max)
    qb, shb = quantize_multiplier(sb / twice_max)
    qo, sho = quantize_multiplier(twice_max / ((1 << left) * so))
    if subtract:
        qb = -qb
    xa = (a - a_zp) * (1 << left)
    xb = (b - b_zp) * (1 << left)
    sa_ = multiply_by_quantized_multiplier(xa, qa, sha)
    sb_ = multiply_by_quantized_multiplier(xb, qb, shb)
    out = multiply_by_quantized_multiplier(sa_ + sb_, qo, sho) + out_zp
    return out.clamp(lo, hi)


def mul(a: Tensor, a_scale: float, a_zp: int, b: Tensor, b_scale: float, b_zp: int,
        out_scale: float, out_zp: int, lo: int, hi: int) -> Tensor:
    """TFLite's quantized MUL: ``(a - za) * (b - zb)`` scaled by ``sa * sb / so``."""
    f32 = torch.float32
    m = float(torch.tensor(a_scale, dtype=f32)) * float(torch.tensor(b_scale, dtype=f32)) / \
        float(torch.tensor(out_scale, dtype=f32))
    q, s = quantize_multiplier(m)
    prod = (a - a_zp) * (b - b_zp)
    return (multiply_by_quantized_multiplier(prod, q, s) + out_zp).clamp(lo, hi)


def average_pool(total: Tensor, count: Tensor | int, lo: int, hi: int) -> Tensor:
    """Average of raw codes whose sum is ``total``: rounded half away from zero (C++ integer
    division of ``total +- count / 2``), clamped.  Input and output share the grid."""
    c = torch.as_tensor(count, dtype=torch.int64)
    half = c // 2
    num = torch.where(total > 0, total + half, total - half)
    quotient = torch.where(num >= 0, num // c, -((-num) // c))
    return quotient.clamp(lo, hi)


def mean(centred_sum: Tensor, count: int, in_scale: float, out_scale: float, out_zp: int,
         lo: int, hi: int) -> Tensor:
    """TFLite's quantized MEAN: the sum of ``q - zp_in`` scaled by ``s_in / (s_out * count)``.

    The multiplier of ``s_in / s_out`` absorbs the division: shifted left by ``floor(log2
    count)`` (at most 32, and no further than its own exponent allows), divided by ``count``
    (integer division), then applied with :func:`multiply_by_quantized_multiplier`.
    """
    f32 = np.float32
    q0, s0 = quantize_multiplier(float(f32(in_scale)) / float(f32(out_scale)))
    shift = min(count.bit_length() - 1, 32, 31 + s0)
    q = (q0 << shift) // count
    out = multiply_by_quantized_multiplier(centred_sum, q, s0 - shift) + out_zp
    return out.clamp(lo, hi)

def xnnpack_add(a: Tensor, a_scale: float, a_zp: int, b: Tensor, b_scale: float, b_zp: int,
                out_scale: float, out_zp: int, lo: int, hi: int) -> Tensor:
    """LiteRT's ADD on its XNNPACK delegate (the default CPU path), int8.

    The input-to-output scale ratios (float32) become integer multipliers at a common shift
    chosen so that the larger one has 20 bits below its leading one (``shift = 147 -
    exponent(max ratio)``); ``acc = a * ma + b * mb + bias`` with ``bias = 2^(shift - 1) -
    ma * za - mb * zb``; the output is ``(acc >> shift) + zo`` (an arithmetic shift: ties round
    up), clamped.
    """
    f32 = np.float32
    ra = float(f32(f32(a_scale) / f32(out_scale)))
    rb = float(f32(f32(b_scale) / f32(out_scale)))
    biased_exponent = struct.unpack("<I", struct.pack("<f", max(ra, rb)))[0] >> 23
    shift = 127 + 20 - biased_exponent
    ma = int(np.rint(f32(2.0**shift) * f32(ra)))
    mb = int(np.rint(f32(2.0**shift) * f32(rb)))
    bias = (1 << (shift - 1)) - ma * a_zp - mb * b_zp
    acc = a.to(torch.int64) * ma + b.to(torch.int64) * mb + bias
    return ((acc >> shift) + out_zp).clamp(lo, hi)


def requantize_product(acc: Tensor, a_scale: float, b_scale: float, out_scale: float,
                       out_zp: int, lo: int, hi: int) -> Tensor:
    """BATCH_MATMUL's output codes: the exact int32 accumulator of two per-tensor operands
    scaled by ``s_a * s_b / s_out`` (double product of the float32 scales) with
    :func:`multiply_by_quantized_multiplier`, plus the zero point, clamped."""
    f32 = np.float32
    q, shift = quantize_multiplier(float(f32(a_scale)) * float(f32(b_scale)) /
                                   float(f32(out_scale)))
    return requantize(acc, torch.tensor(q), torch.tensor(shift), out_zp, lo, hi)
