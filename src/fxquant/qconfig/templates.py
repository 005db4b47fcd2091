"""Template setters: int8 (or int16-activation) everywhere, shaped by the backend profile.

``default_*`` templates put int8 weights and activations on every quantizable op, except the ops
that compute a ``grid_sample`` grid, which get 16-bit activations (grid coordinates need them).
``*_8bit_weight_16bit_act_*`` templates use 16-bit activations everywhere.

* calibration templates: histogram MSE activation observers (best PTQ ranges);
* qat templates: moving-average min/max activation observers, re-estimated every step;
* qat ``fixed_act`` templates: activation scales found by calibration stay fixed in QAT.

Weights: min/max, per channel when the profile says so.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .._utils import Factory
from ..backends import BackendProfile
from ..fake_quant import FakeQuantize
from ..observers import MinMaxObserver, MovingAverageMinMaxObserver, MSEObserver
from .opinfo import OpInfo, OpKind, SetterContext
from .qconfig import QConfig

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


def activation_factory(profile: BackendProfile, mode: TemplateMode, bits16: bool) -> Factory:
    """The activation quantizer a template uses under ``profile``."""
    dtype = profile.activation_dtype_16 if bits16 else profile.activation_dtype
    return FakeQuantize.with_args(
        observer=_act_observer(mode),
        dtype=dtype,
        symmetric=profile.activation_symmetric_16 if bits16 else profile.activation_symmetric,
        power_of_two=profile.power_of_two,
        scale_math=profile.scale_math,
        fixed_in_qat=mode is TemplateMode.QAT_FIXED_ACT,
    )


def weight_factory(profile: BackendProfile) -> Factory:
    """The weight quantizer a template uses under ``profile``."""
    return FakeQuantize.with_args(
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
    """A template: a QConfig for every quantizable op, built from the backend profile.

    Attributes:
        mode: :class:`TemplateMode`.
        act16: 16-bit activations everywhere (else 8-bit, 16-bit on the grid_sample grid path).
    """

    mode: TemplateMode
    act16: bool = False

    def __call__(self, op: OpInfo, ctx: SetterContext) -> QConfig | None:
        if op.kind in (OpKind.FLOAT, OpKind.DEQUANT_STUB):
            return None
        bits16 = self.act16 or op.name in ctx.grid_path
        out = activation_factory(ctx.profile, self.mode, bits16)
        weight = weight_factory(ctx.profile) if op.kind is OpKind.WEIGHTED else None
        return QConfig(weight=weight, output=out)

    def __repr__(self) -> str:
        bits = "8bit_weight_16bit_act" if self.act16 else "default"
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
