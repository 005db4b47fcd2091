"""Eager-style markers: ``QuantStub`` / ``DeQuantStub`` and ``FloatFunctional``.

Models written for torch's eager quantization (or Horizon's plugin) mark where quantization
starts and ends with stubs and route functional ops through a ``FloatFunctional`` module so
that each gets its own output quantizer.  :func:`fxquant.prepare` understands these markers
whether they come from here or from ``torch.ao`` (matched by name there, so fxquant imports
nothing from ``torch.ao``):

* ``QuantStub``: its output is quantized (the start of a quantized region);
* ``DeQuantStub``: its output is float (the end of one);
* ``FloatFunctional``: ``ff.add(x, y)`` runs ``torch.add`` and the op is named after the
  module (``ff``; a second call ``ff_1``), as with torch's.

Outside :func:`fxquant.prepare` all three are plain float pass-throughs / ops.

>>> import torch
>>> ff = FloatFunctional()
>>> ff.add_relu(torch.tensor([1.0, -3.0]), torch.tensor([1.0, 1.0]))
tensor([2., 0.])
>>> QuantStub()(torch.ones(2))
tensor([1., 1.])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["QuantStub", "DeQuantStub", "FloatFunctional"]


class QuantStub(nn.Module):
    """Marks the start of a quantized region: :func:`fxquant.prepare` quantizes its output.

    Args:
        qconfig: accepted for torch.ao-style code (``QuantStub(qconfig)``), stored as
            ``self.qconfig``; fxquant's setters decide the quantizer.
    """

    def __init__(self, qconfig: object | None = None) -> None:
        super().__init__()
        if qconfig is not None:
            self.qconfig = qconfig

    def forward(self, x: Tensor) -> Tensor:
        return x


class DeQuantStub(nn.Module):
    """Marks the end of a quantized region: its output stays float."""

    def __init__(self, qconfig: object | None = None) -> None:
        super().__init__()
        if qconfig is not None:
            self.qconfig = qconfig

    def forward(self, x: Tensor) -> Tensor:
        return x


class FloatFunctional(nn.Module):
    """Functional ops as methods of a module, so that each call site has a module name.

    Methods: ``add``, ``cat``, ``mul``, ``add_relu``, ``add_scalar``, ``mul_scalar``,
    ``matmul`` (torch's ``FloatFunctional`` set).  Every result passes through
    ``activation_post_process`` (an identity), which :func:`fxquant.prepare` removes while
    naming the op after this module.
    """

    def __init__(self) -> None:
        super().__init__()
        self.activation_post_process = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError(
            "FloatFunctional is not meant to be called: use its methods (add, cat, mul, "
            "add_relu, add_scalar, mul_scalar, matmul)"
        )

    def add(self, x: Tensor, y: Tensor) -> Tensor:
        """``x + y``."""
        return self.activation_post_process(torch.add(x, y))

    def add_scalar(self, x: Tensor, y: float) -> Tensor:
        """``x + y`` for a Python number ``y``."""
        return self.activation_post_process(torch.add(x, y))

    def mul(self, x: Tensor, y: Tensor) -> Tensor:
        """``x * y``."""
        return self.activation_post_process(torch.mul(x, y))

    def mul_scalar(self, x: Tensor, y: float) -> Tensor:
        """``x * y`` for a Python number ``y``."""
        return self.activation_post_process(torch.mul(x, y))

    def cat(self, x: Sequence[Tensor], dim: int = 0) -> Tensor:
        """``torch.cat(x, dim)``."""
        return self.activation_post_process(torch.cat(x, dim=dim))

    def add_relu(self, x: Tensor, y: Tensor) -> Tensor:
        """``relu(x + y)``."""
        return self.activation_post_process(torch.relu(torch.add(x, y)))

    def matmul(self, x: Tensor, y: Tensor) -> Tensor:
        """``x @ y``."""
        return self.activation_post_process(torch.matmul(x, y))
