"""Observer specs: which observer class, with which arguments, as frozen JSON-able data.

An :class:`ObserverSpec` is what a quantizer spec (:class:`fxquant.fake_quant.QuantizerSpec`)
holds for its statistics: the observer type and its constructor arguments (never ``ch_axis``,
which the quantizer decides).  It validates itself on creation (the arguments are tried on the
observer), builds fresh observers (:meth:`factory`) and round-trips through a dict of plain JSON
values (:meth:`to_dict` / :meth:`from_dict`; only fxquant's own observer types are serialisable).

>>> spec = ObserverSpec.of(FixedScaleObserver(scale=0.25))
>>> spec.to_dict()
{'type': 'FixedScaleObserver', 'args': {'scale': 0.25}}
>>> ObserverSpec.from_dict(spec.to_dict()) == spec
True
"""

from __future__ import annotations

import enum
import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch

from .._utils import Factory, as_factory
from ..errors import CheckpointError, ConfigError, bounded, bounded_list
from ..numerics import QDType, dtype_by_name
from .base import Observer
from .fixed import FixedScaleObserver, check_scale
from .histogram import HistogramObserver, MSEObserver, PercentileObserver
from .minmax import MinMaxObserver, MovingAverageMinMaxObserver

__all__ = ["ObserverSpec", "OBSERVER_TYPES", "check_scale"]

OBSERVER_TYPES: dict[str, type[Observer]] = {
    t.__name__: t
    for t in (MinMaxObserver, MovingAverageMinMaxObserver, HistogramObserver,
              PercentileObserver, MSEObserver, FixedScaleObserver)
}
"""The observer types a spec can be serialised with, by name."""

_QUANTIZER_ARGS = frozenset({"self", "ch_axis"})  # decided by the quantizer, not the observer


