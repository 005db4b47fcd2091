"""``fake_quantize``: the no-grad entry point, choosing between the equivalent paths.

The formula lives in :mod:`.affine` (the reference and the in-place path); :mod:`.native` holds
the one-pass C++ kernel (the default on CPU) and :mod:`.fused` the opt-in compiled kernel.
This module only picks one of them, so that :mod:`.affine` does not depend on the compiled paths
and they can check themselves against :mod:`.affine`.
"""

from __future__ import annotations

import torch

from . import native
from .affine import (
    ScaleMath,
    fake_quantize_inplace_path,
    fake_quantize_reference,
    fast_path_applies,
)
from .dtypes import QDType
from .fused import fused_fake_quantize

__all__ = ["fake_quantize"]


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: QDType,
    axis: int | None = None,
    math: ScaleMath = ScaleMath.DIVIDE,
) -> torch.Tensor:
    """``dequantize(quantize(x))`` without leaving float: same shape and dtype as ``x``.

    No autograd rule is attached (``round`` has zero gradient); use
    :func:`fxquant.numerics.fake_quantize_ste` for training.  Float32 / float64 inputs on grids
    of at most 16 bits take the one-pass native kernel (:mod:`fxquant.numerics.native`, for
    contiguous CPU tensors), else the fused kernel of :mod:`fxquant.numerics.fused` when it is
    turned on, else :func:`~fxquant.numerics.affine.fake_quantize_inplace_path` (in-place
    passes over one new buffer); everything else takes
    :func:`~fxquant.numerics.affine.fake_quantize_reference`.  All give bit-identical results
    wherever the fast paths apply (tested).

    >>> from fxquant.numerics import qint8
    >>> fake_quantize(torch.tensor([0.26, 9.0]), torch.tensor(0.5), torch.tensor(0), qint8)
    tensor([0.5000, 9.0000])
    """
    if fast_path_applies(x, dtype, scale, zero_point):
        done = native.fake_quant(x, scale, zero_point, dtype, axis, math is ScaleMath.RECIPROCAL,
                                 with_mask=False)
        if done is not None:
            return done[0]
        fused = fused_fake_quantize(x, scale, zero_point, dtype, axis, math)  # None when off
        if fused is not None:
            return fused[0]
        return fake_quantize_inplace_path(x, scale, zero_point, dtype, axis, math)
    return fake_quantize_reference(x, scale, zero_point, dtype, axis, math)
