"""What prepare did, kept on the prepared model for :func:`fxquant.summary` and later stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..backends import BackendProfile
from ..errors import ConfigError
from ..fake_quant import FakeQuantize
from ..modelio import ModelInputs
from ..qconfig import OpKind, QConfig
from .capture import Island

__all__ = ["OpRecord", "PrepareOptions", "PrepareReport", "REPORT_KEY", "get_report",
           "check_prepared",
           "num_inputs_of"]

REPORT_KEY = "fxquant"


@dataclass
class OpRecord:
    """One op of the prepared model.

    Attributes:
        name: stable op name.
        op_type: module class or function name.
        kind: :class:`OpKind`.
        qconfig: the resolved QConfig (``None``: no setter had an opinion).
        quantizers: role (``output``, ``weight``, ``input_0`` ...) -> module path of its quantizer.
        float_reason: why the op's result stays float (``None`` when it is quantized or shares
            its input's quantization).
        is_tensor_op: False for ops on Python values / integer tensors (not listed in coverage).
        folded: name of the BatchNorm folded into this conv, if any.
    """

    name: str
    op_type: str
    kind: OpKind
    qconfig: QConfig | None = None
    quantizers: dict[str, str] = field(default_factory=dict)
    float_reason: str | None = None
    is_tensor_op: bool = True
    folded: str | None = None


@dataclass(frozen=True)
class PrepareOptions:
    """The options :func:`fxquant.prepare` was called with (what re-preparing needs).

    Attributes:
        leaf_modules: module paths not traced into (sorted).
        skip_modules: module paths kept entirely in float (sorted).
        fold_bn: conv + BatchNorm folded.
    """

    leaf_modules: tuple[str, ...] = ()
    skip_modules: tuple[str, ...] = ()
    fold_bn: bool = True


@dataclass
class PrepareReport:
    """Everything :func:`fxquant.prepare` decided, and what it was given (``options``, and
    ``example_inputs``: a detached copy of the batch it traced with)."""

    profile: BackendProfile
    ops: dict[str, OpRecord] = field(default_factory=dict)
    islands: dict[str, Island] = field(default_factory=dict)
    capture_mode: str = "fx"  # "fx" or "eager" (root forward untraceable)
    root_failure: str | None = None
    num_inputs: int = 1
    options: PrepareOptions = field(default_factory=PrepareOptions)
    example_inputs: ModelInputs | None = None
    notes: dict[str, str] = field(default_factory=dict)  # op -> how it was captured (an
    # untraceable forward run eagerly: its ops are quantized, or listed as float ops)

    def quantizers(self) -> list[tuple[str, str, str]]:
        """``(module path, op name, role)`` of every distinct quantizer, in op order and role
        order within an op (the order :func:`fxquant.summary` lists them); a quantizer shared
        by several ops or roles appears once, with the first."""
        seen: set[str] = set()
        out = []
        for rec in self.ops.values():
            for role, path in sorted(rec.quantizers.items()):
                if path not in seen:
                    seen.add(path)
                    out.append((path, rec.name, role))
        return out


def get_report(model: nn.Module) -> PrepareReport:
    """The :class:`PrepareReport` of a prepared model; :class:`~fxquant.ConfigError` (also a
    ``TypeError``) for anything else."""
    meta = getattr(model, "meta", None)
    rep = meta.get(REPORT_KEY) if isinstance(meta, dict) else None
    if rep is None:
        rep = getattr(model, "_fxquant_report", None)
    if not isinstance(rep, PrepareReport):
        raise ConfigError(
            f"{type(model).__name__} is not a model returned by fxquant.prepare(); prepare it "
            "first: qmodel = fxquant.prepare(model, example_inputs, ...)"
        )
    return rep


def check_prepared(model: Any, what: str) -> None:
    """``model`` holds fxquant quantizers or was prepared (a prepared model may quantize
    nothing); :class:`~fxquant.ConfigError` naming ``what`` (the function) otherwise."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{what}: expects a model returned by fxquant.prepare(), got "
                          f"{type(model).__name__}")
    if not any(isinstance(m, FakeQuantize) for m in model.modules()):
        try:
            get_report(model)
        except ConfigError as err:
            raise ConfigError(f"{what}: {err}") from None


def num_inputs_of(model: nn.Module) -> int | None:
    """How many positional inputs a prepared model takes (``None`` for other modules): what
    :func:`fxquant.modelio.as_inputs` keeps of a tuple batch (the rest, e.g. labels, is
    dropped)."""
    try:
        return get_report(model).num_inputs
    except TypeError:
        return None
