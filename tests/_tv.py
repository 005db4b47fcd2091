"""torchvision for tests: import it through :func:`torchvision_models` (its compiled ops do not
load next to the CPU torch; :mod:`bench._tv_shim` lets its pure-Python parts import)."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import pytest
from bench._tv_shim import ensure_torchvision_importable

__all__ = ["torchvision_module", "transformers_module"]


def torchvision_module(name: str = "torchvision.models") -> ModuleType:
    """``importlib.import_module(name)`` after the shim; skips the test where torchvision is not
    installed (``make venv`` installs it)."""
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed (`make venv` installs it)")
    ensure_torchvision_importable()
    return importlib.import_module(name)


def transformers_module() -> ModuleType:
    """``import transformers`` (it imports torchvision when installed: the shim goes first);
    skips the test where transformers is not installed (the ``dev`` extra installs it)."""
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed (the dev extra installs it)")
    ensure_torchvision_importable()
    return importlib.import_module("transformers")
