"""Hardware / runtime profiles as data.

A :class:`BackendProfile` fixes the defaults a template setter uses: dtypes, symmetry,
granularity, narrow range, scale rounding (:class:`~fxquant.numerics.ScaleMath`) and where
activation quantizers are placed (:class:`Placement`).  Setters can still override any op.
It also names what deploys the model: the torch quantized ``engine`` :func:`fxquant.convert`
builds for, and the :class:`Runtime` :func:`fxquant.verify` checks an export in.  ``prepare``
records the profile; ``convert`` and ``verify`` default to it and warn when asked for
another one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields

from .._utils import Choice
from ..errors import ConfigError, bounded
from ..numerics import QDType, ScaleMath, qint8, qint16, quint8

__all__ = ["Placement", "Runtime", "BackendProfile", "PROFILES", "get_profile"]


class Runtime(Choice):
    """The runtimes fxquant runs exported models in (:mod:`fxquant.runtimes`); members equal
    their names (``Runtime.ONNXRUNTIME == "onnxruntime"``).

    ONNXRUNTIME: ONNX Runtime, CPU execution provider.
    OPENVINO: OpenVINO, CPU plugin (fp32 inference precision).
    """

    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


class Placement(enum.Enum):
    """Where activation quantizers go.

    OUTPUTS: on the output of every quantized op (and on model inputs that feed one), the QDQ
        layout ONNX Runtime and torch's engines fuse into integer kernels.
    WEIGHTED_INPUTS: only on the inputs of weighted ops (conv / linear / matmul) and on both
        inputs of residual adds (TensorRT explicit quantization).
    """

    OUTPUTS = "outputs"
    WEIGHTED_INPUTS = "weighted_inputs"


@dataclass(frozen=True)
class BackendProfile:
    """Quantization defaults of one deployment target.

    Attributes:
        name: profile name (``generic``, ``x86``, ...).
        activation_dtype / weight_dtype: default 8-bit dtypes (``reduce_range`` already applied).
        activation_dtype_16: activation dtype used by the 16-bit templates.
        activation_symmetric / weight_symmetric: symmetric ranges (zero point fixed).
        weight_per_channel: per-output-channel weight scales.
        power_of_two: power-of-two scales everywhere.
        scale_math: how the runtime divides by the scale.
        placement: activation quantizer placement.
        int32_bias: exporters write conv / linear biases as int32 at scale
            ``input_scale * weight_scale`` (what integer kernels add to their accumulators).
        requantize_before_add: quantize a conv / linear output that only feeds a residual add
            (False for OpenVINO, which fuses the add into the conv as a sum post-op and never
            rounds the conv output).
        float_input_ops: ops (by function name, e.g. ``softmax``) whose input stays float: no
            quantizer right before them, so the runtime runs them in float instead of an
            approximate integer kernel (ONNX Runtime's QLinearSoftmax rounds its table down).
        max_qdq_bits: widest activation grid exported as QuantizeLinear / DequantizeLinear;
            wider quantizers are written as the same arithmetic in float ops (Div, Round, Clip,
            Mul), for runtimes whose integer Q/DQ path is narrower (OpenVINO's CPU plugin runs
            16-bit Q/DQ through its 8-bit path).
        activation_symmetric_16: 16-bit activations (``activation_dtype_16``) are symmetric.
        engine: the ``torch.backends.quantized.engine`` :func:`fxquant.convert` builds for
            (``None``: the profile has no torch engine).
        runtime: the :class:`Runtime` :func:`fxquant.verify` checks exports in (``None``: any).
    """

    name: str
    activation_dtype: QDType
    weight_dtype: QDType
    activation_dtype_16: QDType = qint16
    activation_symmetric: bool = True
    weight_symmetric: bool = True
    weight_per_channel: bool = True
    power_of_two: bool = False
    scale_math: ScaleMath = ScaleMath.DIVIDE
    placement: Placement = Placement.OUTPUTS
    int32_bias: bool = False
    float_input_ops: frozenset[str] = frozenset()
    requantize_before_add: bool = True
    max_qdq_bits: int = 16
    activation_symmetric_16: bool = True
    engine: str | None = None
    runtime: Runtime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.placement, Placement):
            raise TypeError(f"BackendProfile.placement must be a Placement, got {self.placement!r}")
        if not isinstance(self.scale_math, ScaleMath):
            raise TypeError(
                f"BackendProfile.scale_math must be a ScaleMath, got {self.scale_math!r}"
            )
        if self.runtime is not None and not isinstance(self.runtime, Runtime):
            raise TypeError(f"BackendProfile.runtime must be a Runtime, got {self.runtime!r}")

    def numerics_differ(self, other: BackendProfile) -> list[str]:
        """The fields (other than name, engine and runtime) in which ``other`` asks for other
        numerics or placement than this profile; empty when a model prepared for one is what
        the other would have prepared."""
        skip = {"name", "engine", "runtime"}
        return [f.name for f in fields(self)
                if f.name not in skip and getattr(self, f.name) != getattr(other, f.name)]

    def __repr__(self) -> str:
        return f"BackendProfile({self.name!r})"


# x86 / fbgemm: activations quint8 with reduce_range (codes 0..127) so that u8*s8 pair sums
# cannot saturate vpmaddubsw on AVX2 CPUs; weights per-channel qint8; torch kernels multiply by
# the reciprocal scale.
_quint8_reduced = QDType(7, False)

PROFILES: dict[str, BackendProfile] = {
    p.name: p
    for p in (
        BackendProfile("generic", activation_dtype=qint8, weight_dtype=qint8),
        BackendProfile(
            "x86",
            activation_dtype=_quint8_reduced,
            weight_dtype=qint8,
            activation_symmetric=False,
            scale_math=ScaleMath.RECIPROCAL,
            int32_bias=True,
            engine="x86",
        ),
        BackendProfile(
            "fbgemm",
            activation_dtype=_quint8_reduced,
            weight_dtype=qint8,
            activation_symmetric=False,
            scale_math=ScaleMath.RECIPROCAL,
            int32_bias=True,
            engine="fbgemm",
        ),
        BackendProfile(
            "qnnpack",
            activation_dtype=quint8,
            weight_dtype=qint8,
            activation_symmetric=False,
            weight_per_channel=False,
            scale_math=ScaleMath.RECIPROCAL,
            int32_bias=True,
            engine="qnnpack",
        ),
        # ORT CPU fuses U8S8 (uint8 activations, int8 per-channel weights) into QLinearConv.
        BackendProfile(
            "onnxruntime",
            activation_dtype=quint8,
            weight_dtype=qint8,
            activation_symmetric=False,
            int32_bias=True,
            float_input_ops=frozenset({"softmax", "log_softmax"}),
            runtime=Runtime.ONNXRUNTIME,
        ),
        # OpenVINO CPU: u8 activations / i8 per-channel weights like ORT; conv + residual add
        # become one kernel with a sum post-op, so the conv output is not requantized.  Its
        # integer ReduceMean is wrong for inputs with a non-zero zero point (hundreds of steps
        # off; tests/export: test_openvino_quantized_reduce_mean_is_wrong), so a mean's input
        # stays float there.  Its 16-bit Q/DQ goes through the 8-bit path: wider quantizers are
        # exported as float arithmetic.
        BackendProfile(
            "openvino",
            activation_dtype=quint8,
            weight_dtype=qint8,
            activation_symmetric=False,
            requantize_before_add=False,
            float_input_ops=frozenset({"mean"}),
            max_qdq_bits=8,
            runtime=Runtime.OPENVINO,
        ),
        BackendProfile(
            "tensorrt",
            activation_dtype=qint8,
            weight_dtype=qint8.narrow(),
            placement=Placement.WEIGHTED_INPUTS,
        ),
    )
}


def get_profile(backend: str | BackendProfile) -> BackendProfile:
    """Look a profile up by name (a :class:`BackendProfile` is returned as is).

    >>> get_profile("openvino").runtime, get_profile("x86").engine
    (<Runtime.OPENVINO: 'openvino'>, 'x86')
    """
    if isinstance(backend, BackendProfile):
        return backend
    profile = PROFILES.get(backend) if isinstance(backend, str) else None
    if profile is None:
        raise ConfigError(
            f"unknown backend {bounded(repr(backend))}; choose one of {sorted(PROFILES)} or "
            "pass a BackendProfile"
        )
    return profile

