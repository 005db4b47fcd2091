"""NVIDIA ``quant_modules``: build quantized layers from plain ``torch.nn`` code.

``initialize()`` replaces ``torch.nn.Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``, ``Linear``,
``LSTM``, ``LSTMCell``, ``AvgPool1d/2d/3d`` and ``AdaptiveAvgPool1d/2d/3d`` by their quantized
versions, so models built afterwards (``torch.nn.Conv2d(...)``) are quantized; ``deactivate()``
puts torch's classes back.  Code that imported a class by name before (``from torch.nn import
Conv2d``) keeps torch's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from ...errors import ConfigError
from .nn import QUANT_MODULES, TensorQuantizer

__all__ = ["initialize", "deactivate", "enable_onnx_export", "QuantModuleReplacementHelper"]


class QuantModuleReplacementHelper:
    """Swaps ``torch.nn`` attributes for quantized classes and restores them."""

    def __init__(self) -> None:
        self.originals: dict[str, Any] = {}

    def prepare_state(self, float_module_list: Iterable[str] | None = None,
                      custom_quant_modules: Iterable[tuple[Any, str, type]] | None = None
                      ) -> list[tuple[Any, str, type]]:
        skip = set(float_module_list or ())
        entries = [(torch.nn, name, cls) for name, cls in QUANT_MODULES.items()
                   if name not in skip]
        for entry in custom_quant_modules or ():
            if len(entry) != 3:
                raise ConfigError("custom_quant_modules entries are (module, 'ClassName', "
                                  "QuantClass)")
            entries.append(tuple(entry))  # type: ignore[arg-type]
        return entries

    def apply_quant_modules(self, entries: list[tuple[Any, str, type]]) -> None:
        for owner, name, cls in entries:
            key = f"{owner.__name__}.{name}"
            self.originals.setdefault(key, (owner, name, getattr(owner, name)))
            setattr(owner, name, cls)

    def restore_float_modules(self) -> None:
        for owner, name, original in self.originals.values():
            setattr(owner, name, original)
        self.originals.clear()


_helper = QuantModuleReplacementHelper()


def initialize(float_module_list: Iterable[str] | None = None,
               custom_quant_modules: Iterable[tuple[Any, str, type]] | None = None) -> None:
    """Layers built from ``torch.nn`` from now on are quantized (except the class names in
    ``float_module_list``); ``custom_quant_modules``: extra ``(module, name, class)``."""
    _helper.apply_quant_modules(_helper.prepare_state(float_module_list, custom_quant_modules))


def deactivate() -> None:
    """Put torch's own classes back into ``torch.nn``."""
    _helper.restore_float_modules()


@contextlib.contextmanager
def enable_onnx_export() -> Iterator[None]:
    """Inside: quantizers call torch's fake-quantize ops, which ``torch.onnx.export`` writes as
    QuantizeLinear / DequantizeLinear."""
    old = TensorQuantizer.use_fb_fake_quant
    TensorQuantizer.use_fb_fake_quant = True
    try:
        yield
    finally:
        TensorQuantizer.use_fb_fake_quant = old
