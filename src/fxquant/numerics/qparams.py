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

import torch

from .dtypes import QDType

__all__ = ["choose_qparams", "DEFAULT_EPS"]

DEFAULT_EPS = float(torch.finfo(torch.float32).eps)


def choose_qparams(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    dtype: QDType,
    symmetric: bool,
    power_of_two: bool = False,
    eps: float = DEFAULT_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for the range ``[min_val, max_val]`` (see module docstring)."""
    min_val = torch.as_tensor(min_val, dtype=torch.float64)
    max_val = torch.as_tensor(max_val, dtype=torch.float64)
    if bool((min_val > max_val).any()):
        raise ValueError(f"choose_qparams: min_val > max_val ({min_val} > {max_val})")
    lo = torch.clamp(min_val, max=0.0)
    hi = torch.clamp(max_val, min=0.0)
    qmin, qmax = dtype.qmin, dtype.qmax
    if symmetric:
        amax = torch.maximum(-lo, hi)
        if dtype.signed:
            zp = torch.zeros_like(amax)
            scale = amax / qmax
        else:
            mid = (qmin + qmax + 1) // 2
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
