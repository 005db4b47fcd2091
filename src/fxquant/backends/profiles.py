"""Hardware / runtime profiles as data.

A :class:`BackendProfile` fixes the defaults a template setter uses: dtypes, symmetry,
granularity, narrow range, scale rounding (:class:`~fxquant.numerics.ScaleMath`) and where
activation quantizers are placed (:class:`Placement`).  Setters can still override any op.
It also names what deploys the model: the torch quantized ``engine`` :func:`fxquant.convert`
builds for, and the :class:`Runtime` :func:`fxquant.verify` checks an export in.  ``prepare``
records the profile; ``convert`` and ``verify`` default to it and warn when asked for
another one.

A profile that names a ``runtime`` also lists the patterns that runtime runs as one integer
kernel (:class:`FusedKernel`, e.g. ONNX Runtime's ``DQ -> Conv -> Q`` = ``QLinearConv``): in eval
mode a prepared model computes exactly those ops with the runtime's integer arithmetic
(:mod:`fxquant.graph.simulate`).  The ONNX Runtime table is what ORT's graph optimizer fuses in
the QDQ files :func:`fxquant.export_onnx` writes (``tests/graph/test_simulation_ort.py`` checks
it against ORT's optimized graph, and :func:`fxquant.verify` warns where they disagree).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any

from .._utils import Choice
from ..errors import CheckpointError, ConfigError, bounded, bounded_list
from ..numerics import QDType, ScaleMath, dtype_by_name, qint8, qint16, quint8

__all__ = ["Placement", "Runtime", "KernelOp", "FusedKernel", "FixedOutput", "BackendProfile",
           "PROFILES", "get_profile", "op_type_key", "ORT_KERNELS", "LITERT_KERNELS",
           "ORT_EXACT_IN_FLOAT", "RUNTIME_KERNELS"]


class Runtime(Choice):
    """The runtimes fxquant runs exported models in (:mod:`fxquant.runtimes`); members equal
    their names (``Runtime.ONNXRUNTIME == "onnxruntime"``).

    ONNXRUNTIME: ONNX Runtime, CPU execution provider.
    OPENVINO: OpenVINO, CPU plugin (fp32 inference precision).
    LITERT: LiteRT (TFLite) interpreter, CPU (its default XNNPACK delegate).
    """

    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
    LITERT = "litert"


class Placement(enum.Enum):
    """Where activation quantizers go.

    OUTPUTS: on the output of every quantized op (and on model inputs that feed one), the QDQ
        layout ONNX Runtime and torch's engines fuse into integer kernels.
    WEIGHTED_INPUTS: only on the inputs of weighted ops (conv / linear / matmul) and on both
        inputs of residual adds (TensorRT explicit quantization).
    """

    OUTPUTS = "outputs"
    WEIGHTED_INPUTS = "weighted_inputs"


class KernelOp(enum.Enum):
    """What a fused integer kernel computes (matched on the prepared graph).

    CONV: a weight-quantized ``Conv1d/2d/3d`` (ConvBn included).
    LINEAR: a weight-quantized ``Linear`` / ``F.linear``.
    MATMUL: ``@`` / ``torch.matmul`` of two quantized tensors.
    ADD / MUL: ``+`` / ``*`` of two quantized tensors.
    GLOBAL_AVG_POOL: adaptive average pooling to size 1.
    AVG_POOL: ``avg_pool1d/2d/3d`` (``AvgPool`` modules).
    SIGMOID: ``sigmoid``.
    MEAN: ``mean`` over the trailing dimensions (e.g. ``x.mean((2, 3))``).
    SILU: ``silu`` (``x * sigmoid(x)``).
    BATCH_NORM: a ``BatchNorm1d/2d/3d`` in eval mode that is not folded into a conv (DenseNet's
        pre-activation), on a quantized input.
    LAYER_NORM: ``nn.LayerNorm`` / ``F.layer_norm`` on a quantized input.
    """

    CONV = "conv"
    LINEAR = "linear"
    MATMUL = "matmul"
    ADD = "add"
    MUL = "mul"
    GLOBAL_AVG_POOL = "global_avg_pool"
    AVG_POOL = "avg_pool"
    SIGMOID = "sigmoid"
    MEAN = "mean"
    SILU = "silu"
    BATCH_NORM = "batch_norm"
    LAYER_NORM = "layer_norm"


@dataclass(frozen=True)
class FusedKernel:
    """One pattern a runtime runs as a single integer kernel.

    The pattern is ``DQ(inputs) -> op -> [relu / clip] -> Q``: every tensor input comes from a
    per-tensor quantizer of at most ``max_bits`` bits (through pure data movement such as
    reshape or max pooling), and -- with ``quantized_output`` -- the op's only consumer is a
    per-tensor output quantizer (clipping activations in between are absorbed when the output
    grid already implies them, as ORT's Relu / Clip + QuantizeLinear fusion requires).

    Attributes:
        op: what the kernel computes.
        kernel: the runtime's name for it (``QLinearConv``, ``QGemm`` ...).
        input_ndims: only for inputs of these ranks (``None``: any rank); the first entry whose
            pattern matches wins.
        quantized_output: the output quantizer is part of the kernel; ``False``: the kernel
            returns float (``MatMulIntegerToFloat``) and its consumers run as they are.
        max_bits: the widest activation grid the kernel takes.
        integer: an integer kernel the runtime fuses; ``False``: a float op the runtime runs with
            float arithmetic of its own that fxquant reproduces (its input must come from a
            quantizer, so that both start from the same values).
        without_bias: only a conv / linear without a bias (a Linear on N-D input without bias is
            exported as a bare MatMul, which ONNX Runtime fuses into ``QLinearMatMul``).
    """

    op: KernelOp
    kernel: str
    input_ndims: tuple[int, ...] | None = None
    quantized_output: bool = True
    max_bits: int = 8
    integer: bool = True
    without_bias: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.op, KernelOp):
            raise TypeError(f"FusedKernel.op must be a KernelOp, got {self.op!r}")


ORT_KERNELS: tuple[FusedKernel, ...] = (
    FusedKernel(KernelOp.CONV, "QLinearConv"),
    # a Linear on 2-D input is exported as Gemm; on N-D input as MatMul + a float bias Add (a
    # bare MatMul without a bias: QLinearMatMul when its output is quantized)
    FusedKernel(KernelOp.LINEAR, "QGemm", input_ndims=(2,)),
    FusedKernel(KernelOp.LINEAR, "QLinearMatMul", input_ndims=(3, 4, 5, 6), without_bias=True),
    FusedKernel(KernelOp.LINEAR, "MatMulIntegerToFloat", input_ndims=(3, 4, 5, 6),
                quantized_output=False),
    FusedKernel(KernelOp.MATMUL, "QLinearMatMul"),
    FusedKernel(KernelOp.MATMUL, "MatMulIntegerToFloat", quantized_output=False),
    FusedKernel(KernelOp.ADD, "QLinearAdd"),
    FusedKernel(KernelOp.MUL, "QLinearMul"),
    FusedKernel(KernelOp.GLOBAL_AVG_POOL, "QLinearGlobalAveragePool"),
    FusedKernel(KernelOp.AVG_POOL, "QLinearAveragePool"),
    FusedKernel(KernelOp.SIGMOID, "QLinearSigmoid"),
    # not fused -- float ops whose arithmetic fxquant reproduces: ReduceMean's Eigen summation
    # order, MLAS's logistic for Sigmoid (and SiLU exported as x * Sigmoid(x)), an unfolded
    # BatchNormalization's per-channel scale and shift, LayerNormalization's 8-lane variance
    FusedKernel(KernelOp.MEAN, "ReduceMean", quantized_output=False, integer=False),
    FusedKernel(KernelOp.SIGMOID, "Sigmoid", quantized_output=False, integer=False),
    FusedKernel(KernelOp.SILU, "Sigmoid*x", quantized_output=False, integer=False),
    FusedKernel(KernelOp.BATCH_NORM, "BatchNormalization", quantized_output=False,
                integer=False),
    FusedKernel(KernelOp.LAYER_NORM, "LayerNormalization", quantized_output=False,
                integer=False),
)
"""ONNX Runtime (CPU, x86-64) 1.32: the QDQ patterns its graph optimizer fuses into integer
kernels in files written by :func:`fxquant.export_onnx`."""

LITERT_KERNELS: tuple[FusedKernel, ...] = (
    FusedKernel(KernelOp.CONV, "CONV_2D"),
    FusedKernel(KernelOp.LINEAR, "FULLY_CONNECTED"),
    FusedKernel(KernelOp.ADD, "ADD"),
    FusedKernel(KernelOp.MATMUL, "BATCH_MATMUL"),
    FusedKernel(KernelOp.CONV, "CONV_2D_16x8", max_bits=16),
    FusedKernel(KernelOp.LINEAR, "FULLY_CONNECTED_16x8", max_bits=16),
    FusedKernel(KernelOp.MEAN, "MEAN_16x8", max_bits=16),
    FusedKernel(KernelOp.GLOBAL_AVG_POOL, "MEAN_16x8", max_bits=16),
)
"""LiteRT (XNNPACK delegate, the interpreter's default on CPU): int8 CONV_2D /
DEPTHWISE_CONV_2D / FULLY_CONNECTED accumulate exactly in int32 and requantize in float32
(``float(acc) * (s_in * s_w / s_out)``, rounded half to even, plus the zero point) -- the same
arithmetic as ONNX Runtime's QLinearConv / QGemm; ADD: XNNPACK's integer multipliers at a common
shift (:func:`fxquant.runtime_math.tflite.xnnpack_add`); BATCH_MATMUL: XNNPACK takes it (float32
requantization) only when the right operand's zero point is 0, else LiteRT's builtin kernel
requantizes in fixed point (:func:`fxquant.runtime_math.tflite.requantize_product`).  16x8
CONV_2D / FULLY_CONNECTED run on LiteRT's builtin kernels: exact accumulation, int64 bias,
fixed-point requantization (:func:`fxquant.runtime_math.tflite.requantize`); 16-bit MEAN / global
average pooling: :func:`fxquant.runtime_math.tflite.mean`.  Checked code for code against LiteRT
in ``tests/runtime_math/test_tflite.py`` and ``tests/export/test_tflite_export.py``."""

ORT_EXACT_IN_FLOAT: frozenset[str] = frozenset({"QLinearConcat", "QLinearLeakyRelu"})
"""ORT kernels fused as well, whose arithmetic is exactly the float simulation's: requantizing
lookup tables built from float32 ``DequantizeLinear -> f -> QuantizeLinear`` with an ``f``
(identity, ``x if x >= 0 else alpha * x``) torch computes identically."""


def op_type_key(op_type: str) -> str:
    """How profiles name op types: lower case without underscores (``Softmax`` / ``softmax``,
    ``AvgPool2d`` / ``avg_pool2d`` -> ``avgpool2d``)."""
    return op_type.lower().replace("_", "")


@dataclass(frozen=True)
class FixedOutput:
    """A runtime's fixed output grid for some op types (TFLite: SOFTMAX / LOGISTIC int8 output
    scale 1/256, zero point -128).

    Attributes:
        op_types: op types (:func:`op_type_key` form: ``softmax``, ``sigmoid``).
        bits: the activation width this grid is for (8 or 16).
        scale / zero_point: the grid.
    """

    op_types: frozenset[str]
    bits: int
    scale: float
    zero_point: int


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
        quantize_concat_inputs: the exporter writes the per-tensor output quantizer of a
            ``Concat`` on each of its inputs instead (the same values: quantizing is elementwise
            and a concatenation only moves values).  OpenVINO 2026.4's CPU plugin crashes the
            process (segfault in ``compile_model``) on a quantized ``Concat`` output that is
            quantized again, ``Concat -> Q/DQ -> [Identity / Reshape / Mul or Add by a
            constant] -> Q/DQ`` (``cat(...) * 0.5``; the second Q/DQ of a ``torch.fx.wrap``
            function ending in ``cat``, torchvision's ``_patch_merging_pad``); with the
            quantizers on the inputs it compiles (tests/export/test_onnx_export.py:
            test_openvino_requantized_concat).  Only
            the ONNX layout changes, not the numerics.
        activation_symmetric_16: 16-bit activations (``activation_dtype_16``) are symmetric.
        engine: the ``torch.backends.quantized.engine`` :func:`fxquant.convert` builds for
            (``None``: the profile has no torch engine).
        runtime: the :class:`Runtime` :func:`fxquant.verify` checks exports in (``None``: any),
            and whose arithmetic the model computes in eval mode when ``kernels`` is not empty.
        kernels: the patterns ``runtime`` runs as fused integer kernels, in priority order (the
            runtime simulation, :mod:`fxquant.graph.simulate`; empty: the float simulation).
        fixed_outputs: output grids the runtime fixes for some op types (prepare gives those
            ops a fixed-scale output quantizer whatever the qconfig's observer).
        same_grid_ops: op types whose integer kernel writes its input's grid (TFLite's average
            pooling and resizing): prepare gives the output the input's quantizer.
        shared_grid_ops: op types whose inputs and output must share one grid (TFLite's
            concatenation): prepare makes their quantizers one.
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
    quantize_concat_inputs: bool = False
    activation_symmetric_16: bool = True
    engine: str | None = None
    runtime: Runtime | None = None
    kernels: tuple[FusedKernel, ...] = ()
    fixed_outputs: tuple[FixedOutput, ...] = ()
    same_grid_ops: frozenset[str] = frozenset()
    shared_grid_ops: frozenset[str] = frozenset()

    def fixed_output(self, op_type: str, bits: int) -> FixedOutput | None:
        """The fixed output grid of ``op_type`` at ``bits`` (``None``: free)."""
        key = op_type_key(op_type)
        return next((f for f in self.fixed_outputs if key in f.op_types and f.bits == bits),
                    None)

    def __post_init__(self) -> None:
        if not isinstance(self.placement, Placement):
            raise ConfigError(
                f"BackendProfile.placement must be a Placement, got {self.placement!r}"
            )
        if not isinstance(self.scale_math, ScaleMath):
            raise ConfigError(
                f"BackendProfile.scale_math must be a ScaleMath, got {self.scale_math!r}"
            )
        if self.runtime is not None and not isinstance(self.runtime, Runtime):
            raise ConfigError(f"BackendProfile.runtime must be a Runtime, got {self.runtime!r}")

    def numerics_differ(self, other: BackendProfile) -> list[str]:
        """The fields (other than name, engine, runtime and its kernels, and the ONNX layout
        ``quantize_concat_inputs``) in which ``other`` asks for other numerics or placement than
        this profile; empty when a model prepared for one is what the other would have
        prepared."""
        skip = {"name", "engine", "runtime", "kernels", "quantize_concat_inputs"}
        return [f.name for f in fields(self)
                if f.name not in skip and getattr(self, f.name) != getattr(other, f.name)]

    def __repr__(self) -> str:
        return f"BackendProfile({self.name!r})"

    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain JSON value (dtypes by name, enums by value, sets as sorted
        lists), for checkpoints (:func:`fxquant.save`).

        >>> BackendProfile.from_dict(get_profile("x86").to_dict()) == get_profile("x86")
        True
        """
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, QDType):
                v = v.name
            elif isinstance(v, enum.Enum):
                v = v.value
            elif isinstance(v, frozenset):
                v = sorted(v)
            elif f.name == "kernels":
                v = [_kernel_to_plain(k) for k in v]
            elif f.name == "fixed_outputs":
                v = [{"op_types": sorted(o.op_types), "bits": o.bits, "scale": o.scale,
                      "zero_point": o.zero_point} for o in v]
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: Any) -> BackendProfile:
        """Inverse of :meth:`to_dict`; fields it lacks take their defaults (a profile saved
        before they existed).  :class:`~fxquant.CheckpointError` for anything else."""
        if not isinstance(data, dict):
            raise CheckpointError(f"backend profile: expected a dict, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise CheckpointError(f"backend profile: unknown fields {bounded_list(unknown)}")
        values: dict[str, Any] = {}
        try:
            for name, v in data.items():
                values[name] = _field_from_plain(name, v)
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"backend profile: {bounded(exc, 300)}") from None


