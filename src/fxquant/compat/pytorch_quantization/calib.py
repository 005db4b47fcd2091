"""NVIDIA ``pytorch_quantization.calib``: amax calibrators on fxquant's observers.

* :class:`MaxCalibrator`: running ``max |x|`` (fxquant :class:`~fxquant.MinMaxObserver`), per
  tensor or per ``axis``; bit-identical to NVIDIA's.
* :class:`HistogramCalibrator`: fxquant's exact streaming :class:`~fxquant.HistogramObserver`
  (memory bounded, independent of batch order and size); ``compute_amax("entropy" |
  "percentile" | "mse")`` runs fxquant's range search on it.  Same methods as NVIDIA's, on a
  different histogram (power-of-two range instead of a growing ``[0, max|x|]``), so the amax
  is close to, not identical with, NVIDIA's.

``compute_amax`` returns amax with the reduced dimensions kept (``[C, 1, 1, 1]`` for a conv
weight on axis 0), ready to broadcast in :func:`~.tensor_quant.fake_tensor_quant`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...errors import ConfigError
from ...numerics import QDType
from ...observers import HistogramObserver, MinMaxObserver, RangeMethod

__all__ = ["MaxCalibrator", "HistogramCalibrator"]


class _Calibrator:
    def __init__(self, num_bits: int = 8, axis: int | None = None, unsigned: bool = False) -> None:
        if isinstance(axis, (tuple, list)):
            if len(axis) != 1:
                raise ConfigError(f"{type(self).__name__}: one axis at most, got {axis}")
            axis = axis[0]
        self._num_bits = num_bits
        self._axis = axis
        self._unsigned = unsigned
        self._ndim: int | None = None

    def _keepdims(self, amax: Tensor) -> Tensor:
        if self._axis is None or self._ndim is None:
            return amax.reshape(())
        shape = [1] * self._ndim
        shape[self._axis % self._ndim] = amax.numel()
        return amax.reshape(shape)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_bits={self._num_bits}, axis={self._axis}, "
                f"unsigned={self._unsigned})")


class MaxCalibrator(_Calibrator):
    """``max |x|`` over everything collected (per channel on ``axis``)."""

    def __init__(self, num_bits: int = 8, axis: int | None = None, unsigned: bool = False,
                 track_amax: bool = False) -> None:
        super().__init__(num_bits, axis, unsigned)
        self._observer = MinMaxObserver(ch_axis=self._axis)
        self._track_amax = track_amax
        self._amaxs: list[Tensor] = []

    def collect(self, x: Tensor) -> None:
        """Update the running maximum with ``x``."""
        if self._unsigned and bool((x < 0).any()):
            raise ConfigError("MaxCalibrator: negative values collected by an unsigned "
                              "calibrator")
        self._ndim = x.dim()
        self._observer(x.detach().float())
        if self._track_amax:
            self._amaxs.append(self._amax_now())

    def _amax_now(self) -> Tensor:
        o = self._observer
        return torch.maximum(-o.min_val, o.max_val).clone()

    def compute_amax(self) -> Tensor | None:
        """The amax (``None`` before any tensor was collected)."""
        if not self._observer.has_stats():
            return None
        return self._keepdims(self._amax_now())

    def reset(self) -> None:
        """Forget everything collected."""
        self._observer = MinMaxObserver(ch_axis=self._axis)
        self._amaxs = []


class HistogramCalibrator(_Calibrator):
    """Histogram of everything collected; ``compute_amax(method)`` picks the range."""

    def __init__(self, num_bits: int = 8, axis: int | None = None, unsigned: bool = False,
                 num_bins: int = 2048, grow_method: Any = None, skip_zeros: bool = False,
                 torch_hist: bool = True) -> None:
        super().__init__(num_bits, axis, unsigned)
        if self._axis is not None:
            raise ConfigError("HistogramCalibrator: per-channel (axis) calibration is not "
                              "supported (as in NVIDIA's); use MaxCalibrator for weights")
        self._bins = 1 << max(4, (int(num_bins) - 1).bit_length())  # a power of two
        self._skip_zeros = skip_zeros
        self._observer = HistogramObserver(bins=self._bins)

    def collect(self, x: Tensor) -> None:
        """Add ``x`` to the histogram."""
        if self._unsigned and bool((x < 0).any()):
            raise ConfigError("HistogramCalibrator: negative values collected by an unsigned "
                              "calibrator")
        x = x.detach().float()
        if self._skip_zeros:
            x = x[x != 0]
        self._ndim = x.dim()
        self._observer(x)

    def compute_amax(self, method: str, *, stride: int = 1, start_bin: int = 128,
                     percentile: float = 99.99) -> Tensor | None:
        """amax by ``"entropy"`` (KL divergence, TensorRT's), ``"mse"`` or ``"percentile"``.
        ``stride`` / ``start_bin`` are accepted for compatibility (fxquant searches every
        candidate)."""
        obs = self._observer
        if not obs.has_stats():
            return None
        obs.method = RangeMethod.parse(method)
        obs.percentile = float(percentile)
        dtype = QDType(self._num_bits, not self._unsigned)
        lo, hi = obs.compute_range(dtype, symmetric=not self._unsigned)
        return torch.maximum(-lo, hi).reshape(())

    def reset(self) -> None:
        """Forget everything collected."""
        self._observer = HistogramObserver(bins=self._bins)
