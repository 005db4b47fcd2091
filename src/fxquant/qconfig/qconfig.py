"""QConfig: which quantizer goes on an op's inputs, weight and output, as frozen data."""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from typing import Any

from .._utils import Factory, as_factory
from ..errors import ConfigError, bounded
from ..fake_quant import (
    SPEC_VERSION,
    FakeQuantize,
    LearnableFakeQuantize,
    QuantizerSpec,
    check_spec_format,
)
from ..numerics import QDType, ScaleMath, qint8
from ..observers import FixedScaleObserver, MinMaxObserver, MovingAverageMinMaxObserver

__all__ = ["QConfig", "FLOAT", "get_qconfig"]

_FORMAT = "fxquant.qconfig"
_ROLES = ("input", "weight", "output")


def _as_spec(role: str, value: Any) -> QuantizerSpec | Factory:
    """A :class:`QuantizerSpec` from a spec, ``FakeQuantize.with_args(...)``, a quantizer class
    or a partial; a factory of a quantizer class fxquant does not know stays a factory."""
    if isinstance(value, QuantizerSpec):
        return value
    fac = as_factory(value)
    if not (isinstance(fac.cls, type) and issubclass(fac.cls, FakeQuantize)):
        raise TypeError(
            f"QConfig.{role} must build a FakeQuantize (e.g. FakeQuantize.with_args(...)), "
            f"got {fac!r}"
        )
    if fac.cls in (FakeQuantize, LearnableFakeQuantize):
        return QuantizerSpec(learnable=fac.cls is LearnableFakeQuantize).with_args(
            **dict(fac.kwargs)
        )
    return fac


@dataclass(frozen=True)
class QConfig:
    """The quantizers of one op (:class:`~fxquant.fake_quant.QuantizerSpec` s); ``None`` leaves
    that tensor in float.

    Args:
        input: quantizer for each tensor input of the op (explicit input quantization; by
            default inputs are quantized by their producer's output quantizer).
        weight: quantizer for the op's weight (per-channel specs get the module's weight axis:
            0 for conv / linear, 1 for ConvTranspose).
        output: quantizer for the op's output.
        activation: alias of ``output`` (torch.ao / horizon spelling).

    Each may be given as a spec, ``FakeQuantize.with_args(...)`` (which makes one), a quantizer
    class or a ``functools.partial``; it is stored as a frozen spec.  ``QConfig()`` (everything
    ``None``) keeps the op in float.  :meth:`to_dict` / :meth:`from_dict` round-trip through
    plain JSON values with a format version.

    >>> q = get_qconfig(out_dtype=qint8)
    >>> QConfig.from_dict(q.to_dict()) == q
    True
    """

    input: QuantizerSpec | None = None
    weight: QuantizerSpec | None = None
    output: QuantizerSpec | None = None
    activation: InitVar[Any] = None

    def __post_init__(self, activation: Any) -> None:
        if activation is not None:
            if self.output is not None:
                raise ConfigError("QConfig: give either output= or its alias activation=, not "
                                  "both")
            object.__setattr__(self, "output", activation)
        for role in _ROLES:
            v = getattr(self, role)
            if v is not None:
                object.__setattr__(self, role, _as_spec(role, v))

    @property
    def is_float(self) -> bool:
        """True when nothing is quantized."""
        return self.input is None and self.weight is None and self.output is None

    def to_dict(self) -> dict[str, Any]:
        """``{"format", "version", "input", "weight", "output"}`` with each quantizer's
        :meth:`~fxquant.fake_quant.QuantizerSpec.to_dict` (or ``None``)."""
        out: dict[str, Any] = {"format": _FORMAT, "version": SPEC_VERSION}
        for role in _ROLES:
            v = getattr(self, role)
            if v is not None and not isinstance(v, QuantizerSpec):
                raise ConfigError(
                    f"QConfig.{role} builds {v.cls.__name__}, which fxquant cannot serialise: "
                    "use FakeQuantize / LearnableFakeQuantize specs"
                )
            out[role] = None if v is None else v.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Any) -> QConfig:
        """Inverse of :meth:`to_dict`; :class:`~fxquant.CheckpointError` for a dict of a newer
        format version or one that is not a QConfig."""
        check_spec_format(data, _FORMAT, "QConfig")
        return cls(**{
            role: None if data.get(role) is None else QuantizerSpec.from_dict(data[role])
            for role in _ROLES
        })


FLOAT = QConfig()
"""A QConfig that keeps an op in float (use it in ``ModuleNameQconfigSetter`` to exclude ops)."""


def get_qconfig(
    observer: Any = MovingAverageMinMaxObserver,
    weight_dtype: QDType | None = qint8,
    out_dtype: QDType | None = qint8,
    in_dtype: QDType | None = None,
    fix_scale: bool = False,
    *,
    fixed_scale: float | None = None,
    weight_observer: Any = MinMaxObserver,
    weight_per_channel: bool = True,
    symmetric: bool = True,
    weight_symmetric: bool = True,
    power_of_two: bool = False,
    scale_math: ScaleMath = ScaleMath.DIVIDE,
    learnable: bool = False,
) -> QConfig:
    """Build a :class:`QConfig` from the usual knobs.

    Args:
        observer: activation observer class / factory.
        weight_dtype / out_dtype / in_dtype: dtypes; ``None`` leaves that tensor in float.
        fix_scale: a flag: keep the activation scales that calibration found fixed during QAT
            (``fixed_in_qat``).  Not a scale: passing a number raises :class:`ConfigError`
            pointing to ``fixed_scale``.
        fixed_scale: a number: one constant activation scale (a :class:`FixedScaleObserver`,
            e.g. ``0.0625``) that nothing ever changes, for every activation dtype of this
            qconfig; a finite positive float32 value.  Independent of ``fix_scale``.
        weight_per_channel: per-output-channel weight scales.
        learnable: LSQ quantizers (scale / zero point trained with the weights).

    >>> get_qconfig(out_dtype=None, fixed_scale=0.0625, in_dtype=qint8).input.fixed_scale
    0.0625
    """
    if not isinstance(fix_scale, bool):
        hint = (f"; for a constant scale use fixed_scale={fix_scale!r}"
                if isinstance(fix_scale, (int, float)) else "")
        raise ConfigError(
            "get_qconfig: fix_scale is a flag (keep the calibrated activation scales during "
            f"QAT), got {bounded(repr(fix_scale))}{hint}"
        )
    act_observer = observer
    if fixed_scale is not None:
        act_observer = FixedScaleObserver.with_args(scale=fixed_scale)
    act = QuantizerSpec(
        observer=act_observer,
        learnable=learnable,
        symmetric=symmetric,
        power_of_two=power_of_two,
        scale_math=scale_math,
        fixed_in_qat=fix_scale,
    )

    def activation(dtype: QDType | None) -> QuantizerSpec | None:
        if dtype is None:
            return None
        if fixed_scale is None:
            return act.with_args(dtype=dtype)
        return act.with_args(dtype=dtype, observer=act.observer.with_args(dtype=dtype))

    weight = None
    if weight_dtype is not None:
        weight = QuantizerSpec(
            observer=weight_observer,
            dtype=weight_dtype,
            learnable=learnable,
            symmetric=weight_symmetric,
            ch_axis=0 if weight_per_channel else None,
            power_of_two=power_of_two,
            scale_math=scale_math,
            is_weight=True,
        )
    return QConfig(input=activation(in_dtype), weight=weight, output=activation(out_dtype))
