"""The argument checks of :func:`fxquant.export_onnx`, before any export work.

:func:`check_export_arguments` makes sure that ``onnx`` imports, that the file can be written
where asked (a folder, a missing folder, an existing read-only file are refused, naming the
path), that ``keep_float`` is a list of op names, and that the prepared model runs on the
example inputs (run with its quantizers off, so nothing is observed; a
:class:`~fxquant.DataError` naming the module that fails, instead of an error from deep inside
the exporter).  Errors of the model itself (no scale yet ...) are left to the
exporter, which names them in its own terms.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from torch import nn

from ..errors import ConfigError, DataError, ExportError, FxquantError, bounded, require
from ..fake_quant import FakeQuantState, quantizer_states
from ..graph.capture import check_inputs_fit
from ..graph.report import get_report
from ..modelio import as_inputs
from .atomic import check_writable

__all__ = ["check_export_arguments"]


def check_export_arguments(
    qmodel: nn.Module, example_inputs: Any, path: str | os.PathLike[str], keep_float: Any
) -> str:
    """The absolute path to write; raises the errors listed in the module docstring."""
    require("onnx", "onnx", "export_onnx")
    try:
        get_report(qmodel)
    except ConfigError as err:
        raise ExportError(f"export_onnx: {err}") from None
    out = check_writable(path, ExportError, "export_onnx: cannot write the ONNX file")
    if isinstance(keep_float, (str, bytes)) or not isinstance(keep_float, Iterable):
        raise ConfigError(
            f"export_onnx: keep_float is a list of op names (e.g. [{bounded(keep_float, 40)!r}]), "
            f"got {type(keep_float).__name__}"
        )
    inputs = as_inputs(example_inputs)
    try:
        with quantizer_states(qmodel, FakeQuantState.FLOAT):  # observes nothing
            check_inputs_fit(qmodel, inputs, "export_onnx")
    except DataError:
        raise
    except FxquantError:
        pass  # e.g. a quantizer without a scale: the exporter names it in its own terms
    return out
