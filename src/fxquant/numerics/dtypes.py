"""Quantized integer dtypes as small frozen objects.

A :class:`QDType` is described by its bit width, signedness and whether it uses the
*narrow* (symmetric) range.  ``qmin``/``qmax`` are derived here and nowhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ..errors import ConfigError, bounded

__all__ = [
    "QDType",
    "qint4",
    "quint4",
    "qint8",
    "quint8",
    "qint16",
    "quint16",
    "qint32",
    "dtype_by_name",
]


@dataclass(frozen=True)
class QDType:
    """An integer quantization grid.

    Attributes:
        bits: bit width (2..32).
        signed: two's complement signed when True (the default), unsigned otherwise.
        narrow_range: drop the most negative code of a signed type (int8 -> [-127, 127]) or
            the zero code of an unsigned one ([1, 255]), as TensorRT / NVIDIA use for weights.

    >>> qint8.qmin, qint8.qmax, qint8.narrow().qmin
    (-128, 127, -127)
    """

    bits: int
    signed: bool = True
    narrow_range: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) \
                or not 2 <= self.bits <= 32:
            raise ConfigError(
                f"QDType.bits must be an int in [2, 32], got {bounded(repr(self.bits))}; "
                "e.g. fxquant.qint8 / qint16 / qint4"
            )
        for name in ("signed", "narrow_range"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or value not in (True, False):
                raise ConfigError(f"QDType.{name} must be True or False, got "
                                  f"{bounded(repr(value))}")
            object.__setattr__(self, name, bool(value))  # numpy / torch bools -> bool

    @property
    def qmin(self) -> int:
        """Smallest integer code."""
        base = -(1 << (self.bits - 1)) if self.signed else 0
        return base + 1 if self.narrow_range else base

    @property
    def qmax(self) -> int:
        """Largest integer code."""
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def symmetric_zero_point(self) -> int:
        """Zero point of a symmetric range: 0 when signed, the middle code
        ``(qmin + qmax + 1) // 2`` when unsigned (128 for ``quint8``)."""
        return 0 if self.signed else (self.qmin + self.qmax + 1) // 2

    @property
    def levels(self) -> int:
        """Number of representable codes, ``qmax - qmin + 1``."""
        return self.qmax - self.qmin + 1

    @property
    def name(self) -> str:
        """Canonical name, e.g. ``qint8`` or ``qint8_narrow``."""
        base = f"{'q' if self.signed else 'qu'}int{self.bits}"
        return base + ("_narrow" if self.narrow_range else "")

    def narrow(self, on: bool = True) -> QDType:
        """The same dtype with ``narrow_range`` set to ``on``."""
        return replace(self, narrow_range=on)

    def __repr__(self) -> str:  # short, used in tables and error messages
        return self.name


qint4 = QDType(4, True)
quint4 = QDType(4, False)
qint8 = QDType(8, True)
quint8 = QDType(8, False)
qint16 = QDType(16, True)
quint16 = QDType(16, False)
qint32 = QDType(32, True)

_BY_NAME = {d.name: d for d in (qint4, quint4, qint8, quint8, qint16, quint16, qint32)}
_NAME = re.compile(r"q(?P<sign>u?)int(?P<bits>[0-9]{1,2})(?P<narrow>_narrow)?")


def dtype_by_name(name: str) -> QDType:
    """Parse a :attr:`QDType.name` (``qint8``, ``quint8_narrow``, ``quint7`` ...) back into a
    :class:`QDType`: every width from 2 to 32 bits, signed or not, narrow or not.

    >>> dtype_by_name("quint7"), dtype_by_name("qint8_narrow").qmin
    (quint7, -127)
    """
    if not isinstance(name, str):
        raise ConfigError(f"a quantized dtype name is a str (e.g. 'qint8'), got "
                          f"{bounded(repr(name))}")
    m = _NAME.fullmatch(name)
    if m is None or not 2 <= int(m["bits"]) <= 32 or m["bits"].startswith("0"):
        raise ConfigError(
            f"unknown quantized dtype {bounded(name)!r}; valid: q(u)int<bits>[_narrow] with "
            f"2 <= bits <= 32, e.g. {sorted(_BY_NAME)}"
        )
    return QDType(int(m["bits"]), m["sign"] == "", narrow_range=m["narrow"] is not None)
