"""AdaRound math (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training
Quantization"), as pure functions on tensors.

A weight ``w`` with scale ``s`` and zero point ``zp`` is rounded to ``floor(w / s) + r`` with
``r in {0, 1}`` learned per element.  During optimisation ``r`` is relaxed to the rectified
sigmoid ``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` (``zeta = 1.1``,
``gamma = -0.1``), so that the soft weight is::

    w_soft = (clamp(floor(w / s) + zp + h(V), qmin, qmax) - zp) * s

``V`` starts where ``h(V)`` equals the fractional part ``w / s - floor(w / s)`` (the soft weight
then equals the float weight inside the range).  The regulariser
``sum(1 - |2 h(V) - 1| ** beta)`` pushes every ``h`` to 0 or 1 while ``beta`` is annealed from 20
to 2 (linearly, after a warm start without regularisation, as in BRECQ's reference code).  The
hard rounding afterwards is ``r = h(V) >= 0.5`` (i.e. ``V >= 0``), so every code is the floor or
the ceiling of ``w / s``: within one step of nearest rounding.

A layer is reconstructed on *rows*: a linear layer's input rows, or a convolution's im2col rows
(:func:`conv_rows`) at sampled output positions, so that one optimisation step is a single
(grouped) matrix product (:func:`rows_forward`) whatever the image size.

Codes are kept *centered* (``q - zp``) so that per-tensor and per-channel zero points need no
special casing; :func:`fxquant.numerics.dequantize` turns ``centered + zp`` back into weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..numerics import QDType, ScaleMath, broadcast_param

__all__ = [
    "ZETA",
    "GAMMA",
    "rectified_sigmoid",
    "init_rounding_logits",
    "floor_codes",
    "soft_codes",
    "hard_codes",
    "rounding_regularizer",
    "soft_round",
    "annealed_beta",
    "reconstruction_loss",
    "conv_rows",
    "rows_forward",
]

ZETA = 1.1
"""Upper stretch of the rectified sigmoid (AdaRound paper, Sec. 4)."""
GAMMA = -0.1
"""Lower stretch of the rectified sigmoid."""


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V) = clamp(sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1)``."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def init_rounding_logits(frac: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) == frac`` for ``frac`` in [0, 1) (the inverse rectified sigmoid).

    >>> f = torch.tensor([0.0, 0.25, 0.5, 0.99])
    >>> torch.allclose(rectified_sigmoid(init_rounding_logits(f)), f, atol=1e-6)
    True
    """
    p = (frac - GAMMA) / (ZETA - GAMMA)  # in (0.083, 0.99): the logit is finite
    return torch.log(p) - torch.log1p(-p)


def floor_codes(
    w: torch.Tensor,
    scale: torch.Tensor,
    axis: int | None,
    math_: ScaleMath = ScaleMath.DIVIDE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(floor(w / s), frac)`` with ``w / s`` evaluated as the quantizer does (``math_``)."""
    s = broadcast_param(scale.to(w.dtype), w, axis)
    x = w / s if math_ is ScaleMath.DIVIDE else w * (1.0 / s)
    fl = torch.floor(x)
    return fl, (x - fl).clamp_(0.0, 1.0)


def _centered_bounds(
    zero_point: torch.Tensor, dtype: QDType, like: torch.Tensor, axis: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    z = broadcast_param(zero_point.to(like.dtype), like, axis)
    return dtype.qmin - z, dtype.qmax - z


def soft_codes(
    w_floor: torch.Tensor,
    v: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: QDType,
    axis: int | None,
) -> torch.Tensor:
    """Centered soft codes ``clamp(floor + zp + h(V), qmin, qmax) - zp`` (differentiable in V)."""
    lo, hi = _centered_bounds(zero_point, dtype, w_floor, axis)
    return torch.clamp(w_floor + rectified_sigmoid(v), lo, hi)


def hard_codes(
    w_floor: torch.Tensor,
    v: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: QDType,
    axis: int | None,
) -> torch.Tensor:
    """Centered hard codes: ``floor`` rounded up where ``h(V) >= 0.5``, then saturated."""
    lo, hi = _centered_bounds(zero_point, dtype, w_floor, axis)
    up = (rectified_sigmoid(v) >= 0.5).to(w_floor.dtype)
    return torch.clamp(w_floor + up, lo, hi)


def rounding_regularizer(v: torch.Tensor, beta: float) -> torch.Tensor:
    """``sum(1 - |2 h(V) - 1| ** beta)``: zero exactly when every ``h(V)`` is 0 or 1."""
    return (1.0 - (2.0 * rectified_sigmoid(v) - 1.0).abs().pow(beta)).sum()


class _SoftRound(torch.autograd.Function):
    """:func:`soft_round` in one pass; backward in closed form (few kernels, one ``pow``)."""

    @staticmethod
    def forward(ctx, v, w_floor, lo, hi, scale, beta):  # type: ignore[override]
        sig = torch.sigmoid(v)
        h = sig * (ZETA - GAMMA) + GAMMA
        h_in = (h >= 0) & (h <= 1)  # where clamp(h, 0, 1) passes the gradient
        h.clamp_(0.0, 1.0)
        c = w_floor + h
        c_in = (c >= lo) & (c <= hi)
        w = torch.clamp(c, lo, hi).mul_(scale)
        reg, pu = v.new_zeros(()), None
        if beta is not None:
            u = h.mul_(2.0).sub_(1.0)
            au = u.abs()
            p = au.pow(beta - 1.0)
            reg = (1.0 - p * au).sum()
            pu = p.mul_(torch.sign(u))  # d|u|^beta / du = beta * pu
        ctx.save_for_backward(sig, h_in, c_in, scale, pu)
        ctx.beta = beta
        return w, reg

    @staticmethod
    def backward(ctx, grad_w, grad_reg):  # type: ignore[override]
        sig, h_in, c_in, scale, pu = ctx.saved_tensors
        g = grad_w * scale * c_in
        if pu is not None:
            g = g - (2.0 * ctx.beta) * grad_reg * pu
        dh = sig * (1.0 - sig) * (ZETA - GAMMA) * h_in
        return g * dh, None, None, None, None, None


def soft_round(
    v: torch.Tensor,
    w_floor: torch.Tensor,
    lo: torch.Tensor | float,
    hi: torch.Tensor | float,
    scale: torch.Tensor,
    beta: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(soft weight, regulariser)`` with gradients for ``v`` only.

    Equals ``clamp(w_floor + h(V), lo, hi) * scale`` and ``rounding_regularizer(v, beta)``
    (0 when ``beta`` is None) computed with autograd, at about half the cost.  ``lo`` / ``hi``
    are the centered code bounds ``qmin - zp`` / ``qmax - zp`` and ``scale`` is already
    broadcastable against ``v``.
    """
    return _SoftRound.apply(v, w_floor, lo, hi, scale, beta)


def annealed_beta(
    step: int, num_iterations: int, beta_range: tuple[float, float], warm_start: float
) -> float | None:
    """``beta`` at ``step`` (0-based), or None during the warm start (no regularisation).

    After ``warm_start * num_iterations`` steps ``beta`` decays linearly from ``beta_range[0]``
    to ``beta_range[1]``.

    >>> [annealed_beta(t, 10, (20, 2), 0.2) for t in (0, 1, 2, 6, 10)]
    [None, None, 20.0, 11.0, 2.0]
    """
    start = math.ceil(warm_start * num_iterations)
    if step < start:
        return None
    hi, lo = float(beta_range[0]), float(beta_range[1])
    rel = (step - start) / max(1, num_iterations - start)
    return lo + (hi - lo) * max(0.0, 1.0 - rel)


def reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, channel_axis: int = 1
) -> torch.Tensor:
    """Squared error summed over the channel axis, averaged over everything else.

    This is the scaling of the AdaRound / BRECQ reference code; it fixes how strongly the
    rounding regulariser (``reg_param``, 0.01 by default) weighs against the reconstruction.
    """
    err = (pred - target).square()
    if err.dim() < 2:
        return err.mean()
    return err.sum(channel_axis).mean()