_PARSE: dict[str, Any] = {
    "activation_dtype": dtype_by_name, "weight_dtype": dtype_by_name,
    "activation_dtype_16": dtype_by_name, "scale_math": ScaleMath, "placement": Placement,
    "runtime": Runtime,
}


def _kernel_to_plain(k: FusedKernel) -> dict[str, Any]:
    return {"op": k.op.value, "kernel": k.kernel,
            "input_ndims": None if k.input_ndims is None else list(k.input_ndims),
            "quantized_output": k.quantized_output, "max_bits": k.max_bits,
            "integer": k.integer, "without_bias": k.without_bias}


def _kernel_from_plain(value: Any) -> FusedKernel:
    keys = {"op", "kernel", "input_ndims", "quantized_output", "max_bits", "integer",
            "without_bias"}
    if not isinstance(value, dict) or not set(value) <= keys or "op" not in value \
            or "kernel" not in value:
        raise TypeError(f"a fused kernel is a dict with keys {sorted(keys)}, got "
                        f"{bounded(repr(value))}")
    ndims = value.get("input_ndims")
    if ndims is not None and (not isinstance(ndims, list)
                              or not all(isinstance(n, int) for n in ndims)):
        raise TypeError(f"fused kernel input_ndims must be a list of ints or null, got "
                        f"{bounded(repr(ndims))}")
    flags = {k: value[k] for k in ("quantized_output", "integer", "without_bias") if k in value}
    if not all(isinstance(v, bool) for v in flags.values()):
        raise TypeError(f"fused kernel flags must be true or false, got {bounded(repr(flags))}")
    bits = value.get("max_bits", 8)
    if isinstance(bits, bool) or not isinstance(bits, int) or not isinstance(value["kernel"], str):
        raise TypeError(f"fused kernel {bounded(repr(value))}: kernel is a str, max_bits an int")
    return FusedKernel(KernelOp(value["op"]), value["kernel"],
                       None if ndims is None else tuple(ndims), max_bits=bits, **flags)


