"""Observers: statistics only (min/max, moving average, histograms, fixed scales)."""

from ..numerics.range_search import RangeMethod
from .base import Observer, ObserverError, channel_aminmax, channel_view
from .fixed import FixedScaleObserver
from .histogram import HistogramObserver, MSEObserver, PercentileObserver
from .minmax import MinMaxObserver, MovingAverageMinMaxObserver
from .spec import OBSERVER_TYPES, ObserverSpec, check_scale

__all__ = [
    "Observer",
    "ObserverError",
    "channel_view",
    "channel_aminmax",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "FixedScaleObserver",
    "HistogramObserver",
    "PercentileObserver",
    "MSEObserver",
    "RangeMethod",
    "ObserverSpec",
    "OBSERVER_TYPES",
    "check_scale",
]