# -- layers as matrix products over rows -----------------------------------------------------------
def _conv_pads(conv: nn.Module) -> list[int]:
    """The conv's padding in ``F.pad`` order (last spatial dim first, left then right)."""
    pads: list[int] = []
    for i in reversed(range(len(conv.kernel_size))):
        if conv.padding == "valid":
            left = right = 0
        elif conv.padding == "same":
            total = conv.dilation[i] * (conv.kernel_size[i] - 1)
            left, right = total // 2, total - total // 2
        else:
            left = right = conv.padding[i]
        pads += [left, right]
    return pads


def conv_rows(conv: nn.Module, x: torch.Tensor, n_idx: torch.Tensor,
              pos: torch.Tensor) -> torch.Tensor:
    """im2col rows ``[R, C_in * prod(kernel)]`` of ``x`` at output positions ``(n_idx, pos)``.

    ``conv`` is any ``ConvNd`` (its stride, padding, padding mode and dilation are used);
    ``pos`` indexes the flattened output grid.  The row layout matches
    ``weight.reshape(out_channels, -1)``, so ``rows_forward(conv, rows, weight, bias)`` equals
    ``conv(x).flatten(2)[n_idx, :, pos]``.  Only the selected rows are materialised.
    """
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = F.pad(x, _conv_pads(conv), mode=mode)
    nd, r = len(conv.kernel_size), n_idx.numel()
    out_sizes = [
        (xp.shape[2 + d] - conv.dilation[d] * (conv.kernel_size[d] - 1) - 1) // conv.stride[d] + 1
        for d in range(nd)
    ]
    coords, rest = [], pos
    for size in reversed(out_sizes):
        coords.insert(0, rest % size)
        rest = torch.div(rest, size, rounding_mode="floor")
    index = [
        n_idx.reshape(r, *([1] * (nd + 1))),
        torch.arange(x.shape[1], device=x.device).reshape(1, -1, *([1] * nd)),
    ]
    for d in range(nd):
        taps = torch.arange(conv.kernel_size[d], device=x.device) * conv.dilation[d]
        shape = [1] * (nd + 2)
        shape[0], shape[2 + d] = r, conv.kernel_size[d]
        index.append((coords[d].reshape(r, 1) * conv.stride[d] + taps).reshape(shape))
    return xp[tuple(index)].reshape(r, -1)


def rows_forward(layer: nn.Module, rows: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """Output rows ``[R, C_out]`` of a linear / conv ``layer`` with ``weight`` (grouped conv:
    one batched product per group)."""
    groups = 1 if isinstance(layer, nn.Linear) else layer.groups
    w = weight.reshape(weight.shape[0], -1)
    if groups == 1:
        return F.linear(rows, w, bias)
    r, c_out = rows.shape[0], w.shape[0]
    xg = rows.reshape(r, groups, -1).transpose(0, 1)  # [G, R, K/G]
    wg = w.reshape(groups, c_out // groups, -1).transpose(1, 2)  # [G, K/G, C_out/G]
    out = torch.bmm(xg, wg).transpose(0, 1).reshape(r, c_out)
    return out if bias is None else out + bias
