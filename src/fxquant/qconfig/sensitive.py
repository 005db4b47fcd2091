"""Setters that move the most sensitive ops of a sensitivity table to 16-bit activations.

``sensitive_op_<mode>_8bit_weight_16bit_act_qconfig_setter(table, topk=N)`` or ``(table,
ratio=r)`` (exactly one): the first ``N`` rows (or ``ceil(r * len(table))`` rows) of a table from
:func:`fxquant.debug.sensitivity` select ops; each selected op gets 16-bit output activations
and the profile's 8-bit weights (the template quantizers of ``<mode>``).  A ``"weight"`` row
selects its op too (its activations go to 16 bits; weights stay 8-bit, as the name says — use
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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from .opinfo import OpInfo, OpKind, SetterContext
from .qconfig import QConfig
from .setters import ModuleNameQconfigSetter
from .templates import TemplateMode, activation_factory, weight_factory

__all__ = [
    "SensitiveOpQconfigSetter",
    "sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter",
    "sensitive_op_qat_8bit_weight_16bit_act_qconfig_setter",
    "sensitive_op_qat_8bit_weight_16bit_fixed_act_qconfig_setter",
]


def _rows(table: Any) -> list[list[Any]]:
    if isinstance(table, (str, os.PathLike)):
        table = torch.load(os.fspath(table), weights_only=True)
    as_lists = getattr(table, "as_lists", None)
    if as_lists is not None:
        return as_lists()
    rows = [list(r) for r in table]
    for r in rows:
        if len(r) < 2 or not isinstance(r[0], str):
            raise ValueError(f"not a sensitivity table row: {r!r}")
    return rows


def _count(n: int, topk: int | None, ratio: float | None) -> int:
    if (topk is None) == (ratio is None):
        raise ValueError("give exactly one of topk= or ratio=")
    if topk is not None:
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 0:
            raise ValueError(f"topk must be an int >= 0, got {topk!r}")
        return min(n, topk)
    if not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio!r}")
    return min(n, math.ceil(float(ratio) * n - 1e-9))


@dataclass(frozen=True)
class SensitiveOpQconfigSetter:
    """16-bit activations + 8-bit weights for the ops in ``ops``; no opinion elsewhere."""

    ops: frozenset[str]
    mode: TemplateMode

    def __call__(self, op: OpInfo, ctx: SetterContext) -> QConfig | None:
        if op.name not in self.ops or op.kind in (OpKind.FLOAT, OpKind.DEQUANT_STUB):
            return None
        out = activation_factory(ctx.profile, self.mode, bits16=True)
        weight = weight_factory(ctx.profile) if op.kind is OpKind.WEIGHTED else None
        return QConfig(weight=weight, output=out)

    def validate(self, op_names: Iterable[str]) -> None:
        ModuleNameQconfigSetter({n: QConfig() for n in self.ops}).validate(op_names)

    def __repr__(self) -> str:
        return f"<sensitive ops {sorted(self.ops)}: 8bit weight 16bit act, {self.mode.value}>"


def _make(mode: TemplateMode, table: Any, topk: int | None, ratio: float | None):
    rows = _rows(table)
    k = _count(len(rows), topk, ratio)
    return SensitiveOpQconfigSetter(frozenset(r[0] for r in rows[:k]), mode)


def sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter(
    table: Any, topk: int | None = None, ratio: float | None = None
) -> SensitiveOpQconfigSetter:
    """Calibration template quantizers, 16-bit activations on the top rows of ``table``."""
    return _make(TemplateMode.CALIBRATION, table, topk, ratio)


def sensitive_op_qat_8bit_weight_16bit_act_qconfig_setter(
    table: Any, topk: int | None = None, ratio: float | None = None
) -> SensitiveOpQconfigSetter:
    """QAT template quantizers, 16-bit activations on the top rows of ``table``."""
    return _make(TemplateMode.QAT, table, topk, ratio)


def sensitive_op_qat_8bit_weight_16bit_fixed_act_qconfig_setter(
    table: Any, topk: int | None = None, ratio: float | None = None
) -> SensitiveOpQconfigSetter:
    """QAT fixed-activation template quantizers, 16-bit activations on the top rows."""
    return _make(TemplateMode.QAT_FIXED_ACT, table, topk, ratio)