def _plain(owner: str, name: str, value: Any) -> Any:
    """``value`` as a plain JSON value (QDType -> its name, enum -> its value, 0-d tensor ->
    number); :class:`ConfigError` for anything else."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, QDType):
        return value.name
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{owner}: argument {name!r} must be finite, got {value!r}")
        return value
    raise ConfigError(
        f"{owner}: argument {name!r} = {bounded(repr(value))} is not a number, string or dtype"
    )


def _parameters(cls: type[Observer]) -> list[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name not in _QUANTIZER_ARGS
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _defaults(cls: type[Observer]) -> dict[str, Any]:
    """Constructor defaults as plain values (those that have one)."""
    out = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name not in _QUANTIZER_ARGS and p.default is not p.empty:
            try:
                out[p.name] = _plain(cls.__name__, p.name, p.default)
            except ConfigError:
                pass
    return out


@dataclass(frozen=True)
class ObserverSpec:
    """An observer type and its arguments (plain JSON values, sorted by name).

    Attributes:
        type: an :class:`~fxquant.observers.Observer` subclass.
        args: ``((name, value), ...)``; a dict is accepted too.  Arguments equal to the
            constructor's defaults are left out, so equal configurations give equal specs.
    """

    type: type[Observer] = MinMaxObserver
    args: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not (isinstance(self.type, type) and issubclass(self.type, Observer)):
            raise ConfigError(
                f"observer must be an Observer class (e.g. fxquant.MinMaxObserver), got "
                f"{bounded(repr(self.type))}"
            )
        owner = f"observer {self.type.__name__}"
        raw = dict(self.args)
        valid = _parameters(self.type)
        unknown = [k for k in raw if k not in valid]
        if unknown:
            raise ConfigError(
                f"{owner}: unknown argument(s) {bounded_list(unknown)}; it takes "
                f"{bounded_list(valid) or 'no arguments'} (ch_axis comes from the quantizer)"
            )
        if issubclass(self.type, FixedScaleObserver) and "scale" in raw:
            check_scale("FixedScaleObserver: fixed scale", raw["scale"])
        defaults = _defaults(self.type)
        args = tuple(sorted(
            (k, v) for k, v in ((k, _plain(owner, k, v)) for k, v in raw.items())
            if k not in defaults or defaults[k] != v  # canonical: defaults left out
        ))
        object.__setattr__(self, "args", args)
        if issubclass(self.type, FixedScaleObserver) and "scale" in raw:
            check_scale("FixedScaleObserver: fixed scale", dict(args)["scale"])
        try:
            self.type(**self.kwargs())
        except ConfigError:
            raise  # names the observer already
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{owner}: {bounded(exc, 300)}") from None

    def kwargs(self) -> dict[str, Any]:
        """The constructor arguments (dtype names back as :class:`~fxquant.numerics.QDType`)."""
        out = dict(self.args)
        if isinstance(out.get("dtype"), str):
            out["dtype"] = dtype_by_name(out["dtype"])
        return out

    def arg(self, name: str, default: Any = None) -> Any:
        """One constructor argument (``default`` when not given)."""
        return self.kwargs().get(name, default)

    def factory(self) -> Factory:
        """A factory of fresh observers (what a quantizer's ``observer=`` takes)."""
        return Factory(self.type, tuple(sorted(self.kwargs().items())))

    def with_args(self, **args: Any) -> ObserverSpec:
        """The same observer type with ``args`` added / replaced."""
        return ObserverSpec(self.type, (*self.args, *args.items()))

    @classmethod
    def of(cls, observer: Observer) -> ObserverSpec:
        """The spec a fresh observer identical in configuration to ``observer`` is built from
        (its constructor arguments read back from its attributes)."""
        args = {}
        for name in _parameters(type(observer)):
            if not hasattr(observer, name):
                raise ConfigError(
                    f"observer {type(observer).__name__} does not keep its argument {name!r} "
                    "as an attribute, so no spec can describe it"
                )
            args[name] = getattr(observer, name)
        return cls(type(observer), tuple(args.items()))

    @classmethod
    def from_factory(cls, obj: Any) -> ObserverSpec:
        """A spec from an observer class, ``Observer.with_args(...)`` factory, partial or spec."""
        if isinstance(obj, ObserverSpec):
            return obj
        try:
            fac = as_factory(obj)
        except TypeError:
            raise ConfigError(
                f"observer must be an Observer class or Observer.with_args(...), got "
                f"{bounded(repr(obj))}"
            ) from None
        return cls(fac.cls, fac.kwargs)

    def to_dict(self) -> dict[str, Any]:
        """``{"type": name, "args": {...}}`` (fxquant's observer types only)."""
        if OBSERVER_TYPES.get(self.type.__name__) is not self.type:
            raise ConfigError(
                f"observer {self.type.__name__} is not one of fxquant's "
                f"({bounded_list(OBSERVER_TYPES)}), so a spec with it cannot be serialised"
            )
        return {"type": self.type.__name__, "args": dict(self.args)}

    @classmethod
    def from_dict(cls, data: Any) -> ObserverSpec:
        """Inverse of :meth:`to_dict`; :class:`CheckpointError` for anything else."""
        if not isinstance(data, dict) or not isinstance(data.get("args", {}), dict):
            raise CheckpointError(f"observer spec: expected {{'type', 'args'}}, got "
                                  f"{bounded(repr(data))}")
        obs_type = OBSERVER_TYPES.get(data.get("type"))  # type: ignore[arg-type]
        if obs_type is None:
            raise CheckpointError(
                f"observer spec: unknown observer type {bounded(repr(data.get('type')))}; "
                f"known: {bounded_list(OBSERVER_TYPES)}"
            )
        try:
            return cls(obs_type, tuple(data.get("args", {}).items()))
        except ConfigError as exc:
            raise CheckpointError(f"observer spec: {exc}") from None

    def __repr__(self) -> str:
        if not self.args:
            return self.type.__name__
        args = ", ".join(f"{k}={v!r}" for k, v in self.args)
        return f"{self.type.__name__}.with_args({args})"
