"""fxquant's exceptions: one small hierarchy under :class:`FxquantError`.

Every error fxquant raises for a user mistake is a subclass of :class:`FxquantError` (and of the
built-in exception a caller would naturally catch: ``ValueError`` for bad values (a
:class:`ConfigError` is also a ``TypeError``: a wrong value and a wrong type of an argument are
one mistake), ``KeyError`` for unknown names, ``ImportError`` for a missing optional dependency
...).  Its message names
the module / op / quantizer / file / argument concerned and says what to do, and it is bounded
in length whatever the input: long names and long lists are shortened by :func:`bounded` /
:func:`bounded_list`, and the whole message is capped at :data:`MAX_MESSAGE` characters.

=====================  ======================================================================
class                  raised when
=====================  ======================================================================
ConfigError            an argument, QConfig, setter or backend cannot be used as given (wrong
                       type or value, e.g. a model that fxquant.prepare did not return)
DataError              calibration / evaluation data is not something the model can take
CaptureError           the model cannot be captured or prepared (e.g. prepared twice)
QuantizerError         a quantizer is used in a way it cannot serve (no scale yet ...)
ObserverError          an observer saw bad data (NaN / Inf) or cannot answer a request
ExportError            a model (or one op of it) cannot be exported as asked
VerifyError            an exported file does not belong to the model it is checked against
EncodingsError         an encodings file cannot be written or loaded
ConvertError           a model cannot be converted to torch's integer kernels as asked
CheckpointError        a checkpoint cannot be written, or loaded (format, version, contents)
UnknownOpNameError     a name given to a setter / option matches no op of the model
MissingDependencyError an optional dependency is not installed (names the extra to install)
=====================  ======================================================================
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType
from typing import Any

__all__ = [
    "MAX_MESSAGE",
    "FxquantError",
    "ConfigError",
    "DataError",
    "CaptureError",
    "QuantizerError",
    "ObserverError",
    "ExportError",
    "VerifyError",
    "EncodingsError",
    "ConvertError",
    "CheckpointError",
    "UnknownOpNameError",
    "MissingDependencyError",
    "bounded",
    "bounded_list",
    "require",
]

MAX_MESSAGE = 600
"""No fxquant error message is longer than this many characters."""


def bounded(value: Any, limit: int = 80) -> str:
    """``str(value)`` shortened to about ``limit`` characters (head ... tail, with the length).

    >>> bounded("x" * 1000, 20)
    'xxxxxxxx...xxxxxxxx (1000 chars)'
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    keep = max(4, (limit - 4) // 2)
    return f"{text[:keep]}...{text[-keep:]} ({len(text)} chars)"


def bounded_list(items: Iterable[Any], limit: int = 5, item_limit: int = 60) -> str:
    """At most ``limit`` items, each :func:`bounded`, then ``(+N more)``.

    >>> bounded_list(["a", "b", "c"], limit=2)
    "'a', 'b' (+1 more)"
    """
    items = list(items)
    shown = ", ".join(repr(bounded(i, item_limit)) for i in items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _cap(message: str) -> str:
    if len(message) <= MAX_MESSAGE:
        return message
    half = (MAX_MESSAGE - 20) // 2
    return f"{message[:half]} [...] {message[-half:]}"


class FxquantError(Exception):
    """Base of every error fxquant raises for a user mistake; the message is bounded."""

    def __init__(self, *args: Any) -> None:
        if args and isinstance(args[0], str):
            args = (_cap(args[0]), *args[1:])
        super().__init__(*args)

    def __str__(self) -> str:  # KeyError subclasses would repr() the message
        return str(self.args[0]) if self.args else ""


class ConfigError(FxquantError, ValueError, TypeError):
    """An argument, QConfig, setter or backend cannot be used as given (a wrong value or type)."""


class DataError(FxquantError, ValueError):
    """Calibration / evaluation data is not something the model can take."""


class CaptureError(FxquantError, RuntimeError):
    """The model cannot be captured or prepared as given."""


class QuantizerError(FxquantError, RuntimeError):
    """A quantizer was used in a way it cannot serve (e.g. no scale yet)."""


class ObserverError(FxquantError, ValueError):
    """Bad observed data (NaN / Inf) or a request that the observer cannot answer."""


class ExportError(FxquantError, RuntimeError):
    """The model (or an op of it) cannot be exported as asked; the message says what to do."""


class VerifyError(FxquantError, RuntimeError):
    """An exported file does not belong to the model it is verified / compared against."""


class EncodingsError(FxquantError, ValueError):
    """An encodings file or model that cannot be exported / loaded (the message names tensors)."""


class ConvertError(FxquantError, RuntimeError):
    """The model cannot be converted to torch's quantized kernels as asked."""


class CheckpointError(FxquantError, ValueError):
    """A checkpoint cannot be written, or loaded: wrong file, newer format version, bad contents,
    a model that does not match it."""


class UnknownOpNameError(FxquantError, KeyError):
    """A name given to a setter matches no op of the model."""


class MissingDependencyError(FxquantError, ImportError):
    """An optional dependency is missing; the message names the ``pip install`` that adds it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import optional dependency ``module`` or raise :class:`MissingDependencyError`.

    ``extra`` is the fxquant extra that installs it (``onnx``, ``openvino``, ``report`` ...),
    ``purpose`` what it is needed for (``"export_onnx"``).  Call it up front, before any work.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the optional package {module!r}, which is not installed "
            f"({type(exc).__name__}: {bounded(exc, 120)}); install it with "
            f"pip install 'fxquant[{extra}]'"
        ) from None
