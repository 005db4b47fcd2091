"""torch.ao's ``QConfig(activation, weight)``, its defaults per engine, and the translation to
an :class:`fxquant.QConfig`."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import torch

from ... import FLOAT
from ... import FakeQuantize as _FxFakeQuantize
from ... import QConfig as _FxQConfig
from ...errors import ConfigError
from .fake_quantize import (
    FakeQuantize,
    _observer_parts,
    default_fake_quant,
    default_per_channel_weight_fake_quant,
    default_weight_fake_quant,
)
from .observer import (
    HistogramObserver,
    MovingAverageMinMaxObserver,
    ObserverBase,
    default_observer,
    default_per_channel_weight_observer,
    default_weight_observer,
    grid_of,
)

__all__ = [
    "QConfig",
    "default_qconfig",
    "default_qat_qconfig",
    "default_per_channel_qconfig",
    "get_default_qconfig",
    "get_default_qat_qconfig",
    "to_fxquant_qconfig",
    "ENGINE_PROFILES",
    "engine_profile",
]

ENGINE_PROFILES = {"x86": "x86", "fbgemm": "fbgemm", "onednn": "x86", "qnnpack": "qnnpack"}
"""torch quantized engine -> fxquant backend profile (the kernels fxquant's convert runs on)."""


def engine_profile(backend: str | None = None) -> str:
    """The fxquant profile of ``backend`` (default: ``torch.backends.quantized.engine``)."""
    engine = backend or torch.backends.quantized.engine
    if engine in ("none", None):
        engine = "x86"
    try:
        return ENGINE_PROFILES[engine]
    except KeyError:
        raise ConfigError(
            f"unknown quantized engine {engine!r}; use one of {sorted(ENGINE_PROFILES)}"
        ) from None


class QConfig(namedtuple("QConfig", ["activation", "weight"])):
    """torch.ao's ``QConfig``: observer / fake-quant factories for activations and weights.

    Factories are classes or ``with_args`` factories of :mod:`fxquant.compat.torch_ao`'s
    observers / ``FakeQuantize`` (or fxquant's own ``FakeQuantize.with_args``).
    """

    __slots__ = ()

    def __new__(cls, activation: Any, weight: Any) -> QConfig:
        for name, v in (("activation", activation), ("weight", weight)):
            if isinstance(v, torch.nn.Module):
                raise ConfigError(
                    f"QConfig.{name} must be a class or a with_args(...) factory, not an "
                    f"instance ({type(v).__name__}); write {type(v).__name__}.with_args(...)"
                )
        return super().__new__(cls, activation, weight)


def _to_quantizer(obj: Any, is_weight: bool, where: str) -> Any:
    """An fxquant FakeQuantize factory for a torch.ao-style factory (``None``: float)."""
    if obj is None:
        return None
    cls, kwargs = _observer_parts(obj)
    if issubclass(cls, FakeQuantize):
        obs_cls, obs_kwargs = _observer_parts(kwargs.get("observer", MovingAverageMinMaxObserver))
        merged = {**obs_kwargs, **{k: v for k, v in kwargs.items() if k != "observer"}}
        grid = grid_of(merged, where, getattr(obs_cls, "_per_channel", False))
        extra = {"ch_axis": grid.ch_axis} if grid.ch_axis is not None else {}
        return cls.with_args(**{**kwargs, **extra, "is_weight": is_weight})
    if issubclass(cls, _FxFakeQuantize):
        return cls.with_args(**{**kwargs, "is_weight": is_weight})
    if issubclass(cls, ObserverBase):
        grid = grid_of(kwargs, where, cls._per_channel)
        if grid.dtype is None:
            return None
        extra = {"ch_axis": grid.ch_axis} if grid.ch_axis is not None else {}
        return FakeQuantize.with_args(observer=obj, is_weight=is_weight, **extra)
    raise ConfigError(
        f"{where}: {cls.__name__} is not an observer or FakeQuantize of "
        "fxquant.compat.torch_ao (nor an fxquant FakeQuantize)"
    )


def to_fxquant_qconfig(qconfig: QConfig | _FxQConfig | None) -> _FxQConfig:
    """The :class:`fxquant.QConfig` of a torch.ao ``QConfig`` (``None`` -> ``fxquant.FLOAT``)."""
    if qconfig is None:
        return FLOAT
    if isinstance(qconfig, _FxQConfig):
        return qconfig
    if not isinstance(qconfig, tuple) or len(qconfig) != 2:
        raise ConfigError(f"expected a QConfig(activation, weight), got {qconfig!r}")
    act, weight = qconfig
    return _FxQConfig(
        weight=_to_quantizer(weight, True, "QConfig.weight"),
        output=_to_quantizer(act, False, "QConfig.activation"),
    )


default_qconfig = QConfig(activation=default_observer, weight=default_weight_observer)
default_per_channel_qconfig = QConfig(
    activation=default_observer, weight=default_per_channel_weight_observer
)
default_qat_qconfig = QConfig(activation=default_fake_quant, weight=default_weight_fake_quant)


def get_default_qconfig(backend: str = "x86", version: int = 0) -> QConfig:
    """torch.ao's post-training defaults of ``backend`` (x86 / fbgemm / qnnpack / onednn):
    histogram activations (7-bit on x86 / fbgemm), per-channel symmetric int8 weights
    (per-tensor on qnnpack)."""
    engine_profile(backend)
    if backend in ("x86", "fbgemm"):
        return QConfig(activation=HistogramObserver.with_args(reduce_range=True),
                       weight=default_per_channel_weight_observer)
    if backend == "qnnpack":
        return QConfig(activation=HistogramObserver.with_args(reduce_range=False),
                       weight=default_weight_observer)
    return QConfig(activation=HistogramObserver.with_args(reduce_range=False),
                   weight=default_per_channel_weight_observer)


def get_default_qat_qconfig(backend: str = "x86", version: int = 1) -> QConfig:
    """torch.ao's QAT defaults of ``backend``: moving-average activations (7-bit on x86 /
    fbgemm), moving-average symmetric int8 weights (per channel except qnnpack)."""
    engine_profile(backend)
    act = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0,
                                 quant_max=255, reduce_range=backend in ("x86", "fbgemm"))
    if backend == "qnnpack":
        return QConfig(activation=act, weight=default_weight_fake_quant)
    return QConfig(activation=act, weight=default_per_channel_weight_fake_quant)
