"""torch.ao's ``QConfigMapping`` as an fxquant setter.

Precedence is torch.ao's: global < object type < module-name regex < module name < module
name + object type + call index (the last is accepted and treated as the module name).
A ``None`` qconfig keeps the matched ops float.  Object types are module classes (exact type,
as in torch.ao), functions (``torch.add``, ``operator.add``, ``F.relu``: matched by name, so
``torch.add`` and ``operator.add`` are the same op, as fxquant names them) or method names
(``"reshape"``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from ... import FakeQuantize as _FxFakeQuantize
from ... import QConfig as _FxQConfig
from ... import quint8
from ...observers import FixedScaleObserver
from ...qconfig import OpInfo, SetterContext
from .qconfig import QConfig, get_default_qat_qconfig, get_default_qconfig, to_fxquant_qconfig

__all__ = ["QConfigMapping", "get_default_qconfig_mapping", "get_default_qat_qconfig_mapping"]

_ALIASES = {"iadd": "add", "imul": "mul", "isub": "sub", "truediv": "div", "concat": "cat"}


def _type_name(obj: Any) -> str:
    name = obj if isinstance(obj, str) else getattr(obj, "__name__", repr(obj))
    name = name.rstrip("_") if name.endswith("_") and not name.startswith("_") else name
    return _ALIASES.get(name, name)


class QConfigMapping:
    """Which qconfig each op gets (``set_global`` / ``set_object_type`` /
    ``set_module_name_regex`` / ``set_module_name``); methods return ``self`` for chaining."""

    def __init__(self) -> None:
        self.global_qconfig: Any = None
        self.object_type_qconfigs: dict[Any, Any] = {}
        self.module_name_regex_qconfigs: dict[str, Any] = {}
        self.module_name_qconfigs: dict[str, Any] = {}
        self.module_name_object_type_order_qconfigs: dict[tuple[str, Any, int], Any] = {}

    def set_global(self, global_qconfig: Any) -> QConfigMapping:
        self.global_qconfig = global_qconfig
        return self

    def set_object_type(self, object_type: type | Callable | str, qconfig: Any) -> QConfigMapping:
        self.object_type_qconfigs[object_type] = qconfig
        return self

    def set_module_name_regex(self, module_name_regex: str, qconfig: Any) -> QConfigMapping:
        self.module_name_regex_qconfigs[module_name_regex] = qconfig
        return self

    def set_module_name(self, module_name: str, qconfig: Any) -> QConfigMapping:
        self.module_name_qconfigs[module_name] = qconfig
        return self

    def set_module_name_object_type_order(self, module_name: str, object_type: Any, index: int,
                                          qconfig: Any) -> QConfigMapping:
        self.module_name_object_type_order_qconfigs[(module_name, object_type, index)] = qconfig
        return self

    def to_dict(self) -> dict[str, Any]:
        """torch.ao's dict form (``""`` global, ``object_type``, ``module_name_regex`` ...)."""
        return {
            "": self.global_qconfig,
            "object_type": list(self.object_type_qconfigs.items()),
            "module_name_regex": list(self.module_name_regex_qconfigs.items()),
            "module_name": list(self.module_name_qconfigs.items()),
            "module_name_object_type_order": [
                (*k, v) for k, v in self.module_name_object_type_order_qconfigs.items()
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QConfigMapping:
        """Build from torch.ao's dict form (also the old ``{"": qconfig}`` qconfig_dict)."""
        m = cls()
        if "" in d:
            m.set_global(d[""])
        for t, q in d.get("object_type", []):
            m.set_object_type(t, q)
        for r, q in d.get("module_name_regex", []):
            m.set_module_name_regex(r, q)
        for n, q in d.get("module_name", []):
            m.set_module_name(n, q)
        for n, t, i, q in d.get("module_name_object_type_order", []):
            m.set_module_name_object_type_order(n, t, i, q)
        return m

    def setter(self) -> QConfigMappingSetter:
        """This mapping as an fxquant qconfig setter."""
        return QConfigMappingSetter(self)

    def __repr__(self) -> str:
        return f"QConfigMapping({self.to_dict()!r})"


class QConfigMappingSetter:
    """fxquant setter of a :class:`QConfigMapping` (torch.ao's precedence)."""

    def __init__(self, mapping: QConfigMapping) -> None:
        fx = to_fxquant_qconfig
        self.global_qconfig = fx(mapping.global_qconfig)
        self.by_module = {n: fx(q) for n, q in mapping.module_name_qconfigs.items()}
        for (n, _t, _i), q in mapping.module_name_object_type_order_qconfigs.items():
            self.by_module.setdefault(n, fx(q))
        self.by_regex = [(re.compile(r), fx(q)) for r, q in
                         mapping.module_name_regex_qconfigs.items()]
        self.by_type = [(t, fx(q)) for t, q in mapping.object_type_qconfigs.items()]

    def _module_match(self, name: str) -> _FxQConfig | None:
        best = None
        for path in self.by_module:
            if (name == path or name.startswith(path + ".")) and (
                best is None or len(path) > len(best)
            ):
                best = path
        return None if best is None else self.by_module[best]

    def __call__(self, op: OpInfo, ctx: SetterContext) -> _FxQConfig | None:
        q = self._module_match(op.name)
        if q is not None:
            return q
        for rx, q in self.by_regex:
            if rx.match(op.name):
                return q
        for t, q in self.by_type:
            if isinstance(t, type):
                if op.module is not None and type(op.module) is t:
                    return q
            elif op.module is None and _type_name(t) == op.op_type:
                return q
        return self.global_qconfig


def _fixed(scale: float, zero_point: int) -> Any:
    return _FxQConfig(output=_FxFakeQuantize.with_args(
        observer=FixedScaleObserver.with_args(scale=scale, zero_point=zero_point, dtype=quint8),
        dtype=quint8, symmetric=False))


def _with_fixed_qparams(mapping: QConfigMapping) -> QConfigMapping:
    # torch.ao's fixed output grids of ops with a known output range (quint8)
    zero_one, minus_one_one = _fixed(1.0 / 256.0, 0), _fixed(2.0 / 256.0, 128)
    for t in (torch.nn.Sigmoid, torch.sigmoid, "sigmoid", torch.nn.Hardsigmoid,
              torch.nn.functional.hardsigmoid, torch.nn.Softmax, torch.softmax,
              torch.nn.functional.softmax):
        mapping.set_object_type(t, zero_one)
    for t in (torch.nn.Tanh, torch.tanh, "tanh"):
        mapping.set_object_type(t, minus_one_one)
    return mapping


def get_default_qconfig_mapping(backend: str = "x86", version: int = 0) -> QConfigMapping:
    """torch.ao's post-training mapping: :func:`get_default_qconfig` globally, fixed output
    grids for sigmoid / hardsigmoid / softmax (1/256) and tanh (2/256, zero point 128)."""
    global_qconfig: QConfig = get_default_qconfig(backend, version)
    return _with_fixed_qparams(QConfigMapping().set_global(global_qconfig))


def get_default_qat_qconfig_mapping(backend: str = "x86", version: int = 1) -> QConfigMapping:
    """torch.ao's QAT mapping: :func:`get_default_qat_qconfig` plus the fixed output grids."""
    return _with_fixed_qparams(
        QConfigMapping().set_global(get_default_qat_qconfig(backend, version)))
