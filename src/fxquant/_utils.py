"""Small shared helpers: ``with_args`` factories, buffers whose shape is set on first use, and
string-valued choice enums."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, bounded

__all__ = ["Factory", "WithArgs", "LazyShapeBuffers", "as_factory", "Choice", "as_path",
           "has_hooks"]


def has_hooks(module: nn.Module) -> bool:
    """Whether ``module`` has forward / backward hooks of its own (a fused path that skips its
    call must not skip them)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def as_path(value: Any, what: str) -> str:
    """``value`` (a str or ``os.PathLike``) as a str; :class:`ConfigError` naming ``what`` (the
    function / argument) otherwise (an int would be taken as a file descriptor)."""
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if isinstance(path, str):
            return path
    raise ConfigError(f"{what} must be a file path (str or pathlib.Path), got "
                      f"{bounded(repr(value))}")


@dataclass(frozen=True)
class Factory:
    """A class plus frozen keyword arguments; calling it builds a fresh instance.

    ``Factory.with_args`` adds or replaces arguments and returns a new factory.
    """

    cls: type
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __call__(self, **override: Any) -> Any:
        return self.cls(**{**dict(self.kwargs), **override})

    def with_args(self, **kwargs: Any) -> Factory:
        merged = {**dict(self.kwargs), **kwargs}
        return Factory(self.cls, tuple(sorted(merged.items())))

    def arg(self, key: str, default: Any = None) -> Any:
        """The value of keyword ``key`` (``default`` if not set)."""
        return dict(self.kwargs).get(key, default)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_short(v)}" for k, v in self.kwargs)
        return f"{self.cls.__name__}.with_args({args})"


def _short(v: Any) -> str:
    if isinstance(v, type):
        return v.__name__
    return repr(v)


class WithArgs:
    """Mixin giving a class the ``Cls.with_args(**kwargs) -> Factory`` constructor."""

    @classmethod
    def with_args(cls, **kwargs: Any) -> Factory:
        return Factory(cls, tuple(sorted(kwargs.items())))


def as_factory(obj: Any) -> Factory:
    """Accept a class, a :class:`Factory` or a ``functools.partial`` and return a Factory."""
    if isinstance(obj, Factory):
        return obj
    if isinstance(obj, type):
        return Factory(obj)
    func = getattr(obj, "func", None)
    if isinstance(func, type):  # functools.partial
        return Factory(func, tuple(sorted(obj.keywords.items())))
    raise TypeError(f"expected a class or a with_args(...) factory, got {obj!r}")


class LazyShapeBuffers(nn.Module):
    """Module whose buffers take the shape found in a loaded ``state_dict``.

    Per-channel statistics are sized on first observation; a freshly built module must still
    accept a checkpoint taken after calibration.
    """

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        for name, buf in list(self._buffers.items()):
            key = prefix + name
            if buf is not None and key in state_dict and state_dict[key].shape != buf.shape:
                self._buffers[name] = torch.empty_like(state_dict[key], device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Choice(str, enum.Enum):
    """An enum of documented string choices (``runtime=``, ``reference=``, ``stages=`` ...).

    Members equal their string value (``Runtime.ONNXRUNTIME == "onnxruntime"``) and print as
    it, so the documented strings keep working; :meth:`parse` turns either into a member.
    """

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def parse(cls, value: Any, what: str | None = None) -> Any:
        """The member for ``value`` (a member or its string); :class:`ConfigError` naming
        ``what`` (the argument) and the valid choices otherwise."""
        if isinstance(value, cls):
            return value
        for member in cls:
            if value == member.value:
                return member
        name = what or cls.__name__
        raise ConfigError(
            f"{name} must be one of {[m.value for m in cls]}, got {bounded(repr(value))}"
        )
