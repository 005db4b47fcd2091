"""AIMET's quantsim config JSON read into an fxquant setter and backend profile.

Honoured: ``defaults.ops`` (``is_output_quantized``, ``is_symmetric``), ``defaults.params``
(``is_quantized``, ``is_symmetric``), ``strict_symmetric`` (narrow weights),
``per_channel_quantization``, ``op_type.<ONNX type>`` (``is_output_quantized``,
``is_symmetric``, ``per_channel_quantization``, ``params.weight.is_quantized``), ``params.weight``,
``model_input.is_input_quantized``.  ``supergroups`` are read but fxquant always quantizes
conv / linear / add + relu / clip only after the activation (the groups AIMET's default config
lists); ``unsigned_symmetric`` is ignored (symmetric activations use the signed grid).
Without a file AIMET's default config applies.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ...backends import BackendProfile, get_profile
from ...errors import ConfigError
from ...fake_quant import FakeQuantize, LearnableFakeQuantize
from ...numerics import QDType
from ...observers import MinMaxObserver, MSEObserver, PercentileObserver
from ...qconfig import FLOAT, OpInfo, OpKind, QConfig, SetterContext
from .common.defs import QuantScheme

__all__ = ["DEFAULT_CONFIG", "AimetConfig", "read_config", "ONNX_OP_TYPES"]

DEFAULT_CONFIG: dict[str, Any] = {
    "defaults": {
        "ops": {"is_output_quantized": "True", "is_symmetric": "False"},
        "params": {"is_quantized": "True", "is_symmetric": "True"},
        "strict_symmetric": "False",
        "unsigned_symmetric": "True",
        "per_channel_quantization": "False",
    },
    "params": {"bias": {"is_quantized": "False"}},
    "op_type": {
        "Squeeze": {"is_output_quantized": "False"},
        "Pad": {"is_output_quantized": "False"},
        "Mean": {"is_output_quantized": "False"},
    },
    "supergroups": [{"op_list": ["Conv", "Relu"]}, {"op_list": ["Conv", "Clip"]},
                    {"op_list": ["ConvTranspose", "Relu"]}, {"op_list": ["Add", "Relu"]},
                    {"op_list": ["Gemm", "Relu"]}],
    "model_input": {"is_input_quantized": "True"},
    "model_output": {},
}
"""AIMET's default quantsim config: asymmetric activations, symmetric per-tensor weights."""

# fxquant op types (module class or function name) -> the ONNX op type AIMET configs name
ONNX_OP_TYPES: dict[str, str] = {
    **dict.fromkeys(("Conv1d", "Conv2d", "Conv3d", "conv1d", "conv2d", "conv3d"), "Conv"),
    **dict.fromkeys(("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"), "ConvTranspose"),
    **dict.fromkeys(("Linear", "linear", "addmm"), "Gemm"),
    **dict.fromkeys(("matmul", "bmm"), "MatMul"),
    **dict.fromkeys(("ReLU", "relu"), "Relu"),
    **dict.fromkeys(("ReLU6", "relu6", "clamp", "Hardtanh", "hardtanh"), "Clip"),
    "add": "Add", "mul": "Mul", "sub": "Sub", "div": "Div", "cat": "Concat",
    "mean": "Mean", "pad": "Pad", "squeeze": "Squeeze", "unsqueeze": "Unsqueeze",
    **dict.fromkeys(("AdaptiveAvgPool2d", "adaptive_avg_pool2d"), "GlobalAveragePool"),
    **dict.fromkeys(("AvgPool1d", "AvgPool2d", "AvgPool3d", "avg_pool2d"), "AveragePool"),
    **dict.fromkeys(("MaxPool1d", "MaxPool2d", "MaxPool3d", "max_pool2d"), "MaxPool"),
    **dict.fromkeys(("Softmax", "softmax"), "Softmax"),
    **dict.fromkeys(("Sigmoid", "sigmoid"), "Sigmoid"),
    **dict.fromkeys(("Tanh", "tanh"), "Tanh"),
    **dict.fromkeys(("view", "reshape", "flatten", "Flatten"), "Reshape"),
    **dict.fromkeys(("permute", "transpose"), "Transpose"),
    **dict.fromkeys(("LayerNorm", "layer_norm"), "LayerNormalization"),
    **dict.fromkeys(("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"), "BatchNormalization"),
    "Embedding": "Gather",
    **dict.fromkeys(("GELU", "gelu"), "Gelu"),
}
"""Which AIMET (ONNX) op type an fxquant op is, for ``op_type`` rules."""


def _bool(v: Any, where: str) -> bool:
    if isinstance(v, bool):
        return v
    if str(v) in ("True", "true"):
        return True
    if str(v) in ("False", "false"):
        return False
    raise ConfigError(f"quantsim config: {where} must be \"True\" or \"False\", got {v!r}")


_OBSERVERS = {
    QuantScheme.post_training_tf: (MinMaxObserver, False),
    QuantScheme.post_training_tf_enhanced: (MSEObserver, False),
    QuantScheme.post_training_percentile: (PercentileObserver, False),
    QuantScheme.training_range_learning_with_tf_init: (MinMaxObserver, True),
    QuantScheme.training_range_learning_with_tf_enhanced_init: (MSEObserver, True),
    QuantScheme.training_range_learning: (MinMaxObserver, True),
}


