"""torch.ao's FX graph mode API (its ``quantize_fx`` module) on fxquant.

``prepare_fx(model, qconfig_mapping, example_inputs)`` is :func:`fxquant.prepare` with the
mapping as setter and ``torch.backends.quantized.engine``'s profile, left observing
(``FakeQuantState.CALIBRATION``); ``prepare_qat_fx`` leaves it training
(``FakeQuantState.QAT``); ``convert_fx`` is :func:`fxquant.convert` on that engine.  fxquant
captures what torch.fx cannot trace instead of failing (float islands, eager capture).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ... import FakeQuantState, set_fake_quantize
from ... import convert as _fx_convert
from ... import prepare as _fx_prepare
from .eager import convert_backend, prepared_module
from .qconfig import QConfig, engine_profile, to_fxquant_qconfig
from .qconfig_mapping import QConfigMapping

__all__ = [
    "PrepareCustomConfig",
    "fuse_fx",
    "prepare_fx",
    "prepare_qat_fx",
    "convert_fx",
    "convert_to_reference_fx",
]


class PrepareCustomConfig:
    """The part of torch.ao's ``PrepareCustomConfig`` fxquant uses: non-traceable modules
    (kept as leaves: quantized at their boundary, float inside)."""

    def __init__(self) -> None:
        self.non_traceable_module_names: list[str] = []
        self.non_traceable_module_classes: list[type] = []

    def set_non_traceable_module_names(self, names: list[str]) -> PrepareCustomConfig:
        self.non_traceable_module_names = list(names)
        return self

    def set_non_traceable_module_classes(self, classes: list[type]) -> PrepareCustomConfig:
        self.non_traceable_module_classes = list(classes)
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrepareCustomConfig:
        c = cls()
        c.set_non_traceable_module_names(d.get("non_traceable_module_name", []))
        c.set_non_traceable_module_classes(d.get("non_traceable_module_class", []))
        return c


def _setter(qconfig_mapping: Any) -> Any:
    if isinstance(qconfig_mapping, QConfigMapping):
        return qconfig_mapping.setter()
    if isinstance(qconfig_mapping, dict):
        return QConfigMapping.from_dict(qconfig_mapping).setter()
    if isinstance(qconfig_mapping, QConfig):
        return to_fxquant_qconfig(qconfig_mapping)
    return qconfig_mapping  # an fxquant setter / QConfig


def _leaves(model: nn.Module, custom: Any) -> list[str]:
    if custom is None:
        return []
    if isinstance(custom, dict):
        custom = PrepareCustomConfig.from_dict(custom)
    names = list(custom.non_traceable_module_names)
    classes = tuple(custom.non_traceable_module_classes)
    if classes:
        names += [p for p, m in model.named_modules() if p and isinstance(m, classes)]
    return names


def _prepare_fx(model: nn.Module, qconfig_mapping: Any, example_inputs: Any,
                custom: Any, state: FakeQuantState) -> nn.Module:
    gm = _fx_prepare(model, example_inputs, _setter(qconfig_mapping), backend=engine_profile(),
                     leaf_modules=_leaves(model, custom))
    set_fake_quantize(gm, state)
    gm.train(model.training)
    return gm


def fuse_fx(model: nn.Module, fuse_custom_config: Any = None,
            backend_config: Any = None) -> nn.Module:
    """A copy of ``model``: fxquant fuses conv / linear + BN + relu itself in prepare."""
    return copy.deepcopy(model)


def prepare_fx(model: nn.Module, qconfig_mapping: Any, example_inputs: Any,
               prepare_custom_config: Any = None, _equalization_config: Any = None,
               backend_config: Any = None) -> nn.Module:
    """Prepare for post-training calibration: run data through the result, then
    :func:`convert_fx`.  ``qconfig_mapping``: a :class:`QConfigMapping`, torch.ao's dict form,
    a ``QConfig`` or any fxquant setter."""
    return _prepare_fx(model, qconfig_mapping, example_inputs, prepare_custom_config,
                       FakeQuantState.CALIBRATION)


def prepare_qat_fx(model: nn.Module, qconfig_mapping: Any, example_inputs: Any,
                   prepare_custom_config: Any = None, backend_config: Any = None) -> nn.Module:
    """Prepare for quantization-aware training (train the result, then :func:`convert_fx`)."""
    return _prepare_fx(model, qconfig_mapping, example_inputs, prepare_custom_config,
                       FakeQuantState.QAT)


def convert_fx(graph_module: nn.Module, convert_custom_config: Any = None,
               _remove_qconfig: bool = True, qconfig_mapping: Any = None,
               backend_config: Any = None) -> nn.Module:
    """A real int8 model on the engine the model was prepared for (:func:`fxquant.convert`)."""
    gm = prepared_module(graph_module)
    return _fx_convert(gm, backend=convert_backend(gm), keep_float=True)


def convert_to_reference_fx(graph_module: nn.Module, convert_custom_config: Any = None,
                            _remove_qconfig: bool = True, qconfig_mapping: Any = None,
                            backend_config: Any = None) -> nn.Module:
    """The reference (simulated) model: a copy with every quantizer frozen (VALIDATION)."""
    gm = copy.deepcopy(prepared_module(graph_module)).eval()
    return set_fake_quantize(gm, FakeQuantState.VALIDATION)
