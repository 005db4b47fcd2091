"""NVIDIA ``pytorch_quantization`` on fxquant: change ``pytorch_quantization`` to
``fxquant.compat.pytorch_quantization`` in the imports.

>>> import torch
>>> from fxquant.compat.pytorch_quantization import quant_modules
>>> from fxquant.compat.pytorch_quantization import nn as quant_nn
>>> quant_modules.initialize()
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
>>> quant_modules.deactivate()
>>> type(model[0]).__name__
'QuantConv2d'
>>> for q in model.modules():
...     if isinstance(q, quant_nn.TensorQuantizer):
...         q.disable_quant(); q.enable_calib()
>>> _ = model(torch.randn(2, 3, 8, 8))
>>> for q in model.modules():
...     if isinstance(q, quant_nn.TensorQuantizer):
...         q.load_calib_amax(); q.enable_quant(); q.disable_calib()
>>> model[0].input_quantizer.amax.shape, model[0].weight_quantizer.amax.shape
(torch.Size([]), torch.Size([4, 1, 1, 1]))

Modules: :mod:`.tensor_quant` (``QuantDescriptor``, ``tensor_quant``, ``fake_tensor_quant``:
NVIDIA's exact numerics), :mod:`.nn` (``TensorQuantizer``, ``QuantConv2d`` ...), :mod:`.calib`
(``MaxCalibrator``, ``HistogramCalibrator`` on fxquant's observers), :mod:`.quant_modules`.
:func:`export_onnx` writes the TensorRT Q/DQ model through fxquant's exporter (``tensorrt``
profile); ``torch.onnx.export`` under ``quant_modules.enable_onnx_export()`` works too.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from torch import nn

from ... import FakeQuantize, calibrate, prepare
from ... import export_onnx as _fx_export_onnx
from ...errors import ExportError
from ...export import ExportResult
from ...numerics import QDType
from ...observers import FixedScaleObserver, MinMaxObserver
from ...qconfig import OpInfo, QConfig, SetterContext
from . import calib, quant_modules, tensor_quant
from . import nn as quant_nn
from .nn import TensorQuantizer
from .tensor_quant import QuantDescriptor, bounds

__all__ = [
    "calib",
    "quant_modules",
    "tensor_quant",
    "quant_nn",
    "QuantDescriptor",
    "TensorQuantizer",
    "export_onnx",
    "float_copy",
]


def _float_class(m: nn.Module) -> type | None:
    if not isinstance(m, quant_nn.QuantInputMixin):
        return None
    for cls in type(m).__mro__:
        if cls.__module__.startswith("torch.nn"):
            return cls
    return None


def float_copy(model: nn.Module) -> tuple[nn.Module, dict[str, nn.Module]]:
    """A copy of ``model`` with every quantized layer turned back into its torch class, and
    ``{path: quantized layer}`` of the original."""
    quantized = {p: m for p, m in model.named_modules() if _float_class(m) is not None}
    out = copy.deepcopy(model)
    for _, m in list(out.named_modules()):
        cls = _float_class(m)
        if cls is None:
            continue
        for q in ("_input_quantizer", "_weight_quantizer"):
            m._modules.pop(q, None)
        m.__class__ = cls
    return out, quantized


def _grid(q: TensorQuantizer) -> QDType:
    return QDType(q.num_bits, not q.unsigned, narrow_range=q.narrow_range and not q.unsigned)


class _AmaxSetter:
    """fxquant setter: each quantized layer's quantizers at its TensorQuantizers' grids."""

    def __init__(self, quantized: dict[str, nn.Module]) -> None:
        self.qconfigs: dict[str, QConfig] = {}
        for path, m in quantized.items():
            inq: TensorQuantizer = m.input_quantizer
            act = None
            if inq.is_enabled:
                if inq.amax is None or inq.amax.numel() != 1:
                    raise ExportError(
                        f"export_onnx: the input quantizer of {path!r} has no per-tensor amax; "
                        "calibrate it (enable_calib, run data, load_calib_amax) first"
                    )
                scale = float(inq.amax) / bounds(inq.num_bits, inq.unsigned, False)[1]
                act = FakeQuantize.with_args(
                    observer=FixedScaleObserver.with_args(scale=scale, zero_point=0),
                    dtype=_grid(inq), symmetric=not inq.unsigned)
            weight = None
            wq = getattr(m, "_weight_quantizer", None)
            if wq is not None and wq.is_enabled:
                weight = FakeQuantize.with_args(
                    observer=MinMaxObserver, dtype=_grid(wq), symmetric=True,
                    ch_axis=0 if wq.axis is not None else None, is_weight=True)
            self.qconfigs[path] = QConfig(input=act, weight=weight)

    def __call__(self, op: OpInfo, ctx: SetterContext) -> QConfig | None:
        return self.qconfigs.get(op.name)


def export_onnx(model: nn.Module, dummy_input: Any, path: str | os.PathLike,
                **kwargs: Any) -> ExportResult:
    """Write a calibrated ``quant_modules`` / ``QuantConv2d`` model as a TensorRT Q/DQ ONNX file.

    The model is turned back into float layers and prepared by :func:`fxquant.prepare` with the
    ``tensorrt`` profile, one quantizer per TensorQuantizer: activations at scale
    ``amax / max_bound`` (int8, zero point 0), weights per output channel from their min / max
    (NVIDIA's max calibration of a weight; ConvTranspose on axis 1).  ``kwargs`` go to
    :func:`fxquant.export_onnx` (``opset``, ``dynamic_batch`` ...).  Pooling layers' input
    quantizers are exported too; everything else stays float, as in the source model.
    """
    float_model, quantized = float_copy(model)
    setter = _AmaxSetter(quantized)
    qmodel = prepare(float_model.eval(), dummy_input, setter, backend="tensorrt")
    calibrate(qmodel, [dummy_input], progress=False)
    return _fx_export_onnx(qmodel, dummy_input, path, **kwargs)
