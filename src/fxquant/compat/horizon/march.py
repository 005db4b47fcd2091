"""Horizon's ``march`` (BPU architecture) and the fxquant profile each one maps to.

Every BPU runs symmetric int8 / int16 with per-channel int8 weights (fxquant's ``generic``
profile); Bernoulli BPUs also need power-of-two scales (``horizon_bernoulli``: ``generic`` with
``power_of_two=True``).
"""

from __future__ import annotations

import dataclasses
import enum

from ...backends import BackendProfile, get_profile
from ...errors import ConfigError

__all__ = ["March", "set_march", "get_march", "march_profile"]


class March(str, enum.Enum):
    """BPU architectures (values are Horizon's march strings)."""

    BERNOULLI = "bernoulli"
    BERNOULLI2 = "bernoulli2"
    BAYES = "bayes"
    BAYES_E = "bayes-e"
    NASH = "nash"
    NASH_E = "nash-e"
    NASH_M = "nash-m"
    NASH_P = "nash-p"
    META = "meta"


_march: March = March.BAYES


def set_march(march: March | str) -> None:
    """Select the target BPU (default ``March.BAYES``); :func:`prepare` reads it."""
    global _march
    try:
        _march = March(march)
    except ValueError:
        raise ConfigError(
            f"unknown march {march!r}; use one of {[m.value for m in March]}"
        ) from None


def get_march() -> March:
    """The current target BPU."""
    return _march


def march_profile(march: March | str | None = None) -> BackendProfile:
    """The fxquant backend profile of ``march`` (default: the current one)."""
    m = March(march) if march is not None else _march
    generic = get_profile("generic")
    if m in (March.BERNOULLI, March.BERNOULLI2):
        return dataclasses.replace(generic, name="horizon_bernoulli", power_of_two=True)
    return generic
