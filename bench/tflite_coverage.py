"""TFLite coverage hook for the capture-coverage bench (:mod:`bench.coverage`).

:func:`tflite_cell` tells whether a model exports to TFLite with the ``tflite`` profile and runs
in LiteRT, as one table cell: ``"int8"`` (fully integer), ``"int8 + N float op(s)"`` (ops TFLite
has no integer kernel for, e.g. LayerNorm, kept float32), or ``"no: <reason>"``.  The coverage
suite calls it per model next to its ONNX Runtime column::

    row["TFLite"] = tflite_cell(model, example_inputs, calib_batches, tmp_dir)

``python -m bench.tflite_coverage [name ... | --all]`` runs it over the coverage zoo (default: its
quick set) and prints one line per model.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import torch
from torch import nn

import fxquant

__all__ = ["tflite_cell", "main"]


def _short(exc: BaseException, limit: int = 90) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tflite_cell(model: nn.Module, example: Any, calib: list[Any], tmp: str) -> str:
    """Prepare ``model`` for the ``tflite`` profile, calibrate on ``calib``, export with
    :func:`fxquant.export_tflite` (which runs the file once in LiteRT) and summarise."""
    try:
        q = fxquant.prepare(model, example, fxquant.default_calibration_qconfig_setter,
                            backend="tflite")
        fxquant.calibrate(q, calib, progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fxquant.export_tflite(q, example, os.path.join(tmp, "coverage.tflite"))
    except Exception as exc:  # a cell, never a crash of the suite
        return f"no: {_short(exc)}"
    n = len(result.float_ops)
    return "int8" if n == 0 else f"int8 + {n} float op(s)"


def main(argv: list[str] | None = None) -> int:
    """Run :func:`tflite_cell` over the coverage zoo (default: its quick set), print a table."""
    import tempfile

    from bench._tv_shim import ensure_torchvision_importable

    ensure_torchvision_importable()
    from bench.coverage import _redraw_zero_linears, _settle_bn
    from bench.coverage_zoo import QUICK_MODELS, zoo

    names = list(argv if argv is not None else sys.argv[1:])
    everything = zoo()
    if names == ["--all"]:
        names = list(everything)
    specs = [everything[n] for n in (names or QUICK_MODELS)]
    ok = 0
    with tempfile.TemporaryDirectory(prefix="fxquant_tflite_cov_") as tmp:
        for spec in specs:
            try:
                torch.manual_seed(0)
                model = spec.build()
                _redraw_zero_linears(model)
                _settle_bn(model, spec, 2, 4)
                calib = [spec.inputs(4) for _ in range(2)]
                example = spec.inputs(1)
            except Exception as exc:
                print(f"{spec.name:34s} float model failed: {_short(exc)}", flush=True)
                continue
            cell = tflite_cell(model, example, calib, tmp)
            ok += not cell.startswith("no")
            print(f"{spec.name:34s} {cell}", flush=True)
    print(f"{ok} / {len(specs)} export to TFLite and run in LiteRT")
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    raise SystemExit(main())
