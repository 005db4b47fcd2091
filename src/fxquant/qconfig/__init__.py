"""QConfig, setters and templates (precedence: see :mod:`fxquant.qconfig.setters`)."""

from .opinfo import OpInfo, OpKind, SetterContext
from .qconfig import FLOAT, QConfig, get_qconfig
from .setters import (
    ModuleNameQconfigSetter,
    QconfigSetter,
    SetterArg,
    UnknownOpNameError,
    as_setter_tuple,
    resolve_qconfig,
    validate_setters,
)
from .templates import (
    TemplateMode,
    TemplateQconfigSetter,
    activation_factory,
    calibration_8bit_weight_16bit_act_qconfig_setter,
    default_calibration_qconfig_setter,
    default_qat_fixed_act_qconfig_setter,
    default_qat_qconfig_setter,
    qat_8bit_weight_16bit_act_qconfig_setter,
    qat_8bit_weight_16bit_fixed_act_qconfig_setter,
    sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter,
    sensitive_op_qat_8bit_weight_16bit_act_qconfig_setter,
    sensitive_op_qat_8bit_weight_16bit_fixed_act_qconfig_setter,
    weight_factory,
)

SensitiveOpQconfigSetter = TemplateQconfigSetter
"""The setter the ``sensitive_op_*`` presets return (one template class serves all nine)."""

__all__ = [
    "SensitiveOpQconfigSetter",
    "sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter",
    "sensitive_op_qat_8bit_weight_16bit_act_qconfig_setter",
    "sensitive_op_qat_8bit_weight_16bit_fixed_act_qconfig_setter",
    "OpInfo",
    "OpKind",
    "SetterContext",
    "QConfig",
    "FLOAT",
    "get_qconfig",
    "QconfigSetter",
    "SetterArg",
    "ModuleNameQconfigSetter",
    "UnknownOpNameError",
    "as_setter_tuple",
    "resolve_qconfig",
    "validate_setters",
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
