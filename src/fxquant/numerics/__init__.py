"""Pure quantization numerics: dtypes, granularity, qparams, affine ops, autograd rules."""

from .affine import (
    ScaleMath,
    broadcast_param,
    clip_mask,
    dequantize,
    quantize,
    quantize_codes,
    storage_dtype,
)
from .autograd import fake_quantize_lsq, fake_quantize_ste, fake_quantize_with_mask
from .dtypes import QDType, dtype_by_name, qint4, qint8, qint16, qint32, quint4, quint8, quint16
from .fused import enable_fused_kernels, fused_kernels
from .granularity import Granularity, PerChannel, PerTensor, granularity_from_axis
from .native import enable_native_kernels, native_kernels
from .paths import fake_quantize
from .qparams import DEFAULT_EPS, QParams, choose_qparams

__all__ = [
    "QDType",
    "dtype_by_name",
    "qint4",
    "quint4",
    "qint8",
    "quint8",
    "qint16",
    "quint16",
    "qint32",
    "Granularity",
    "PerTensor",
    "PerChannel",
    "granularity_from_axis",
    "ScaleMath",
    "broadcast_param",
    "quantize",
    "quantize_codes",
    "dequantize",
    "fake_quantize",
    "clip_mask",
    "storage_dtype",
    "fake_quantize_ste",
    "fake_quantize_lsq",
    "fake_quantize_with_mask",
    "enable_fused_kernels",
    "fused_kernels",
    "enable_native_kernels",
    "native_kernels",
    "choose_qparams",
    "QParams",
    "DEFAULT_EPS",
]
