"""Reading sensitivity tables for the ``sensitive_op_*`` template presets.

``sensitive_op_<mode>_8bit_weight_16bit_act_qconfig_setter(table, topk=N)`` or ``(table,
ratio=r)`` (exactly one; presets of :class:`~fxquant.qconfig.templates.TemplateQconfigSetter`):
the first ``N`` rows (or ``ceil(r * len(table))`` rows) of a table from
:func:`fxquant.debug.sensitivity` select ops; each selected op gets 16-bit output activations
and the profile's 8-bit weights (the template quantizers of ``<mode>``).  A ``"weight"`` row
selects its op too (its activations go to 16 bits; weights stay 8-bit, as the name says -- use
:class:`~fxquant.ModuleNameQconfigSetter` for 16-bit weights).  Every other op gets no opinion
(``None``), so the setter goes *before* a template in a setter tuple (earlier wins)::

    setter = (sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter(table, ratio=0.1),
              default_calibration_qconfig_setter)

``table`` may be a :class:`~fxquant.debug.SensitivityTable`, its rows (lists
``[op_name, kind, op_type, value, dtype, flops]``, e.g. ``torch.load`` of a saved table) or the
path of a saved table.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from ..errors import ConfigError, bounded

__all__ = ["table_rows", "select_count"]


def table_rows(table: Any) -> list[list[Any]]:
    """The rows of a sensitivity table, its rows, or the path of a saved table."""
    if isinstance(table, (str, os.PathLike)):
        table = torch.load(os.fspath(table), weights_only=True)
    as_lists = getattr(table, "as_lists", None)
    if as_lists is not None:
        return as_lists()
    rows = [list(r) for r in table]
    for r in rows:
        if len(r) < 2 or not isinstance(r[0], str):
            raise ConfigError(f"not a sensitivity table row: {bounded(repr(r))}")
    return rows


def select_count(n: int, topk: int | None, ratio: float | None) -> int:
    """How many of ``n`` rows ``topk`` / ``ratio`` select (exactly one must be given; a ratio
    rounds up)."""
    if (topk is None) == (ratio is None):
        raise ConfigError("give exactly one of topk= or ratio=")
    if topk is not None:
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 0:
            raise ConfigError(f"topk must be an int >= 0, got {bounded(repr(topk))}")
        return min(n, topk)
    if not 0.0 <= float(ratio) <= 1.0:
        raise ConfigError(f"ratio must be in [0, 1], got {bounded(repr(ratio))}")
    return min(n, math.ceil(float(ratio) * n - 1e-9))
