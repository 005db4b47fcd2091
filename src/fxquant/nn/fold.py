"""Folding BatchNorm into the preceding convolution, as pure tensor math.

For a BatchNorm with running statistics ``mean``, ``var``, ``eps`` and affine ``gamma``,
``beta`` (1 and 0 when the BN has ``affine=False``), the per-output-channel scale factor is::

    sf = gamma / sqrt(var + eps)

and ``bn(conv(x, w) + b) == conv(x, w_fold) + b_fold`` (up to float rounding) with::

    w_fold = w * sf            (along the output-channel axis of the weight)
    b_fold = beta + (b - mean) * sf

The output-channel axis is 0 for ``ConvNd`` / ``Linear`` weights ``[out, in/groups, *k]`` and 1
for ``ConvTransposeNd`` weights ``[in, out/groups, *k]``.  A grouped transposed convolution keeps
``out/groups`` channels per group on axis 1, so its folding needs ``groups``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["bn_scale_factor", "fold_bn_weights"]


def bn_scale_factor(bn_var: Tensor, bn_eps: float, bn_w: Tensor | None = None) -> Tensor:
    """``gamma / sqrt(var + eps)`` per channel (``gamma`` = 1 when ``bn_w`` is None)."""
    std = torch.sqrt(bn_var + bn_eps)
    return std.reciprocal() if bn_w is None else bn_w / std


def fold_bn_weights(
    conv_w: Tensor,
    conv_b: Tensor | None,
    bn_mean: Tensor,
    bn_var: Tensor,
    bn_eps: float,
    bn_w: Tensor | None,
    bn_b: Tensor | None,
    transpose: bool = False,
    *,
    groups: int = 1,
) -> tuple[Tensor, Tensor]:
    """Fold a BatchNorm (running statistics) into a conv / linear weight and bias.

    Args:
        conv_w: weight ``[out, in/groups, *k]`` (``[in, out/groups, *k]`` when ``transpose``).
        conv_b: bias ``[out]`` or None (treated as zeros).
        bn_mean, bn_var: running statistics ``[out]``.
        bn_eps: the BatchNorm's ``eps``.
        bn_w, bn_b: affine ``gamma`` / ``beta`` ``[out]``, or None for ``affine=False``.
        transpose: the weight belongs to a ``ConvTransposeNd`` (output channels on axis 1).
        groups: the transposed convolution's ``groups`` (ignored unless ``transpose``).

    Returns ``(w_fold, b_fold)``; both are differentiable functions of the inputs (call
    ``.detach()`` for export).  The bias is always returned, even when ``conv_b`` is None.

    >>> w, b = fold_bn_weights(torch.ones(2, 1, 1, 1), None, torch.tensor([1.0, 0.0]),
    ...                        torch.tensor([4.0, 1.0]), 0.0, torch.tensor([2.0, 3.0]), None)
    >>> w.flatten().tolist(), b.tolist()
    ([1.0, 3.0], [-1.0, 0.0])
    """
    sf = bn_scale_factor(bn_var, bn_eps, bn_w)
    if transpose:
        if groups < 1 or conv_w.shape[0] % groups:
            raise ValueError(
                f"fold_bn_weights: groups={groups} does not divide the {conv_w.shape[0]} input "
                "channels of the transposed-conv weight"
            )
        out_channels = conv_w.shape[1] * groups
    else:
        out_channels = conv_w.shape[0]
    if sf.shape != (out_channels,) or bn_mean.shape != (out_channels,):
        raise ValueError(
            f"fold_bn_weights: BatchNorm has {tuple(bn_mean.shape)} / {tuple(sf.shape)} "
            f"statistics, but the weight {tuple(conv_w.shape)} has {out_channels} output channels"
        )
    spatial = [1] * (conv_w.dim() - 2)
    if transpose:
        in_channels, out_per_group = conv_w.shape[:2]
        grouped = conv_w.reshape(groups, in_channels // groups, out_per_group, *conv_w.shape[2:])
        w_fold = (grouped * sf.reshape(groups, 1, out_per_group, *spatial)).reshape(conv_w.shape)
    else:
        w_fold = conv_w * sf.reshape(-1, *([1] * (conv_w.dim() - 1)))
    b = bn_mean.new_zeros(out_channels) if conv_b is None else conv_b
    b_fold = (b - bn_mean) * sf
    if bn_b is not None:
        b_fold = b_fold + bn_b
    return w_fold, b_fold