@dataclass
class AimetConfig:
    """A parsed quantsim config plus the bit widths and scheme of one QuantizationSimModel."""

    raw: dict[str, Any]
    quant_scheme: QuantScheme
    output_bw: int
    param_bw: int
    percentile: float = 99.99
    ignored: list[str] = field(default_factory=list)

    def _op_rule(self, op: OpInfo) -> dict[str, Any]:
        onnx_type = ONNX_OP_TYPES.get(op.op_type)
        return dict(self.raw.get("op_type", {}).get(onnx_type, {})) if onnx_type else {}

    def act_symmetric(self, op: OpInfo | None = None) -> bool:
        rule = self._op_rule(op) if op is not None else {}
        default = self.raw["defaults"]["ops"].get("is_symmetric", "False")
        return _bool(rule.get("is_symmetric", default), "is_symmetric")

    @property
    def weight_symmetric(self) -> bool:
        params = self.raw["defaults"].get("params", {})
        weight = self.raw.get("params", {}).get("weight", {})
        return _bool(weight.get("is_symmetric", params.get("is_symmetric", "True")),
                     "params.is_symmetric")

    @property
    def strict(self) -> bool:
        return _bool(self.raw["defaults"].get("strict_symmetric", "False"), "strict_symmetric")

    def per_channel(self, op: OpInfo | None = None) -> bool:
        rule = self._op_rule(op) if op is not None else {}
        default = self.raw["defaults"].get("per_channel_quantization", "False")
        return _bool(rule.get("per_channel_quantization", default), "per_channel_quantization")

    def act_dtype(self, symmetric: bool) -> QDType:
        return QDType(self.output_bw, signed=symmetric)

    @property
    def weight_dtype(self) -> QDType:
        return QDType(self.param_bw, True, narrow_range=self.strict and self.weight_symmetric)

    def profile(self) -> BackendProfile:
        """The fxquant profile these defaults describe (AIMET's QuantSim divides by scale)."""
        sym = self.act_symmetric()
        return BackendProfile(
            "aimet", activation_dtype=self.act_dtype(sym), weight_dtype=self.weight_dtype,
            activation_symmetric=sym, weight_symmetric=self.weight_symmetric,
            weight_per_channel=self.per_channel(),
            activation_dtype_16=get_profile("generic").activation_dtype_16,
        )

    def _activation(self, op: OpInfo | None) -> Any:
        observer, learnable = _OBSERVERS[self.quant_scheme]
        if observer is PercentileObserver:
            observer = PercentileObserver.with_args(percentile=self.percentile)
        cls = LearnableFakeQuantize if learnable else FakeQuantize
        sym = self.act_symmetric(op)
        return cls.with_args(observer=observer, dtype=self.act_dtype(sym), symmetric=sym)

    def _weight(self, op: OpInfo) -> Any:
        learnable = _OBSERVERS[self.quant_scheme][1]
        cls = LearnableFakeQuantize if learnable else FakeQuantize
        return cls.with_args(observer=MinMaxObserver, dtype=self.weight_dtype,
                             symmetric=self.weight_symmetric,
                             ch_axis=0 if self.per_channel(op) else None, is_weight=True)

    def weight_quantized(self, op: OpInfo) -> bool:
        default = self.raw["defaults"].get("params", {}).get("is_quantized", "True")
        weight = self.raw.get("params", {}).get("weight", {}).get("is_quantized", default)
        rule = self._op_rule(op).get("params", {}).get("weight", {})
        return _bool(rule.get("is_quantized", weight), "params.weight.is_quantized")

    def output_quantized(self, op: OpInfo) -> bool:
        default = self.raw["defaults"]["ops"].get("is_output_quantized", "True")
        return _bool(self._op_rule(op).get("is_output_quantized", default),
                     "is_output_quantized")

    def __call__(self, op: OpInfo, ctx: SetterContext) -> QConfig | None:
        """fxquant setter: the config's quantizers for ``op``."""
        if op.kind is OpKind.INPUT:
            quantized = _bool(self.raw.get("model_input", {}).get("is_input_quantized", "True"),
                              "model_input.is_input_quantized")
            return QConfig(output=self._activation(op)) if quantized else FLOAT
        if op.kind in (OpKind.FLOAT, OpKind.DEQUANT_STUB):
            return None
        weight = self._weight(op) if op.kind is OpKind.WEIGHTED and self.weight_quantized(
            op) else None
        output = self._activation(op) if self.output_quantized(op) else None
        return QConfig(weight=weight, output=output)


def read_config(config_file: str | os.PathLike | dict | None, quant_scheme: Any,
                output_bw: int, param_bw: int) -> AimetConfig:
    """Parse ``config_file`` (a path, a dict, or ``None`` for AIMET's default config)."""
    if config_file is None:
        raw = json.loads(json.dumps(DEFAULT_CONFIG))
    elif isinstance(config_file, dict):
        raw = json.loads(json.dumps(config_file))
    else:
        try:
            with open(config_file, encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read the quantsim config {os.fspath(config_file)!r}: "
                              f"{err}") from None
    if "defaults" not in raw or "ops" not in raw["defaults"]:
        raise ConfigError("quantsim config: a 'defaults' section with 'ops' is required")
    if isinstance(quant_scheme, str):
        try:
            quant_scheme = QuantScheme[quant_scheme]
        except KeyError:
            raise ConfigError(f"unknown quant_scheme {quant_scheme!r}; use one of "
                              f"{[s.name for s in QuantScheme]}") from None
    if not isinstance(quant_scheme, QuantScheme):
        raise ConfigError(f"quant_scheme must be a QuantScheme, got {quant_scheme!r}")
    for bw in (output_bw, param_bw):
        if not isinstance(bw, int) or not 2 <= bw <= 16:
            raise ConfigError(f"bit widths must be ints in [2, 16], got {bw!r}")
    return AimetConfig(raw, quant_scheme, output_bw, param_bw)
