"""``horizon_plugin_pytorch.quantization.qconfig_template``: fxquant's template setters (the
same names, the same precedence: earlier setters in a tuple win)."""

from ....qconfig import (
    ModuleNameQconfigSetter,
    calibration_8bit_weight_16bit_act_qconfig_setter,
    default_calibration_qconfig_setter,
    default_qat_fixed_act_qconfig_setter,
    default_qat_qconfig_setter,
    qat_8bit_weight_16bit_act_qconfig_setter,
    qat_8bit_weight_16bit_fixed_act_qconfig_setter,
    sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter,
    sensitive_op_qat_8bit_weight_16bit_act_qconfig_setter,
    sensitive_op_qat_8bit_weight_16bit_fixed_act_qconfig_setter,
)

__all__ = [
    "ModuleNameQconfigSetter",
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
