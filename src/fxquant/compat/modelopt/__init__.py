"""NVIDIA ModelOpt's ``modelopt.torch.quantization`` names on fxquant:
``import fxquant.compat.modelopt as mtq`` instead of ``import modelopt.torch.quantization as
mtq``.

>>> import torch
>>> import fxquant.compat.modelopt as mtq
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
>>> data = [torch.randn(2, 3, 8, 8) for _ in range(2)]
>>> def forward_loop(m):
...     for x in data:
...         m(x)
>>> model = mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)
>>> model[0].input_quantizer.amax.numel(), model[0].weight_quantizer.amax.shape
(1, torch.Size([4, 1, 1, 1]))

``quantize`` swaps conv / linear / pooling layers in place for the quantized layers of
:mod:`fxquant.compat.pytorch_quantization` (same numerics as ModelOpt's int8 fake quantization:
``amax``-based, scale ``127 / amax``), applies the config's wildcard rules in order (later rules
win; ``parent_class`` restricts a rule to quantizers of that layer type) and calibrates with
``forward_loop`` (``algorithm="max"``).  Layers keep ``input_quantizer`` / ``weight_quantizer``;
there is no ``output_quantizer`` (ModelOpt's int8 configs disable it).  Export for TensorRT:
:func:`export_onnx`.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn as torch_nn

from ...errors import ConfigError
from ..pytorch_quantization import export_onnx
from ..pytorch_quantization.nn import QUANT_MODULES, TensorQuantizer
from ..pytorch_quantization.tensor_quant import QuantDescriptor
from . import nn

__all__ = [
    "INT8_DEFAULT_CFG",
    "INT8_WEIGHT_ONLY_CFG",
    "quantize",
    "calibrate",
    "disable_quantizer",
    "enable_quantizer",
    "print_quant_summary",
    "export_onnx",
    "TensorQuantizer",
    "nn",
]

_DISABLED_LAYERS = ["nn.BatchNorm1d", "nn.BatchNorm2d", "nn.BatchNorm3d", "nn.LeakyReLU",
                    "nn.Embedding"]

INT8_DEFAULT_CFG: dict[str, Any] = {
    "quant_cfg": [
        {"quantizer_name": "*", "enable": False},
        {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}},
        {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": 8, "axis": None}},
        {"quantizer_name": "*lm_head*", "enable": False},
        {"quantizer_name": "*output_layer*", "enable": False},
        *({"quantizer_name": "*", "parent_class": c, "enable": False} for c in _DISABLED_LAYERS),
    ],
    "algorithm": "max",
}
"""ModelOpt's int8 preset: per-channel weights (axis 0), per-tensor inputs, max calibration."""

INT8_WEIGHT_ONLY_CFG: dict[str, Any] = {
    "quant_cfg": [
        {"quantizer_name": "*", "enable": False},
        {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}},
        {"quantizer_name": "*lm_head*", "enable": False},
    ],
    "algorithm": "max",
}
"""Per-channel int8 weights only."""

_SETTINGS = ("num_bits", "axis", "unsigned", "narrow_range", "fake_quant", "calib_method")


def _rules(config: Any) -> list[dict[str, Any]]:
    """The config's rules as a list of ``{"quantizer_name", "parent_class", "enable", "cfg"}``
    (ModelOpt's list form, or its older ``{pattern: settings}`` dict form)."""
    quant_cfg = config.get("quant_cfg", {}) if isinstance(config, dict) else config
    if isinstance(quant_cfg, dict):
        rules = []
        for pattern, settings in quant_cfg.items():
            settings = dict(settings)
            enable = settings.pop("enable", None)
            rule: dict[str, Any] = {"quantizer_name": "*" if pattern == "default" else pattern}
            if enable is not None:
                rule["enable"] = enable
            if settings:
                rule["cfg"] = settings
            rules.append(rule)
        # "default" applies first, whatever its position
        return sorted(rules, key=lambda r: r["quantizer_name"] != "*")
    return [dict(r) for r in quant_cfg]


def _parent_matches(parent: torch_nn.Module, parent_class: str | None) -> bool:
    if parent_class is None:
        return True
    name = parent_class.split(".")[-1]
    return any(c.__name__ == name for c in type(parent).__mro__)


def _quantizers(model: torch_nn.Module) -> Iterator[tuple[str, TensorQuantizer, torch_nn.Module]]:
    for path, m in model.named_modules():
        for attr, q in m._modules.items():
            if isinstance(q, TensorQuantizer):
                name = attr.lstrip("_")
                yield (f"{path}.{name}" if path else name), q, m


