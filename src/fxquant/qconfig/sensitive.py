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

from .._utils import as_path
from ..errors import CheckpointError, ConfigError, bounded

__all__ = ["table_rows", "select_count", "load_table"]


def load_table(path: str | os.PathLike[str]) -> list[list[Any]]:
    """The rows of a table saved by ``SensitivityTable.save`` (``torch.load`` with
    ``weights_only=True``); :class:`CheckpointError` naming the file when it is not one."""
    path = as_path(path, "the sensitivity table path")
    shown = repr(bounded(path, 120))
    try:
        rows = torch.load(path, weights_only=True)
    except OSError as err:
        raise CheckpointError(f"cannot read sensitivity table {shown}: "
                              f"{err.strerror or err}; check the path") from None
    except Exception as err:  # unpickling errors, truncated / foreign files
        raise CheckpointError(
            f"{shown} is not a sensitivity table saved by fxquant ({type(err).__name__}: "
            f"{bounded(str(err).splitlines()[0] if str(err) else '', 80)}); pass the .pt file "
            "SensitivityTable.save wrote"
        ) from None
    if not isinstance(rows, list):
        raise CheckpointError(f"{shown} is not a sensitivity table (it holds a "
                              f"{type(rows).__name__}, not a list of rows)")
    return rows


def table_rows(table: Any) -> list[list[Any]]:
    """The rows of a sensitivity table, its rows, or the path of a saved table."""
    if isinstance(table, (str, os.PathLike)):
        table = load_table(table)
    as_lists = getattr(table, "as_lists", None)
    if as_lists is not None:
        return as_lists()
    try:
        rows = [list(r) for r in table]
    except TypeError:
        raise ConfigError(f"a sensitivity table is a SensitivityTable, its rows or the path of a "
                          f"saved one; got {type(table).__name__}") from None
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
