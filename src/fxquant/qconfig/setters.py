"""Qconfig setters and how several of them combine.

Precedence (the one place it is defined; tested in tests/qconfig/test_setters.py):

1. ``qconfig_setter`` may be one setter or a tuple of setters.  For each op the setters are asked
   in order and **the first one with an opinion (not ``None``) decides the op's whole QConfig**;
   earlier setters win.
2. Inside :class:`ModuleNameQconfigSetter`, an exact op name beats a module prefix, and a longer
   prefix beats a shorter one (``"backbone.layer1"`` beats ``"backbone"``).
3. An op no setter has an opinion on stays in float (reported by :func:`fxquant.summary`).
4. A fused conv -> relu output uses the qconfig of the conv (the pattern's root).

A setter is any object with ``__call__(op: OpInfo, ctx: SetterContext) -> QConfig | None``.
A bare :class:`QConfig` may be used as a setter that applies to every op.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from ..errors import ConfigError, UnknownOpNameError, bounded, bounded_list
from .opinfo import OpInfo, SetterContext
from .qconfig import QConfig

__all__ = [
    "QconfigSetter",
    "ModuleNameQconfigSetter",
    "SetterArg",
    "as_setter_tuple",
    "resolve_qconfig",
    "validate_setters",
    "UnknownOpNameError",
]


class QconfigSetter(Protocol):
    """Anything that maps an op to a QConfig (or ``None`` for "no opinion")."""

    def __call__(self, op: OpInfo, ctx: SetterContext) -> QConfig | None: ...


SetterArg = QconfigSetter | QConfig | Iterable[Any]


class _GlobalSetter:
    def __init__(self, qconfig: QConfig) -> None:
        self.qconfig = qconfig

    def __call__(self, op: OpInfo, ctx: SetterContext) -> QConfig | None:
        return self.qconfig

    def __repr__(self) -> str:
        return f"GlobalQconfigSetter({self.qconfig!r})"


class ModuleNameQconfigSetter:
    """Override the qconfig of ops by name.

    Keys are op names as :func:`fxquant.summary` prints them (``"linear2"``, ``"relu_1"``,
    ``"_generated_add_0"``, ``"layer1._generated_add_0"``) or module paths, which then apply to
    every op inside that module.  Values are :class:`QConfig` (``fxquant.qconfig.FLOAT`` keeps
    the op float).  A key that matches no op raises :class:`UnknownOpNameError` at prepare time,
    listing the closest valid names.
    """

    def __init__(self, qconfigs: Mapping[str, QConfig]) -> None:
        if not isinstance(qconfigs, Mapping):
            raise ConfigError(f"ModuleNameQconfigSetter takes a {{name: QConfig}} dict, got "
                              f"{type(qconfigs).__name__}")
        for k, v in qconfigs.items():
            if not isinstance(k, str):
                raise ConfigError(f"ModuleNameQconfigSetter: keys are op names or module paths "
                                  f"(str), got {bounded(repr(k))}")
            if not isinstance(v, QConfig):
                raise ConfigError(
                    f"ModuleNameQconfigSetter[{bounded(k)!r}] must be a QConfig (e.g. "
                    f"fxquant.get_qconfig() or fxquant.FLOAT), got {bounded(repr(v))}"
                )
        self.qconfigs = dict(qconfigs)

    def _match(self, name: str) -> str | None:
        if name in self.qconfigs:
            return name
        best = None
        for key in self.qconfigs:
            if name.startswith(key + ".") and (best is None or len(key) > len(best)):
                best = key
        return best

    def __call__(self, op: OpInfo, ctx: SetterContext) -> QConfig | None:
        key = self._match(op.name)
        return None if key is None else self.qconfigs[key]

    def validate(self, op_names: Iterable[str]) -> None:
        """Raise :class:`UnknownOpNameError` for keys that match no op."""
        names = list(op_names)
        for key in self.qconfigs:
            if any(n == key or n.startswith(key + ".") for n in names):
                continue
            close = difflib.get_close_matches(key, names, n=5, cutoff=0.4)
            hint = (
                f" closest valid names: {bounded_list(close)}" if close
                else f" valid names include: {bounded_list(names)}"
            )
            raise UnknownOpNameError(
                f"ModuleNameQconfigSetter: {bounded(key)!r} is not an op or module of the "
                f"model;{hint}. See fxquant.summary(prepared_model) for every op name."
            )

    def __repr__(self) -> str:
        return f"ModuleNameQconfigSetter({sorted(self.qconfigs)})"


_SETTER_HINT = (
    "a qconfig setter is a QConfig, a {name: QConfig} dict, a callable (op, ctx) -> QConfig | "
    "None such as fxquant.default_qat_qconfig_setter, or a tuple of them"
)


def as_setter_tuple(arg: SetterArg) -> tuple[QconfigSetter, ...]:
    """Normalise one setter, a QConfig, a ``{name: QConfig}`` dict or a sequence of them;
    :class:`~fxquant.ConfigError` for anything else."""
    if isinstance(arg, QConfig):
        return (_GlobalSetter(arg),)
    if isinstance(arg, Mapping):
        return (ModuleNameQconfigSetter(arg),)
    if callable(arg) and not isinstance(arg, type):
        return (arg,)
    if isinstance(arg, Iterable) and not isinstance(arg, (str, bytes)):
        out: list[QconfigSetter] = []
        for item in arg:
            out.extend(as_setter_tuple(item))
        return tuple(out)
    hint = ""
    if isinstance(arg, str):
        hint = (" (a preset is an object, not its name: e.g. "
                "fxquant.default_calibration_qconfig_setter)")
    raise ConfigError(f"qconfig_setter: got {bounded(repr(arg))}{hint}; {_SETTER_HINT}")


def resolve_qconfig(
    setters: tuple[QconfigSetter, ...], op: OpInfo, ctx: SetterContext
) -> QConfig | None:
    """The first opinion among ``setters`` (earlier wins), or ``None``."""
    for s in setters:
        q = s(op, ctx)
        if q is not None:
            if not isinstance(q, QConfig):
                raise ConfigError(
                    f"qconfig setter {bounded(repr(s))} returned {bounded(repr(q))} for op "
                    f"{bounded(op.name)!r}; a setter returns a QConfig or None"
                )
            return q
    return None


def validate_setters(setters: tuple[QconfigSetter, ...], op_names: Iterable[str]) -> None:
    """Let every setter that can check its names do so."""
    names = list(op_names)
    for s in setters:
        check = getattr(s, "validate", None)
        if check is not None:
            check(names)
