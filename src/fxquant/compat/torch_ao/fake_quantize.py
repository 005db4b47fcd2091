"""torch.ao-style ``FakeQuantize`` and the observer / fake-quant switches of its QAT recipes.

``FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=None, quant_max=None,
**observer_kwargs)`` is an :class:`fxquant.FakeQuantize` built from torch.ao's arguments
(scales applied the way torch's kernels do, ``ScaleMath.RECIPROCAL``).

The switches map torch.ao's two flags onto :class:`fxquant.FakeQuantState` (observer on +
fake quant on = QAT, observer on only = CALIBRATION, fake quant only = VALIDATION, neither =
FLOAT) and work on every fxquant quantizer, e.g. ``model.apply(disable_observer)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ... import FakeQuantize as _FxFakeQuantize
from ... import FakeQuantState
from ...errors import ConfigError
from ...nn import ConvBnNd
from ...numerics import ScaleMath
from .observer import (
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    grid_of,
)

__all__ = [
    "FakeQuantize",
    "FusedMovingAvgObsFakeQuantize",
    "default_fake_quant",
    "default_weight_fake_quant",
    "default_per_channel_weight_fake_quant",
    "default_fused_act_fake_quant",
    "default_fused_wt_fake_quant",
    "default_fused_per_channel_wt_fake_quant",
    "enable_observer",
    "disable_observer",
    "enable_fake_quant",
    "disable_fake_quant",
    "freeze_bn_stats",
]


def _observer_parts(observer: Any) -> tuple[type, dict[str, Any]]:
    """``(class, kwargs)`` of an observer class or ``Observer.with_args(...)`` factory."""
    if isinstance(observer, type):
        return observer, {}
    cls = getattr(observer, "cls", None)
    if isinstance(cls, type):
        return cls, dict(observer.kwargs)
    func = getattr(observer, "func", None)  # functools.partial
    if isinstance(func, type):
        return func, dict(observer.keywords)
    raise ConfigError(
        f"FakeQuantize: observer must be an observer class or Observer.with_args(...), "
        f"got {observer!r}"
    )


class FakeQuantize(_FxFakeQuantize):
    """torch.ao's ``FakeQuantize`` arguments on an fxquant quantizer.

    Args:
        observer: an observer class of :mod:`fxquant.compat.torch_ao.observer` (or its
            ``with_args`` factory).
        quant_min / quant_max: the integer range (``0, 255`` = quint8; ``-128, 127`` = qint8).
        observer_kwargs: ``dtype``, ``qscheme``, ``reduce_range``, ``ch_axis``,
            ``averaging_constant`` ... as torch.ao takes them.
    """

    def __init__(self, observer: Any = MovingAverageMinMaxObserver,
                 quant_min: int | None = None, quant_max: int | None = None,
                 is_weight: bool = False, **observer_kwargs: Any) -> None:
        cls, obs_kwargs = _observer_parts(observer)
        obs_kwargs.update(observer_kwargs)
        if quant_min is not None and quant_max is not None:
            obs_kwargs.update(quant_min=quant_min, quant_max=quant_max)
        grid = grid_of(obs_kwargs, "FakeQuantize", getattr(cls, "_per_channel", False))
        if grid.dtype is None:
            raise ConfigError("FakeQuantize: a float dtype has nothing to fake-quantize; use "
                              "None in the QConfig to keep the tensor float")
        if grid.ch_axis is not None:
            obs_kwargs["ch_axis"] = grid.ch_axis
        super().__init__(observer=cls.with_args(**obs_kwargs), dtype=grid.dtype,
                         symmetric=grid.symmetric, ch_axis=grid.ch_axis,
                         scale_math=ScaleMath.RECIPROCAL, is_weight=is_weight, eps=grid.eps)
        self.quant_min, self.quant_max = grid.dtype.qmin, grid.dtype.qmax

    # torch.ao's per-quantizer switches
    def enable_observer(self, enabled: bool = True) -> FakeQuantize:
        _switch(self, observer=enabled)
        return self

    def disable_observer(self) -> FakeQuantize:
        return self.enable_observer(False)

    def enable_fake_quant(self, enabled: bool = True) -> FakeQuantize:
        _switch(self, fake_quant=enabled)
        return self

    def disable_fake_quant(self) -> FakeQuantize:
        return self.enable_fake_quant(False)

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` this quantizer applies."""
        qp = self.qparams()
        return qp.scale, qp.zero_point


class FusedMovingAvgObsFakeQuantize(FakeQuantize):
    """torch.ao's fused observer + fake-quant module: the same quantizer here."""


_FLAGS = {
    FakeQuantState.QAT: (True, True),
    FakeQuantState.CALIBRATION: (True, False),
    FakeQuantState.VALIDATION: (False, True),
    FakeQuantState.FLOAT: (False, False),
}
_STATE = {flags: state for state, flags in _FLAGS.items()}


def _switch(fq: _FxFakeQuantize, observer: bool | None = None,
            fake_quant: bool | None = None) -> None:
    obs, fake = _FLAGS[fq.state]
    obs = obs if observer is None else observer
    fake = fake if fake_quant is None else fake_quant
    fq.set_state(_STATE[(obs, fake)])


def enable_observer(mod: nn.Module) -> None:
    """For ``model.apply``: quantizers observe again (scales follow the data)."""
    if isinstance(mod, _FxFakeQuantize):
        _switch(mod, observer=True)


def disable_observer(mod: nn.Module) -> None:
    """For ``model.apply``: freeze every quantizer's scale (observation off)."""
    if isinstance(mod, _FxFakeQuantize):
        _switch(mod, observer=False)


def enable_fake_quant(mod: nn.Module) -> None:
    """For ``model.apply``: quantizers fake-quantize."""
    if isinstance(mod, _FxFakeQuantize):
        _switch(mod, fake_quant=True)


def disable_fake_quant(mod: nn.Module) -> None:
    """For ``model.apply``: quantizers pass values through unchanged."""
    if isinstance(mod, _FxFakeQuantize):
        _switch(mod, fake_quant=False)


def _frozen_train(bn: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(bn, False)


def freeze_bn_stats(mod: nn.Module) -> None:
    """For ``model.apply``: a folded conv + BN uses its running statistics from now on, also
    after a later ``model.train()`` (torch.ao's ``freeze_bn_stats``)."""
    if isinstance(mod, ConvBnNd):
        bn = mod.bn
        bn.train = _frozen_train.__get__(bn)  # type: ignore[method-assign]
        nn.Module.train(bn, False)


default_fake_quant = FakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
    qscheme=torch.per_tensor_affine, reduce_range=True,
)
default_weight_fake_quant = FakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
    qscheme=torch.per_tensor_symmetric, reduce_range=False,
)
default_per_channel_weight_fake_quant = FakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
    dtype=torch.qint8, qscheme=torch.per_channel_symmetric, reduce_range=False, ch_axis=0,
)
default_fused_act_fake_quant = FusedMovingAvgObsFakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
)
default_fused_wt_fake_quant = FusedMovingAvgObsFakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
    qscheme=torch.per_tensor_symmetric,
)
default_fused_per_channel_wt_fake_quant = FusedMovingAvgObsFakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
    dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
)
