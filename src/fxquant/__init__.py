"""fxquant: graph-mode quantization of unmodified PyTorch models.

Typical flow::

    qmodel = fxquant.prepare(model, example_inputs, fxquant.default_calibration_qconfig_setter)
    fxquant.calibrate(qmodel, loader)          # PTQ: scales frozen afterwards
    fxquant.set_fake_quantize(qmodel, fxquant.FakeQuantState.QAT)   # optional QAT
"""

from .algorithms import (
    AutoQuant,
    Relu6Policy,
    adaround,
    bias_correction,
    calibrate,
    equalize,
    fold_bn,
    reconstruct,
)
from .backends import PROFILES, BackendProfile, Placement, get_profile
from .convert import ConvertedModel, ConvertError, convert
from .debug import compare, report, search_mixed_precision, sensitivity, summary
from .export import (
    ExportError,
    ExportResult,
    VerifyReport,
    export_encodings,
    export_onnx,
    load_encodings,
    verify,
)
from .fake_quant import (
    FakeQuantize,
    FakeQuantState,
    LearnableFakeQuantize,
    QuantizerError,
    fake_quantize_state,
    set_fake_quantize,
)
from .graph import prepare
from .numerics import (
    PerChannel,
    PerTensor,
    QDType,
    ScaleMath,
    qint4,
    qint8,
    qint16,
    qint32,
    quint4,
    quint8,
    quint16,
)
from .observers import (
    FixedScaleObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    Observer,
    ObserverError,
    PercentileObserver,
    RangeMethod,
)
from .qconfig import (
    FLOAT,
    ModuleNameQconfigSetter,
    QConfig,
    UnknownOpNameError,
    calibration_8bit_weight_16bit_act_qconfig_setter,
    default_calibration_qconfig_setter,
    default_qat_fixed_act_qconfig_setter,
    default_qat_qconfig_setter,
    get_qconfig,
    qat_8bit_weight_16bit_act_qconfig_setter,
    qat_8bit_weight_16bit_fixed_act_qconfig_setter,
    sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter,
    sensitive_op_qat_8bit_weight_16bit_act_qconfig_setter,
    sensitive_op_qat_8bit_weight_16bit_fixed_act_qconfig_setter,
)

__version__ = "0.1.0"

__all__ = [
    "prepare",
    "calibrate",
    "fold_bn",
    "equalize",
    "Relu6Policy",
    "bias_correction",
    "AutoQuant",
    "adaround",
    "reconstruct",
    "summary",
    "compare",
    "sensitivity",
    "report",
    "search_mixed_precision",
    "export_onnx",
    "ExportResult",
    "ExportError",
    "verify",
    "VerifyReport",
    "export_encodings",
    "load_encodings",
    "convert",
    "ConvertedModel",
    "ConvertError",
    "FakeQuantize",
    "LearnableFakeQuantize",
    "FakeQuantState",
    "QuantizerError",
    "set_fake_quantize",
    "fake_quantize_state",
    "QConfig",
    "FLOAT",
    "get_qconfig",
    "ModuleNameQconfigSetter",
    "UnknownOpNameError",
    "default_calibration_qconfig_setter",
    "default_qat_qconfig_setter",
    "default_qat_fixed_act_qconfig_setter",
    "calibration_8bit_weight_16bit_act_qconfig_setter",
    "qat_8bit_weight_16bit_act_qconfig_setter",
    "qat_8bit_weight_16bit_fixed_act_qconfig_setter",
    "sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter",
    "sensitive_op_qat_8bit_weight_16bit_act_qconfig_setter",
    "sensitive_op_qat_8bit_weight_16bit_fixed_act_qconfig_setter",
    "Observer",
    "ObserverError",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "FixedScaleObserver",
    "HistogramObserver",
    "PercentileObserver",
    "MSEObserver",
    "RangeMethod",
    "QDType",
    "qint4",
    "quint4",
    "qint8",
    "quint8",
    "qint16",
    "quint16",
    "qint32",
    "PerTensor",
    "PerChannel",
    "ScaleMath",
    "BackendProfile",
    "Placement",
    "PROFILES",
    "get_profile",
    "__version__",
]