def _fixed_output_from_plain(value: Any) -> FixedOutput:
    ok = isinstance(value, dict) and set(value) == {"op_types", "bits", "scale", "zero_point"} \
        and isinstance(value["op_types"], list) \
        and all(isinstance(t, str) for t in value["op_types"]) \
        and all(isinstance(value[k], int) and not isinstance(value[k], bool)
                for k in ("bits", "zero_point")) \
        and isinstance(value["scale"], (int, float)) and not isinstance(value["scale"], bool)
    if not ok:
        raise TypeError(f"a fixed output grid is {{op_types: [str], bits: int, scale: float, "
                        f"zero_point: int}}, got {bounded(repr(value))}")
    return FixedOutput(frozenset(value["op_types"]), value["bits"], float(value["scale"]),
                       value["zero_point"])


def _field_from_plain(name: str, value: Any) -> Any:
    """A :class:`BackendProfile` field from its :meth:`~BackendProfile.to_dict` value."""
    if name in ("kernels", "fixed_outputs"):
        if not isinstance(value, list):
            raise TypeError(f"{name} must be a list, got {bounded(repr(value))}")
        parse_one = _kernel_from_plain if name == "kernels" else _fixed_output_from_plain
        return tuple(parse_one(v) for v in value)
    if name in ("same_grid_ops", "shared_grid_ops"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"{name} must be a list of op types, got {bounded(repr(value))}")
        return frozenset(value)
    if name == "float_input_ops":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"float_input_ops must be a list of op names, got "
                            f"{bounded(repr(value))}")
        return frozenset(value)
    if value is None and name in ("engine", "runtime"):
        return None
    if name == "max_qdq_bits":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"max_qdq_bits must be an int, got {bounded(repr(value))}")
        return value
    parse = _PARSE.get(name)
    if parse is not None or name in ("name", "engine"):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {bounded(repr(value))}")
        return value if parse is None else parse(value)
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {bounded(repr(value))}")
    return value


