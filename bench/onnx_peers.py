"""Peers that quantize the *float ONNX export* of a model (any number of inputs).

* :func:`export_float_onnx` -- ``torch.onnx.export`` (dynamo exporter; the TorchScript one
  when that fails), static shapes: every batch fed later has the example's batch size.
* :func:`ort_quantize_static` -- ONNX Runtime's ``quant_pre_process`` then ``quantize_static``
  (QDQ, per-channel, U8S8, min-max), its recommended CPU settings.
* :func:`nncf_quantize_onnx` -- ``nncf.quantize`` on the ONNX model with its defaults
  (preset performance: symmetric int8, per-channel weights, min-max, fast bias correction);
  NNCF's ONNX backend patches nothing in torch, so it runs in this process.
* :func:`run_onnx` -- outputs of an ONNX file in an ONNX Runtime CPU session.

Every function raises on failure; callers turn errors into table cells.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["export_float_onnx", "ort_quantize_static", "nncf_quantize_onnx", "run_onnx", "feeds"]


@contextlib.contextmanager
def _quiet():
    """torch.onnx / ORT / NNCF print progress and warnings: keep the benchmark log readable."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def export_float_onnx(model: nn.Module, example: tuple[Tensor, ...], path: str) -> str:
    """Write the float model to ``path``; returns which exporter worked."""
    model = copy.deepcopy(model).eval()
    names = [f"input_{i}" for i in range(len(example))]
    with _quiet():
        try:
            torch.onnx.export(model, example, path, dynamo=True, input_names=names,
                              external_data=False, verbose=False)
            return "dynamo"
        except Exception:
            torch.onnx.export(model, example, path, dynamo=False, input_names=names)
            return "torchscript"


def feeds(path: str, batches: Sequence[tuple[Tensor, ...]]) -> list[dict[str, np.ndarray]]:
    """The batches as ONNX Runtime feeds of the file's inputs (in order)."""
    import onnx

    names = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
    return [{n: t.detach().numpy() for n, t in zip(names, b, strict=False)} for b in batches]


def run_onnx(path: str, feed: dict[str, np.ndarray]) -> list[Tensor]:
    """Every output of ``path`` on ``feed`` (ONNX Runtime, CPU, torch's thread count)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    return [torch.from_numpy(np.asarray(o)) for o in
            sess.run(None, {k: v for k, v in feed.items() if k in wanted})]


def ort_quantize_static(float_path: str, calib: list[dict[str, np.ndarray]], out: str) -> str:
    """ONNX Runtime static quantization of ``float_path`` into ``out``; returns a note."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib)

        def get_next(self):
            return next(self._it, None)

    pre = out + ".pre.onnx"
    note = "quant_pre_process"
    with _quiet():
        try:
            quant_pre_process(float_path, pre)
            src = pre
        except Exception as err:
            src, note = float_path, f"quant_pre_process failed ({type(err).__name__})"
        try:
            quantize_static(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        finally:
            if os.path.exists(pre):
                os.remove(pre)
    return f"{note}, QDQ per-channel U8S8 MinMax"


def nncf_quantize_onnx(float_path: str, calib: list[dict[str, np.ndarray]], out: str) -> str:
    """NNCF (ONNX backend, defaults) of ``float_path`` into ``out``; returns a note."""
    if importlib.util.find_spec("nncf") is None:
        raise ModuleNotFoundError("nncf is not installed (make bench-deps)")
    import nncf
    import onnx

    with _quiet():
        quantized = nncf.quantize(onnx.load(float_path), nncf.Dataset(calib),
                                  subset_size=len(calib))
        onnx.save(quantized, out)
    return f"nncf {nncf.__version__} quantize() defaults on the ONNX model"
