"""Template setters: one parameterised class, :class:`TemplateQconfigSetter`, and its nine
presets, shaped by the backend profile.

``default_*`` templates put int8 weights and activations on every quantizable op, except the ops
that compute a ``grid_sample`` grid, which get 16-bit activations (grid coordinates need them).
``*_8bit_weight_16bit_act_*`` templates use 16-bit activations everywhere.
``sensitive_op_*_8bit_weight_16bit_act_*`` presets take a sensitivity table first
(``preset(table, topk=N)`` or ``preset(table, ratio=r)``) and give 16-bit activations to the
most sensitive ops only (see :mod:`fxquant.qconfig.sensitive`).

* calibration templates: histogram MSE activation observers (best PTQ ranges);
* qat templates: moving-average min/max activation observers, re-estimated every step;
* qat ``fixed_act`` templates: activation scales found by calibration stay fixed in QAT.

Weights: min/max, per channel when the profile says so.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..backends import BackendProfile
from ..errors import ConfigError
from ..fake_quant import QuantizerSpec
from ..observers import MinMaxObserver, MovingAverageMinMaxObserver, MSEObserver
from .opinfo import OpInfo, OpKind, SetterContext
from .qconfig import QConfig
from .sensitive import select_count, table_rows
from .setters import ModuleNameQconfigSetter

__all__ = [
    "TemplateMode",
    "TemplateQconfigSetter",
    "activation_factory",
    "weight_factory",
    "default_calibration_qconfig_setter",
    "default_qat_qconfig_setter",
    "default_qat_fixed_act_qconfig_setter",
    "calibration_8bit_weight_16bit_act_qconfig_setter",
    "qat_8bit_weight_16bit_act_qconfig_setter",
    "qat_8bit_weight_16bit_fixed_act_qconfig_setter",
    "sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter",
    "sensitive_op_qat_8bit_weight_16bit_act_qconfig_setter",
    "sensitive_op_qat_8bit_weight_16bit_fixed_act_qconfig_setter",
]


class TemplateMode(enum.Enum):
    """Which stage a template serves (decides observers and QAT behaviour)."""

    CALIBRATION = "calibration"
    QAT = "qat"
    QAT_FIXED_ACT = "qat_fixed_act"


def _act_observer(mode: TemplateMode):
    if mode is TemplateMode.CALIBRATION:
        return MSEObserver
    return MovingAverageMinMaxObserver


def activation_factory(profile: BackendProfile, mode: TemplateMode, bits16: bool) -> QuantizerSpec:
    """The activation quantizer a template uses under ``profile``."""
    dtype = profile.activation_dtype_16 if bits16 else profile.activation_dtype
    return QuantizerSpec(
        observer=_act_observer(mode),
        dtype=dtype,
        symmetric=profile.activation_symmetric_16 if bits16 else profile.activation_symmetric,
        power_of_two=profile.power_of_two,
        scale_math=profile.scale_math,
        fixed_in_qat=mode is TemplateMode.QAT_FIXED_ACT,
    )


def weight_factory(profile: BackendProfile) -> QuantizerSpec:
    """The weight quantizer a template uses under ``profile``."""
    return QuantizerSpec(
        observer=MinMaxObserver,
        dtype=profile.weight_dtype,
        symmetric=profile.weight_symmetric,
        ch_axis=0 if profile.weight_per_channel else None,
        power_of_two=profile.power_of_two,
        scale_math=profile.scale_math,
        is_weight=True,
    )


@dataclass(frozen=True)
class TemplateQconfigSetter:
    """A template: a QConfig for every quantizable op (or for ``ops``), built from the profile.

    Attributes:
        mode: :class:`TemplateMode`.
        act16: 16-bit activations (else 8-bit, 16-bit on the grid_sample grid path).
        ops: only these ops get an opinion (``None``: every quantizable op).
        from_table: a preset that takes a sensitivity table first: ``preset(table, topk=N)``
            (or ``ratio=r``) returns this template with ``act16`` for the table's ``N`` most
            sensitive ops (:meth:`select`).

    >>> from fxquant.qconfig import default_qat_qconfig_setter as t
    >>> t.mode.value, t.act16, t.ops is None
    ('qat', False, True)
    """

    mode: TemplateMode
    act16: bool = False
    ops: frozenset[str] | None = None
    from_table: bool = False

    def __call__(self, op: Any, ctx: SetterContext | None = None, *,
                 topk: int | None = None, ratio: float | None = None) -> Any:
        if self.from_table:
            if isinstance(op, OpInfo):
                raise ConfigError(
                    f"{self!r} selects ops from a sensitivity table: call it with the table "
                    "first, e.g. preset(table, topk=5), and use the setter it returns"
                )
            return self.select(op, topk=topk, ratio=ratio)
        return self._qconfig(op, ctx)

    def _qconfig(self, op: OpInfo, ctx: SetterContext) -> QConfig | None:
        if op.kind in (OpKind.FLOAT, OpKind.DEQUANT_STUB):
            return None
        if self.ops is not None and op.name not in self.ops:
            return None
        bits16 = self.act16 or op.name in ctx.grid_path
        out = activation_factory(ctx.profile, self.mode, bits16)
        weight = weight_factory(ctx.profile) if op.kind is OpKind.WEIGHTED else None
        return QConfig(weight=weight, output=out)

    def select(self, table: Any, topk: int | None = None,
               ratio: float | None = None) -> TemplateQconfigSetter:
        """This template with 16-bit activations on the first ``topk`` rows (or
        ``ceil(ratio * rows)``) of a sensitivity table (a table, its rows or a saved file)."""
        rows = table_rows(table)
        k = select_count(len(rows), topk, ratio)
        return dataclasses.replace(self, act16=True, ops=frozenset(r[0] for r in rows[:k]),
                                   from_table=False)

    def validate(self, op_names: Iterable[str]) -> None:
        """An ``ops`` name that matches no op raises :class:`~fxquant.UnknownOpNameError`."""
        if self.ops is not None:
            ModuleNameQconfigSetter({n: QConfig() for n in self.ops}).validate(op_names)

    def __repr__(self) -> str:
        bits = "8bit_weight_16bit_act" if self.act16 else "default"
        if self.from_table:
            return (f"<sensitive_op {bits} {self.mode.value} template: call with (table, "
                    "topk=N | ratio=r)>")
        if self.ops is not None:
            return f"<sensitive ops {sorted(self.ops)}: 8bit weight 16bit act, {self.mode.value}>"
        return f"<{bits} {self.mode.value} qconfig setter>"


default_calibration_qconfig_setter = TemplateQconfigSetter(TemplateMode.CALIBRATION)
default_qat_qconfig_setter = TemplateQconfigSetter(TemplateMode.QAT)
default_qat_fixed_act_qconfig_setter = TemplateQconfigSetter(TemplateMode.QAT_FIXED_ACT)
calibration_8bit_weight_16bit_act_qconfig_setter = TemplateQconfigSetter(
    TemplateMode.CALIBRATION, act16=True
)
qat_8bit_weight_16bit_act_qconfig_setter = TemplateQconfigSetter(TemplateMode.QAT, act16=True)
qat_8bit_weight_16bit_fixed_act_qconfig_setter = TemplateQconfigSetter(
    TemplateMode.QAT_FIXED_ACT, act16=True
)
sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter = TemplateQconfigSetter(
    TemplateMode.CALIBRATION, act16=True, from_table=True
)
"""Calibration template quantizers, 16-bit activations on the top rows of a sensitivity table:
``sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter(table, topk=N)``."""
sensitive_op_qat_8bit_weight_16bit_act_qconfig_setter = TemplateQconfigSetter(
    TemplateMode.QAT, act16=True, from_table=True
)
"""QAT template quantizers, 16-bit activations on the top rows of a sensitivity table."""
sensitive_op_qat_8bit_weight_16bit_fixed_act_qconfig_setter = TemplateQconfigSetter(
    TemplateMode.QAT_FIXED_ACT, act16=True, from_table=True
)
"""QAT fixed-activation template quantizers, 16-bit activations on the top rows of a table."""
