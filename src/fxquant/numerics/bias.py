"""Int32 bias of a quantized conv / linear, as pure functions.

A runtime that fuses ``DQ(x), DQ(w), DQ(b) -> Conv -> Q`` into an integer kernel adds the bias to
the int32 accumulator, so the bias must be stored as ``int32`` with

    bias_scale[c] = input_scale * weight_scale[c]        zero point 0

(ONNX ``QLinearConv`` / ORT ``QGemm``).  When ``input_scale * weight_scale`` is tiny, ``bias /
bias_scale`` can exceed the int32 range; :func:`fix_weight_scale` then raises the weight scale of
the affected channels just enough that the bias fits (the weight is re-quantized with it, a
little more coarsely, instead of the bias saturating).
"""

from __future__ import annotations

import torch

__all__ = [
    "INT32_MAX",
    "bias_scale",
    "channel_scale",
    "overflowing_channels",
    "fix_weight_scale",
    "quantize_bias",
]

INT32_MAX = 2**31 - 1
_HEADROOM = 1.0 / 1.01  # use at most ~99% of the int32 range after a fix


def channel_scale(
    weight_scale: torch.Tensor, out_channels: int, channel_period: int | None = None
) -> torch.Tensor:
    """The weight scale of each of ``out_channels`` output channels (float32, ``[C]``).

    ``weight_scale`` is 0-d (per tensor) or 1-d (per channel).  ``channel_period``: a grouped
    transposed conv has one weight scale per ``out_channels / groups`` channels; output channel
    ``o`` uses scale ``o % channel_period``.
    """
    s = weight_scale.detach().to(torch.float32).reshape(-1)
    if s.numel() == 1:
        return s.expand(out_channels).clone()
    if channel_period is not None and s.numel() == channel_period:
        return s.repeat(out_channels // channel_period)
    if s.numel() != out_channels:
        raise ValueError(f"{s.numel()} weight scales for {out_channels} output channels")
    return s.clone()


def bias_scale(input_scale: torch.Tensor, weight_scale_c: torch.Tensor) -> torch.Tensor:
    """``input_scale * weight_scale`` per output channel, in float32 (what ORT multiplies)."""
    return input_scale.detach().to(torch.float32).reshape(()) * weight_scale_c.to(torch.float32)


def _codes(bias: torch.Tensor, scale_c: torch.Tensor) -> torch.Tensor:
    return torch.round(bias.detach().double() / scale_c.double())


def overflowing_channels(
    bias: torch.Tensor, input_scale: torch.Tensor, weight_scale_c: torch.Tensor
) -> torch.Tensor:
    """Boolean ``[C]``: channels whose ``round(bias / bias_scale)`` does not fit in int32."""
    return _codes(bias, bias_scale(input_scale, weight_scale_c)).abs() > INT32_MAX


def fix_weight_scale(
    bias: torch.Tensor, input_scale: torch.Tensor, weight_scale_c: torch.Tensor
) -> torch.Tensor:
    """Per-channel weight scales (``[C]``, float32) large enough for the bias to fit in int32.

    Channels that already fit keep their scale; the others get
    ``|bias| / (input_scale * INT32_MAX)`` with ~1% headroom.  Raising a weight scale only makes
    the weight grid coarser (the weight's range still fits), never clips it.
    """
    s_in = input_scale.detach().double().reshape(())
    need = bias.detach().double().abs() / (s_in * INT32_MAX * _HEADROOM)
    new = torch.maximum(weight_scale_c.double(), need).to(torch.float32)
    # float32 rounding must not push a channel back over the limit
    while bool(overflowing_channels(bias, input_scale, new).any()):
        bad = overflowing_channels(bias, input_scale, new)
        new = torch.where(bad, torch.nextafter(new, torch.full_like(new, float("inf"))), new)
    return new


def quantize_bias(
    bias: torch.Tensor, input_scale: torch.Tensor, weight_scale_c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes int32 [C], scale float32 [C])`` with ``codes = round(bias / scale)``.

    Raises:
        OverflowError: a code does not fit in int32 (call :func:`fix_weight_scale` first).
    """
    scale = bias_scale(input_scale, weight_scale_c)
    q = _codes(bias, scale)
    if bool((q.abs() > INT32_MAX).any()):
        raise OverflowError("bias does not fit in int32 at scale input_scale * weight_scale")
    return q.to(torch.int32), scale
