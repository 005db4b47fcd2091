"""Observer base class: statistics only, all state in buffers."""

from __future__ import annotations

import math

import torch

from .._utils import LazyShapeBuffers, WithArgs
from ..errors import ConfigError, ObserverError, bounded
from ..numerics import DEFAULT_EPS, QDType, choose_qparams

__all__ = ["Observer", "ObserverError", "channel_view", "channel_aminmax"]


def channel_view(x: torch.Tensor, ch_axis: int | None) -> torch.Tensor:
    """``x`` as a 2-d ``[channels, rest]`` view (per channel) or a 1-d flat view (per tensor)."""
    if ch_axis is None:
        return x.reshape(-1)
    return x.movedim(ch_axis % x.dim(), 0).reshape(x.shape[ch_axis], -1)


def channel_aminmax(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.aminmax(v, dim=1)`` of a 2-d ``v``, bit for bit, several times faster.

    ``torch.amin`` and ``torch.amax`` along ``dim=1`` are vectorised where ``aminmax`` along a
    dimension is not (~10x on ``[64, 576]``).  They agree with it on every value except the
    sign of a zero result (each reduction keeps a different one of ``-0.0`` / ``+0.0``), so a
    zero in either result falls back to ``aminmax`` itself.
    """
    lo, hi = torch.amin(v, dim=1), torch.amax(v, dim=1)
    if bool(((lo == 0) | (hi == 0)).any()):
        return torch.aminmax(v, dim=1)
    return lo, hi


class Observer(LazyShapeBuffers, WithArgs):
    """Collects statistics of the tensors passed through ``forward`` (which returns its input).

    Args:
        ch_axis: ``None`` for per-tensor statistics, else the channel axis.

    ``name`` is set by :func:`fxquant.prepare` to the quantizer's name and is used in errors.
    Subclasses implement ``_observe(x)``, ``has_stats()`` and ``compute_range(dtype, symmetric)``.
    Empty tensors leave the statistics untouched; NaN / Inf raise :class:`ObserverError`.
    """

    def __init__(self, ch_axis: int | None = None) -> None:
        super().__init__()
        if ch_axis is not None and (isinstance(ch_axis, bool) or not isinstance(ch_axis, int)):
            raise ConfigError(f"{type(self).__name__}: ch_axis must be None (per tensor) or an "
                              f"int axis, got {bounded(repr(ch_axis))}")
        self.ch_axis = ch_axis
        self.name = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x
        if self.ch_axis is not None and not -x.dim() <= self.ch_axis < x.dim():
            raise ObserverError(
                f"quantizer {self.name or '<unnamed>'!r} ({type(self).__name__}) is per channel "
                f"on axis {self.ch_axis} but observes a {x.dim()}-d tensor of shape "
                f"{list(x.shape)}; give it an axis in [{-x.dim()}, {x.dim() - 1}] or "
                "ch_axis=None (per tensor)"
            )
        # statistics are state kept across modes: never inference tensors (a batch observed
        # under torch.inference_mode would leave buffers that no later update may touch)
        with torch.inference_mode(False), torch.no_grad():
            self._observe(x.detach())
        return x

    def _observe(self, x: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _observe")

    def has_stats(self) -> bool:
        """True once at least one non-empty tensor was observed."""
        raise NotImplementedError(f"{type(self).__name__} must implement has_stats")

    def compute_range(self, dtype: QDType, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The clipping range ``(min, max)`` (0-d or per-channel 1-d tensors) for ``dtype``."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_range")

    def calculate_qparams(
        self, dtype: QDType, symmetric: bool, power_of_two: bool = False, eps: float = DEFAULT_EPS
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale float32, zero_point int32)`` for the observed range."""
        if not self.has_stats():
            raise ObserverError(
                f"quantizer {self.name or '<unnamed>'!r} ({type(self).__name__}) has observed no "
                "data yet: run fxquant.calibrate(...) (or a QAT step) before using its scale"
            )
        lo, hi = self.compute_range(dtype, symmetric)
        scale, zero_point = choose_qparams(lo, hi, dtype, symmetric, power_of_two, eps)
        if not bool(torch.isfinite(scale).all()):  # a range beyond float32 (power of two ...)
            raise ObserverError(
                f"quantizer {self.name or '<unnamed>'!r} ({type(self).__name__}): the observed "
                f"range [{float(lo.min()):.3g}, {float(hi.max()):.3g}] needs a scale beyond "
                f"float32 for {dtype}; check the data feeding this tensor, or exclude it from "
                "quantization"
            )
        return scale, zero_point

    def _check_finite(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Raise :class:`ObserverError` unless the batch minima ``lo`` and maxima ``hi`` are
        finite (a NaN in the batch makes them NaN, an Inf makes one of them infinite).

        Fast check first: ``sum(lo - hi)`` is non-finite whenever one of them is (a NaN or an
        infinity never cancels out); it can also overflow for finite values, so only then are
        ``lo`` and ``hi`` checked one by one.  One range on the CPU is read as two numbers.
        """
        if lo.dim() == 0 and lo.device.type == "cpu":
            if math.isfinite(lo.item()) and math.isfinite(hi.item()):
                return
        elif math.isfinite((lo - hi).sum().item()):
            return
        for v in (lo, hi):
            if not bool(torch.isfinite(v).all()):
                raise ObserverError(
                    f"quantizer {self.name or '<unnamed>'!r} ({type(self).__name__}) observed "
                    "NaN or Inf values; check the model / data feeding this tensor, or exclude "
                    "it from quantization"
                )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        """Load this observer's statistics; tolerate those of another kind of observer.

        A checkpoint may come from a model prepared with other observers (Horizon's hand-over:
        calibrate with histogram observers, save, prepare the QAT model with moving-average
        observers, ``load_state_dict(strict=True)``).  The quantizer's scale / zero point carry
        the calibration; observer statistics only describe how an observer got there:

        * the checkpoint has every statistic this observer keeps (and maybe more, e.g. a
          histogram's ``hist`` next to the ``min_val`` / ``max_val`` a min-max observer
          shares): those are loaded, the extra ones ignored;
        * it lacks some (another observer's statistics only): none are loaded and the observer
          starts empty (``reset``), so it never mixes two observers' states.

        A checkpoint without any statistics under this observer's prefix is checked as usual
        (strict loading reports the missing keys).
        """
        own = {
            prefix + n
            for n, b in self._buffers.items()
            if b is not None and n not in self._non_persistent_buffers_set
        }
        theirs = {k for k in state_dict if k.startswith(prefix) and "." not in k[len(prefix):]}
        if not theirs or theirs == own:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                          missing_keys, unexpected_keys, error_msgs)
            return
        foreign = theirs - own if own <= theirs else theirs
        kept = {k: v for k, v in state_dict.items() if k not in foreign}
        n = len(missing_keys)
        super()._load_from_state_dict(kept, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if not own <= theirs:
            missing_keys[n:] = [k for k in missing_keys[n:] if k not in own]
            reset = getattr(self, "reset", None)
            if reset is not None:
                reset()

    def extra_repr(self) -> str:
        return f"ch_axis={self.ch_axis}"
