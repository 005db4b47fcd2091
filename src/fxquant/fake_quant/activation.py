"""Activations a quantizer can apply to its input in the same pass (see
:meth:`fxquant.FakeQuantize.forward_activated`): ``relu`` and ``relu6``, as clamps.

>>> import torch
>>> from fxquant.fake_quant.activation import RELU6
>>> RELU6.apply(torch.tensor([-1.0, 3.0, 7.0]))
tensor([0., 3., 6.])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["ClampActivation", "RELU", "RELU6"]


@dataclass(frozen=True)
class ClampActivation:
    """An activation that is ``x.clamp(*bounds)`` in value.

    ``gate_hi``: its gradient is also 0 at and above ``bounds[1]`` (hardtanh's rule; relu's
    gradient is 0 only where ``x <= 0``).  ``apply`` is the torch function itself, whose autograd
    bits the fused pass reproduces.
    """

    name: str
    bounds: tuple[float, float]
    gate_hi: bool
    apply: Callable[[Tensor], Tensor]


RELU = ClampActivation("relu", (0.0, float("inf")), False, torch.relu)
RELU6 = ClampActivation("relu6", (0.0, 6.0), True, F.relu6)
