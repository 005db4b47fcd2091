"""``horizon_plugin_pytorch.quantization`` on fxquant.

fxquant's own API follows Horizon's (qconfig setters, templates, ``FakeQuantState``,
``set_fake_quantize``), so most names are fxquant's; this module adds Horizon's ``prepare``
signature (the march picks the profile), ``QuantStub(scale=...)`` and its observer names.

What differs: ``prepare`` needs ``example_inputs`` (fxquant captures with them); ``method`` is
accepted and ignored (fxquant captures with torch.fx and falls back by itself); there is no
``FakeQuantState._FLOAT`` (fxquant's ``FakeQuantState.FLOAT``).
"""

from __future__ import annotations

import enum
from typing import Any

from torch import nn

from .... import FakeQuantize, FakeQuantState, LearnableFakeQuantize, set_fake_quantize
from .... import prepare as _fx_prepare
from ....errors import ConfigError
from ....nn import DeQuantStub
from ....nn import QuantStub as _FxQuantStub
from ....numerics import QDType, qint8
from ....qconfig import QConfig, get_qconfig
from ..march import get_march, march_profile
from . import observer_v2, qconfig_template
from .observer_v2 import (
    FixedScaleObserver,
    KLObserver,
    MinMaxObserver,
    MSEObserver,
    PercentileObserver,
)
from .qconfig_template import (
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
    "PrepareMethod",
    "prepare",
    "QuantStub",
    "DeQuantStub",
    "QConfig",
    "get_qconfig",
    "FakeQuantize",
    "LearnableFakeQuantize",
    "FakeQuantState",
    "set_fake_quantize",
    "MinMaxObserver",
    "MSEObserver",
    "PercentileObserver",
    "KLObserver",
    "FixedScaleObserver",
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
    "observer_v2",
    "qconfig_template",
]


class PrepareMethod(enum.Enum):
    """Horizon's capture methods; fxquant captures the same way for all of them."""

    EAGER = "eager"
    SYMBOLIC = "symbolic"
    JIT = "jit"
    JIT_STRIP = "jit-strip"


class QuantStub(_FxQuantStub):
    """Start of the quantized region; ``scale=`` fixes the input scale (e.g. ``1 / 128`` for
    images normalised to [-1, 1]), with ``zero_point`` and the dtype of ``qconfig``'s output
    (default qint8)."""

    def __init__(self, scale: float | None = None, zero_point: int | None = None,
                 qconfig: Any = None) -> None:
        super().__init__(qconfig)
        self.scale = scale
        self.zero_point = zero_point


def _fixed_stub_qconfig(stub: QuantStub) -> QConfig:
    dtype: QDType = qint8
    q = getattr(stub, "qconfig", None)
    if isinstance(q, QConfig) and q.output is not None:
        dtype = q.output.arg("dtype") or qint8
    return QConfig(output=FakeQuantize.with_args(
        observer=FixedScaleObserver.with_args(scale=float(stub.scale), dtype=dtype,
                                              zero_point=int(stub.zero_point or 0)),
        dtype=dtype))


def prepare(model: nn.Module, example_inputs: Any = None, qconfig_setter: Any = None,
            method: PrepareMethod | str | None = None, *, inplace: bool = False,
            **kwargs: Any) -> nn.Module:
    """:func:`fxquant.prepare` with Horizon's signature.

    Args:
        model: the float model (untouched unless ``inplace``).
        example_inputs: one batch (required: fxquant captures with it).
        qconfig_setter: a setter or a tuple of setters (earlier wins); ``None`` uses the model's
            ``qconfig`` attribute if it has one, else ``default_qat_qconfig_setter``.
        method: accepted for compatibility.
        kwargs: passed to :func:`fxquant.prepare` (``leaf_modules``, ``skip_modules`` ...).

    The backend profile comes from :func:`~fxquant.compat.horizon.march.get_march`;
    ``QuantStub(scale=...)`` stubs get fixed-scale quantizers.
    """
    if example_inputs is None:
        raise ConfigError("prepare: fxquant needs example_inputs (one batch) to capture the "
                          "model: prepare(model, example_inputs, qconfig_setter=...)")
    if qconfig_setter is None:
        q = getattr(model, "qconfig", None)
        qconfig_setter = q if isinstance(q, QConfig) else default_qat_qconfig_setter
    setters = qconfig_setter if isinstance(qconfig_setter, (tuple, list)) else (qconfig_setter,)
    fixed = {name: _fixed_stub_qconfig(m) for name, m in model.named_modules()
             if isinstance(m, QuantStub) and m.scale is not None}
    if fixed:
        setters = (ModuleNameQconfigSetter(fixed), *setters)
    return _fx_prepare(model, example_inputs, tuple(setters), backend=march_profile(get_march()),
                       inplace=inplace, **kwargs)
