"""``tinynn.converter.base``: ``TFLiteConverter`` on :func:`fxquant.export_tflite`.

TinyNeuralNetwork converts a model (a float model, or the result of ``quantizer.convert(...)``)
to TFLite with ``TFLiteConverter(model, dummy_input, tflite_path, ...).convert()``.  Here the
model is exported through fxquant's one capture path:

* a model prepared by fxquant (``QATQuantizer.quantize()`` / ``PostQuantizer.quantize()``, or
  :func:`fxquant.prepare`), or the ``quantizer.convert(...)`` result of such a model, becomes a
  fully integer TFLite model (the prepared model's quantizers give every grid);
* any other ``nn.Module`` becomes a float32 TFLite model.

Arguments honoured: ``quantize_target_type`` (``"uint8"`` -- TinyNN's default -- / ``"int8"``:
int8 kernels inside, with ``fuse_quant_dequant=True`` uint8 / int8 model inputs and outputs;
``"int16"``: the 16x8 model, which needs 16-bit activations), ``nchw_transpose`` /
``input_transpose`` / ``output_transpose`` (4-D inputs / outputs NHWC, TinyNN's default, or
NCHW).  Other keyword arguments are accepted and ignored.  LiteRT's uint8 kernels are legacy:
``"uint8"`` keeps int8 kernels inside (the same real values, zero point shifted by 128).
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from torch import nn

from ....errors import ConfigError
from ....export.tflite_export import TFLiteExport, export_tflite
from ....fake_quant import FakeQuantize, FakeQuantState, set_fake_quantize
from ....graph.report import REPORT_KEY

__all__ = ["TFLiteConverter", "register_prepared"]

_TARGETS = ("uint8", "int8", "int16")
_PREPARED: weakref.WeakKeyDictionary[Any, nn.Module] = weakref.WeakKeyDictionary()


def register_prepared(converted: Any, prepared: nn.Module) -> None:
    """Remember the prepared model a converted (torch int8) model came from, so that
    ``TFLiteConverter(converted, ...)`` exports the prepared model's quantizers."""
    _PREPARED[converted] = prepared


def _is_prepared(model: Any) -> bool:
    meta = getattr(model, "meta", None)
    return (isinstance(meta, dict) and REPORT_KEY in meta) or any(
        isinstance(m, FakeQuantize) for m in model.modules())


class TFLiteConverter:
    """TinyNN's converter (see the module docstring).

    >>> import torch
    >>> from fxquant.compat.tinynn.converter import TFLiteConverter
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    >>> TFLiteConverter(model, torch.randn(1, 3, 8, 8), "/tmp/tinynn_float.tflite").convert()
    """

    def __init__(self, model: Any, dummy_input: Any, tflite_path: str | os.PathLike[str] =
                 "out/model.tflite", input_transpose: bool | None = None,
                 output_transpose: bool | None = None, nchw_transpose: bool = True,
                 quantize_target_type: str = "uint8", fuse_quant_dequant: bool = False,
                 **kwargs: Any) -> None:
        if quantize_target_type not in _TARGETS:
            raise ConfigError(f"TFLiteConverter: quantize_target_type must be one of {_TARGETS}, "
                              f"got {quantize_target_type!r}")
        prepared = _PREPARED.get(model, model)
        if not isinstance(prepared, nn.Module):
            raise ConfigError("TFLiteConverter: model must be an nn.Module (a float model, a "
                              "quantizer.quantize() model or its quantizer.convert() result); "
                              f"got {type(model).__name__}")
        self.model = prepared
        self.dummy_input = dummy_input
        self.tflite_path = os.fspath(tflite_path)
        transpose = nchw_transpose
        if input_transpose is not None or output_transpose is not None:
            transpose = bool(input_transpose if input_transpose is not None else output_transpose)
        self.nhwc_io = bool(transpose)
        self.quantize_target_type = quantize_target_type
        self.fuse_quant_dequant = fuse_quant_dequant
        self.options = kwargs
        self.result: TFLiteExport | None = None

    def convert(self) -> None:
        """Write the TFLite file (checked in LiteRT); the export summary is in ``.result``."""
        quantized = _is_prepared(self.model)
        if quantized and self.quantize_target_type == "int16":
            bits = {m.dtype.bits for m in self.model.modules()
                    if isinstance(m, FakeQuantize) and not m.is_weight}
            if bits and max(bits) < 16:
                raise ConfigError("TFLiteConverter: quantize_target_type='int16' needs 16-bit "
                                  "activation quantizers (prepare with a 16-bit template)")
        io_dtype = None
        if quantized and self.fuse_quant_dequant and self.quantize_target_type != "int16":
            io_dtype = self.quantize_target_type
        os.makedirs(os.path.dirname(os.path.abspath(self.tflite_path)), exist_ok=True)
        self.model.eval()
        if quantized and any(isinstance(m, FakeQuantize) and m.state is FakeQuantState.CALIBRATION
                             for m in self.model.modules()):
            # post-training quantization: the observed ranges become the scales (TinyNN's
            # convert step does this implicitly)
            set_fake_quantize(self.model, FakeQuantState.VALIDATION)
        self.result = export_tflite(self.model, self.dummy_input, self.tflite_path,
                                    io_dtype=io_dtype, nhwc_io=self.nhwc_io, quantize=quantized)
