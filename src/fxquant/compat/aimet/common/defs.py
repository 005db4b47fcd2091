"""``aimet_common.defs``: quantization schemes and data types."""

from __future__ import annotations

import enum

__all__ = ["QuantScheme", "QuantizationDataType"]


class QuantScheme(enum.Enum):
    """How AIMET finds ranges; fxquant's observer for each:

    * ``post_training_tf`` (``min_max``): min / max (:class:`fxquant.MinMaxObserver`);
    * ``post_training_tf_enhanced``: best-SQNR range (:class:`fxquant.MSEObserver`);
    * ``post_training_percentile``: a percentile (:class:`fxquant.PercentileObserver`,
      ``QuantizationSimModel.set_percentile_value``);
    * ``training_range_learning_with_tf_init`` / ``..._with_tf_enhanced_init`` /
      ``training_range_learning``: learnable scales (:class:`fxquant.LearnableFakeQuantize`)
      initialised by min / max or by the best-SQNR range.
    """

    post_training_tf = 1
    min_max = 1
    post_training_tf_enhanced = 2
    training_range_learning_with_tf_init = 3
    training_range_learning_with_tf_enhanced_init = 4
    training_range_learning = 5
    post_training_percentile = 6


class QuantizationDataType(enum.Enum):
    """Integer or float quantization (fxquant quantizes to integers only)."""

    undefined = 0
    int = 1
    float = 2
