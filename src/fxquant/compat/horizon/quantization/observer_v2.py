"""``horizon_plugin_pytorch.quantization.observer_v2``: Horizon's observer names on fxquant's.

``MinMaxObserver`` is Horizon's moving-average min / max (``averaging_constant=0.01``;
``1.0`` tracks the latest batch); ``KLObserver`` is fxquant's histogram with the entropy search;
``MSEObserver``, ``PercentileObserver`` and ``FixedScaleObserver(scale=..., dtype=...)`` are
fxquant's.
"""

from __future__ import annotations

from ....observers import (
    FixedScaleObserver,
    HistogramObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    RangeMethod,
)

__all__ = [
    "MinMaxObserver",
    "MSEObserver",
    "PercentileObserver",
    "KLObserver",
    "FixedScaleObserver",
]


class MinMaxObserver(MovingAverageMinMaxObserver):
    """Horizon's min / max observer: a moving average of per-batch min / max."""

    def __init__(self, averaging_constant: float = 0.01, ch_axis: int | None = None) -> None:
        super().__init__(averaging_constant, ch_axis=ch_axis)


class KLObserver(HistogramObserver):
    """Histogram + KL-divergence (entropy) range search."""

    def __init__(self, bins: int = 2048, ch_axis: int | None = None) -> None:
        super().__init__(RangeMethod.ENTROPY, bins, ch_axis=ch_axis)