# TFLite's integer kernels fix these output grids (LiteRT refuses other scales): int8
# SOFTMAX / LOGISTIC 1/256 zp -128, TANH 1/128 zp 0, LOG_SOFTMAX 16/256 zp 127; 16x8: 1/32768
# zp 0 (TANH / LOGISTIC / SOFTMAX)
_SIGMOID = frozenset({"softmax", "sigmoid"})
_TANH = frozenset({"tanh"})
TFLITE_FIXED_OUTPUTS = (
    FixedOutput(_SIGMOID, 8, 1.0 / 256.0, -128),
    FixedOutput(_TANH, 8, 1.0 / 128.0, 0),
    FixedOutput(frozenset({"logsoftmax"}), 8, 16.0 / 256.0, 127),
    FixedOutput(_SIGMOID | _TANH, 16, 1.0 / 32768.0, 0),
)

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
            kernels=ORT_KERNELS,
        ),
        # OpenVINO CPU: u8 activations / i8 per-channel weights like ORT; conv + residual add
        # become one kernel with a sum post-op, so the conv output is not requantized.  Its
        # integer ReduceMean is wrong for inputs with a non-zero zero point (hundreds of steps
        # off; tests/export: test_openvino_quantized_reduce_mean_is_wrong), so a mean's input
        # stays float there.  Its 16-bit Q/DQ goes through the 8-bit path: wider quantizers are
        # exported as float arithmetic.  A requantized Concat output crashes its compile_model:
        # a Concat's output quantizer is written on its inputs.
        BackendProfile(
            "openvino",
            activation_dtype=quint8,
            weight_dtype=qint8,
            activation_symmetric=False,
            requantize_before_add=False,
            float_input_ops=frozenset({"mean"}),
            max_qdq_bits=8,
            quantize_concat_inputs=True,
            runtime=Runtime.OPENVINO,
        ),
        # LiteRT / TFLite: int8 asymmetric activations, symmetric narrow-range per-channel int8
        # weights, int32 bias (int64 for 16x8, whose int16 activations are symmetric)
        BackendProfile(
            "tflite",
            activation_dtype=qint8,
            weight_dtype=qint8.narrow(),
            activation_symmetric=False,
            int32_bias=True,
            fixed_outputs=TFLITE_FIXED_OUTPUTS,
            same_grid_ops=frozenset({"avgpool1d", "avgpool2d", "interpolate", "upsample",
                                     "upsamplingnearest2d", "upsamplingbilinear2d"}),
            shared_grid_ops=frozenset({"cat", "concat", "concatenate"}),
            runtime=Runtime.LITERT,
            kernels=LITERT_KERNELS,
        ),
        BackendProfile(
            "tensorrt",
            activation_dtype=qint8,
            weight_dtype=qint8.narrow(),
            placement=Placement.WEIGHTED_INPUTS,
        ),
    )
}


RUNTIME_KERNELS: dict[str, tuple[FusedKernel, ...]] = {"onnxruntime": ORT_KERNELS,
                                                      "litert": LITERT_KERNELS}
"""Runtime name -> the patterns it fuses (for verifying a model against a runtime other than its
profile's)."""


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

