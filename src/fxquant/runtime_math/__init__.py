"""Runtime arithmetic: what a deployment runtime's integer kernels compute, bit for bit.

* :mod:`.ort`: ONNX Runtime's (MLAS) kernels as pure functions on code tensors;
* :mod:`.exact`: exact integer accumulation (conv / linear / matmul over codes) with float
  kernels;
* :mod:`.kernels`: modules that compute one op of a prepared model with a runtime's arithmetic
  (placed by :mod:`fxquant.graph.simulate`, the eval-mode runtime simulation); the weighted
  ones (conv / linear) in :mod:`.weighted`;
* :mod:`.grids` / :mod:`.held`: the quantizers' grids and the kernels' constants, derived once and
  kept while their sources hold.
"""

from . import exact, ort, tflite
from .kernels import (
    AvgPoolKernel,
    BinaryKernel,
    FixedPointMeanKernel,
    GlobalAvgPoolKernel,
    LookupKernel,
    MeanKernel,
    RuntimeKernel,
    settled,
)
from .weighted import WeightedKernel

__all__ = [
    "ort",
    "tflite",
    "exact",
    "RuntimeKernel",
    "WeightedKernel",
    "BinaryKernel",
    "FixedPointMeanKernel",
    "GlobalAvgPoolKernel",
    "AvgPoolKernel",
    "LookupKernel",
    "MeanKernel",
    "settled",
]
