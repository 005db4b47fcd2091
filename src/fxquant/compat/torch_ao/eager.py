"""torch.ao's eager flow: ``model.qconfig = ...``, ``prepare`` / ``prepare_qat``, run data,
``convert`` -- on :func:`fxquant.prepare` and :func:`fxquant.convert`.

torch.ao's eager ``prepare`` takes no example inputs, fxquant's capture needs one batch: the
returned model prepares itself on its **first call** (that batch is the example input) and
observes from then on.  It is prepared in place on the model's own modules, so an optimizer
built on ``model.parameters()`` before that first call trains the right tensors.

``qconfig`` attributes are honoured as torch.ao propagates them: a module's ``qconfig`` applies
to every op inside it (the deepest one wins), ``qconfig = None`` keeps that part float, the
root's is the default; ops outside any ``qconfig`` stay float.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torch import nn

from ... import FakeQuantState, set_fake_quantize
from ... import QConfig as _FxQConfig
from ... import convert as _fx_convert
from ... import prepare as _fx_prepare
from ...convert import ConvertedModel
from ...errors import ConfigError, ConvertError
from ...graph import get_report
from ...nn import DeQuantStub, QuantStub
from ...qconfig import OpInfo, SetterContext
from .qconfig import engine_profile, to_fxquant_qconfig

__all__ = [
    "QuantWrapper",
    "QconfigAttributeSetter",
    "prepare",
    "prepare_qat",
    "convert",
    "quantize",
    "quantize_qat",
    "quantize_dynamic",
    "prepared_module",
    "convert_backend",
]

_PREPARED = "_fxquant_prepared"
_CONVERTED = "_fxquant_converted"


class QuantWrapper(nn.Module):
    """``dequant(module(quant(x)))``: quantize a whole module (torch.ao's ``QuantWrapper``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        qconfig = getattr(module, "qconfig", None)
        self.add_module("quant", QuantStub(qconfig))
        self.add_module("dequant", DeQuantStub(qconfig))
        self.add_module("module", module)
        self.train(module.training)

    def forward(self, x: Any) -> Any:
        return self.dequant(self.module(self.quant(x)))


class QconfigAttributeSetter:
    """fxquant setter from torch.ao ``qconfig`` attributes: the deepest module whose ``qconfig``
    attribute covers an op decides (``None`` there -> float); the root's is the default."""

    def __init__(self, model: nn.Module) -> None:
        self.by_path: dict[str, _FxQConfig] = {}
        self.default: _FxQConfig | None = None
        for path, m in model.named_modules():
            if not hasattr(m, "qconfig"):
                continue
            q = to_fxquant_qconfig(m.qconfig)
            if path == "":
                self.default = q if m.qconfig is not None else None
            else:
                self.by_path[path] = q

    def __call__(self, op: OpInfo, ctx: SetterContext) -> _FxQConfig | None:
        best = None
        for path in self.by_path:
            if (op.name == path or op.name.startswith(path + ".")) and (
                best is None or len(path) > len(best)
            ):
                best = path
        return self.default if best is None else self.by_path[best]

    def __repr__(self) -> str:
        return f"QconfigAttributeSetter(root={self.default!r}, modules={sorted(self.by_path)})"


@dataclass
class _Spec:
    setter: QconfigAttributeSetter
    backend: str
    state: FakeQuantState


class _LazyPrepared(nn.Module):
    """Mixed into the model's class: the first call prepares, later calls run the result."""

    _fxquant_float_cls: type

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        converted = self._modules.get(_CONVERTED)
        if converted is not None:
            return converted(*args, **kwargs)
        gm = self._modules.get(_PREPARED)
        if gm is None:
            gm = self._fxquant_build(args)
        return gm(*args, **kwargs)

    def _fxquant_build(self, args: tuple[Any, ...]) -> nn.Module:
        spec: _Spec = self.__dict__["_fxquant_spec"]
        lazy_cls = type(self)
        self.__class__ = lazy_cls._fxquant_float_cls  # capture the model's own forward
        try:
            gm = _fx_prepare(self, args, spec.setter, backend=spec.backend, inplace=True)
        finally:
            self.__class__ = lazy_cls
        set_fake_quantize(gm, spec.state)
        gm.train(self.training)
        self.add_module(_PREPARED, gm)
        return gm

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        gm = self._modules.get(_PREPARED)
        return gm.state_dict(*args, **kwargs) if gm is not None else super().state_dict(
            *args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        gm = self._modules.get(_PREPARED)
        target = gm if gm is not None else super()
        return target.load_state_dict(state_dict, strict=strict, assign=assign)


_LAZY_CLASSES: dict[type, type] = {}


def _lazy_class(cls: type) -> type:
    if issubclass(cls, _LazyPrepared):
        return cls
    if cls not in _LAZY_CLASSES:
        _LAZY_CLASSES[cls] = type(cls.__name__, (_LazyPrepared, cls),
                                  {"_fxquant_float_cls": cls, "__module__": cls.__module__})
    return _LAZY_CLASSES[cls]


def _prepare(model: nn.Module, inplace: bool, state: FakeQuantState) -> nn.Module:
    if not inplace:
        model = copy.deepcopy(model)
    setter = QconfigAttributeSetter(model)
    model.__dict__["_fxquant_spec"] = _Spec(setter, engine_profile(), state)
    model.__class__ = _lazy_class(type(model))
    return model


def prepare(model: nn.Module, inplace: bool = False, allow_list: Any = None,
            observer_non_leaf_module_list: Any = None,
            prepare_custom_config_dict: Any = None) -> nn.Module:
    """Prepare for post-training calibration: after this, running data through the model
    observes it (outputs stay float).  The model's ``qconfig`` attributes decide what is
    quantized; ``torch.backends.quantized.engine`` picks the fxquant profile."""
    return _prepare(model, inplace, FakeQuantState.CALIBRATION)


def prepare_qat(model: nn.Module, mapping: Any = None, inplace: bool = False) -> nn.Module:
    """Prepare for quantization-aware training (quantizers observe and fake-quantize)."""
    return _prepare(model, inplace, FakeQuantState.QAT)


def prepared_module(model: nn.Module) -> nn.Module:
    """The fxquant prepared model behind a model returned by :func:`prepare` / ``prepare_qat``
    (or ``model`` itself when it is one already, e.g. from ``prepare_fx``)."""
    if isinstance(model, _LazyPrepared):
        gm = model._modules.get(_PREPARED)
        if gm is None:
            raise ConvertError(
                "the model was prepared but never called: run calibration (or training) data "
                "through it before convert (fxquant captures the graph on the first call)"
            )
        return gm
    return model


def convert_backend(gm: nn.Module) -> str:
    """The engine a prepared model converts to: the torch engine profile it was prepared with
    (x86 / fbgemm / qnnpack), else ``torch.backends.quantized.engine``'s."""
    name = get_report(gm).profile.name
    return name if name in ("x86", "fbgemm", "qnnpack") else engine_profile()


def convert(module: nn.Module, mapping: Any = None, inplace: bool = False,
            remove_qconfig: bool = True, is_reference: bool = False,
            convert_custom_config_dict: Any = None) -> nn.Module:
    """A real int8 model on the torch engine the model was prepared for
    (``torch.backends.quantized.engine`` at prepare time) by :func:`fxquant.convert`; ops
    without an integer kernel stay float."""
    gm = prepared_module(module)
    converted = _fx_convert(gm, backend=convert_backend(gm), keep_float=True)
    if inplace and isinstance(module, _LazyPrepared):
        module.add_module(_CONVERTED, converted)
        return module
    return converted


def quantize(model: nn.Module, run_fn: Any, run_args: Any, mapping: Any = None,
             inplace: bool = False) -> ConvertedModel:
    """``prepare``, ``run_fn(model, run_args)`` (calibration), ``convert``."""
    model = prepare(model.eval(), inplace=inplace)
    run_fn(model, run_args)
    return convert(model)


def quantize_dynamic(model: nn.Module, qconfig_spec: Any = None, dtype: Any = None,
                     mapping: Any = None, inplace: bool = False) -> nn.Module:
    """Not supported: fxquant quantizes activations with calibrated (static) scales."""
    raise ConfigError(
        "quantize_dynamic: fxquant has no dynamic (per-batch) activation quantization; use "
        "static quantization (prepare, run calibration data, convert) or keep the layers float"
    )


def quantize_qat(model: nn.Module, run_fn: Any, run_args: Any,
                 inplace: bool = False) -> ConvertedModel:
    """``prepare_qat``, ``run_fn(model, run_args)`` (training), ``convert``."""
    model = prepare_qat(model.train(), inplace=inplace)
    run_fn(model, run_args)
    return convert(model.eval())