def _descriptor(q: TensorQuantizer, cfg: dict[str, Any]) -> QuantDescriptor:
    unknown = set(cfg) - set(_SETTINGS)
    if unknown:
        raise ConfigError(f"mtq config: unsupported quantizer settings {sorted(unknown)}; "
                          f"supported: {list(_SETTINGS)}")
    num_bits = cfg.get("num_bits", q.num_bits)
    if not isinstance(num_bits, int):
        raise ConfigError(f"mtq config: only integer num_bits are supported, got {num_bits!r}")
    return QuantDescriptor(num_bits=num_bits, axis=cfg.get("axis", q.axis),
                           unsigned=cfg.get("unsigned", q.unsigned),
                           narrow_range=cfg.get("narrow_range", q.narrow_range),
                           fake_quant=cfg.get("fake_quant", True),
                           calib_method=cfg.get("calib_method", "max"))


def _apply_rules(model: torch_nn.Module, rules: list[dict[str, Any]]) -> None:
    for name, q, parent in list(_quantizers(model)):
        for rule in rules:
            if not fnmatch.fnmatch(name, rule.get("quantizer_name", "*")):
                continue
            if not _parent_matches(parent, rule.get("parent_class")):
                continue
            if "cfg" in rule:
                attr = "_input_quantizer" if name.endswith("input_quantizer") else \
                    "_weight_quantizer"
                q = TensorQuantizer(_descriptor(q, rule["cfg"]))
                parent._modules[attr] = q
            if "enable" in rule:
                (q.enable if rule["enable"] else q.disable)()
            elif "cfg" in rule:
                q.enable()


def _replace_layers(model: torch_nn.Module) -> torch_nn.Module:
    for name, child in list(model.named_children()):
        cls = QUANT_MODULES.get(type(child).__name__)
        if cls is not None and type(child).__module__.startswith("torch.nn"):
            q = cls.__new__(cls)
            q.__dict__.update(child.__dict__)
            q._modules = dict(child._modules)
            weight_desc = getattr(cls, "default_quant_desc_weight", None)
            if weight_desc is not None:
                q.init_quantizer(cls.default_quant_desc_input, weight_desc)
            else:
                q.init_quantizer(cls.default_quant_desc_input)
            setattr(model, name, q)
        else:
            _replace_layers(child)
    return model


def calibrate(model: torch_nn.Module, algorithm: str | dict | None = "max",
              forward_loop: Callable[[torch_nn.Module], Any] | None = None) -> torch_nn.Module:
    """Run ``forward_loop(model)`` with the enabled quantizers collecting statistics, then set
    their amax (``algorithm="max"``; ``None`` skips calibration).  Without a ``forward_loop``
    only weight quantizers are calibrated (from the weights); the others stay dynamic."""
    if isinstance(algorithm, dict):
        algorithm = algorithm.get("method", "max")
    if algorithm is None:
        return model
    if algorithm != "max":
        raise ConfigError(f"mtq: calibration algorithm {algorithm!r} is not supported (use "
                          "'max'; fxquant's AdaRound / AutoQuant cover the other recipes)")
    active = [(q, parent) for name, q, parent in _quantizers(model) if q.is_enabled]
    if forward_loop is None:  # weights need no data; anything else stays dynamic
        for q, parent in active:
            if q is getattr(parent, "_weight_quantizer", None):
                q._calibrator.collect(parent.weight.detach())
                q.load_calib_amax()
        return model
    active = [q for q, _ in active]
    for q in active:
        q.disable_quant()
        q.enable_calib()
    forward_loop(model)
    for q in active:
        q.load_calib_amax(strict=False)
        q.enable_quant()
        q.disable_calib()
    return model


def quantize(model: torch_nn.Module, config: dict[str, Any],
             forward_loop: Callable[[torch_nn.Module], Any] | None = None) -> torch_nn.Module:
    """Quantize ``model`` in place: swap layers, apply ``config``'s rules, calibrate with
    ``forward_loop``; returns ``model``."""
    config = copy.deepcopy(config)
    _replace_layers(model)
    _apply_rules(model, _rules(config))
    return calibrate(model, config.get("algorithm", "max"), forward_loop)


def disable_quantizer(model: torch_nn.Module,
                      wildcard_or_filter: str | Callable[[str], bool]) -> None:
    """Disable the quantizers whose name matches (a wildcard, or a ``name -> bool``)."""
    for name, q, _ in _quantizers(model):
        if _match(name, wildcard_or_filter):
            q.disable()


def enable_quantizer(model: torch_nn.Module,
                     wildcard_or_filter: str | Callable[[str], bool]) -> None:
    """Enable the quantizers whose name matches."""
    for name, q, _ in _quantizers(model):
        if _match(name, wildcard_or_filter):
            q.enable()


def _match(name: str, pattern: str | Callable[[str], bool]) -> bool:
    return pattern(name) if callable(pattern) else fnmatch.fnmatch(name, pattern)


def print_quant_summary(model: torch_nn.Module) -> None:
    """Print every quantizer with its settings."""
    rows = list(_quantizers(model))
    width = max((len(n) for n, _, _ in rows), default=0)
    for name, q, _ in rows:
        print(f"{name:<{width}}  TensorQuantizer({q.extra_repr()})")
    print(f"{len(rows)} TensorQuantizers found in model")
