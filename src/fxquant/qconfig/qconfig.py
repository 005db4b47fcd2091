"""QConfig: which quantizer factory goes on an op's inputs, weight and output."""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from typing import Any

from .._utils import Factory, as_factory
from ..fake_quant import FakeQuantize, LearnableFakeQuantize
from ..numerics import QDType, ScaleMath, qint8
from ..observers import FixedScaleObserver, MinMaxObserver, MovingAverageMinMaxObserver

__all__ = ["QConfig", "FLOAT", "get_qconfig"]


@dataclass(frozen=True)
class QConfig:
    """Quantizer factories for one op; ``None`` leaves that tensor in float.

    Args:
        input: quantizer for each tensor input of the op (explicit input quantization; by
            default inputs are quantized by their producer's output quantizer).
        weight: quantizer for the op's weight (per-channel factories get the module's
            weight axis: 0 for conv / linear, 1 for ConvTranspose).
        output: quantizer for the op's output.
        activation: alias of ``output`` (torch.ao / horizon spelling).

    ``QConfig()`` (everything ``None``) keeps the op in float.
    """

    input: Any = None
    weight: Any = None
    output: Any = None
    activation: InitVar[Any] = None

    def __post_init__(self, activation: Any) -> None:
        if activation is not None:
            if self.output is not None:
                raise ValueError("QConfig: give either output= or its alias activation=, not both")
            object.__setattr__(self, "output", activation)
        for f in ("input", "weight", "output"):
            v = getattr(self, f)
            if v is not None:
                fac = as_factory(v)
                if not issubclass(fac.cls, FakeQuantize):
                    raise TypeError(
                        f"QConfig.{f} must build a FakeQuantize (e.g. FakeQuantize.with_args(...)),"
                        f" got {fac!r}"
                    )
                object.__setattr__(self, f, fac)

    @property
    def is_float(self) -> bool:
        """True when nothing is quantized."""
        return self.input is None and self.weight is None and self.output is None


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
        fix_scale: keep activation scales found by calibration fixed during QAT.
        fixed_scale: a constant activation scale (a :class:`FixedScaleObserver`), e.g. 0.0625.
        weight_per_channel: per-output-channel weight scales.
        learnable: LSQ quantizers (scale / zero point trained with the weights).
    """
    fq_cls = LearnableFakeQuantize if learnable else FakeQuantize

    def act(dtype: QDType | None) -> Factory | None:
        if dtype is None:
            return None
        obs = observer
        if fixed_scale is not None:
            obs = FixedScaleObserver.with_args(scale=fixed_scale, dtype=dtype)
        return fq_cls.with_args(
            observer=obs,
            dtype=dtype,
            symmetric=symmetric,
            power_of_two=power_of_two,
            scale_math=scale_math,
            fixed_in_qat=fix_scale,
        )

    weight = None
    if weight_dtype is not None:
        weight = fq_cls.with_args(
            observer=weight_observer,
            dtype=weight_dtype,
            symmetric=weight_symmetric,
            ch_axis=0 if weight_per_channel else None,
            power_of_two=power_of_two,
            scale_math=scale_math,
            is_weight=True,
        )
    return QConfig(input=act(in_dtype), weight=weight, output=act(out_dtype))
