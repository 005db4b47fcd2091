"""``fxquant sensitivity`` and ``fxquant report``: the debug tools on a model named on the
command line.

``SPEC`` is ``package.module:function`` or ``path/to/file.py:function``.  The function takes no
arguments and returns a float model in eval mode, or ``(model, example_inputs)``, or
``(model, example_inputs, data)`` where ``data`` is an iterable of batches.  Without data,
``--batches`` random batches shaped like the example inputs are used; without example inputs,
``--input-shape`` gives them.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pathlib
from typing import Any

import torch

from ..algorithms import calibrate
from ..backends import PROFILES
from ..debug import compare, report, sensitivity
from ..graph import prepare
from ..modelio import ModelInputs, as_inputs
from ..qconfig import default_calibration_qconfig_setter

__all__ = ["load_spec", "sensitivity_arguments", "sensitivity_run", "report_arguments",
           "report_run"]


def load_spec(spec: str, input_shape: str | None, batches: int, seed: int = 0):
    """``(float_model, example inputs, data list)`` from a ``module:function`` spec (batches
    and example inputs as :mod:`fxquant.modelio` defines them)."""
    if ":" not in spec:
        raise SystemExit(f"fxquant: SPEC must look like 'package.module:function' or "
                         f"'file.py:function', got {spec!r}")
    where, func_name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = pathlib.Path(where)
        if not path.exists():
            raise SystemExit(f"fxquant: no such file {where!r}")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        module = importlib.import_module(where)
    factory = getattr(module, func_name, None)
    if factory is None:
        raise SystemExit(f"fxquant: {where!r} has no attribute {func_name!r}")
    out: Any = factory()
    model, example, data = (out, None, None) if not isinstance(out, tuple) else (
        *out, *(None,) * (3 - len(out)))
    if example is None:
        if not input_shape:
            raise SystemExit("fxquant: the spec returned only a model; pass --input-shape "
                             "(e.g. 1,3,32,32) or return (model, example_inputs)")
        example = torch.randn(*(int(d) for d in input_shape.split(",")))
    example = as_inputs(example)
    if data is None:
        g = torch.Generator().manual_seed(seed)
        data = [_random_like(example, g) for _ in range(batches)]
    return model.eval(), example, list(data)


def _random_like(example: ModelInputs, g: torch.Generator) -> ModelInputs:
    """A batch shaped like ``example``: float tensors random normal, the rest as they are."""
    def like(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return torch.randn(v.shape, generator=g)
        return v

    return ModelInputs(tuple(like(a) for a in example.args),
                       {k: like(v) for k, v in example.kwargs.items()})


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC",
                        help="package.module:function or file.py:function returning a model, "
                             "(model, example_inputs) or (model, example_inputs, data)")
    parser.add_argument("--backend", default="generic", choices=sorted(PROFILES),
                        help="backend profile (default: %(default)s)")
    parser.add_argument("--input-shape", metavar="D,D,...",
                        help="example input shape when SPEC returns only a model")
    parser.add_argument("--batches", type=int, default=8, metavar="N",
                        help="calibration batches (and random batches without data; "
                             "default: %(default)s)")
    parser.add_argument("--metric", default="L1", choices=["L1", "cosine", "mse", "sqnr"],
                        help="sensitivity metric (default: %(default)s)")
    parser.add_argument("--mode", default="one_on", choices=["one_on", "one_off"],
                        help="one quantizer on, or one off (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _prepared(args: argparse.Namespace):
    model, example, data = load_spec(args.spec, args.input_shape, args.batches)
    qmodel = prepare(model, example, default_calibration_qconfig_setter, backend=args.backend)
    calibrate(qmodel, data[: args.batches], progress=not args.quiet)
    return model, qmodel, data


def _sensitivity(args, model, qmodel, data):
    return sensitivity(qmodel, data[: args.batches], metric=args.metric, float_model=model,
                       mode=args.mode, progress=not args.quiet)


def sensitivity_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--out", default="sensitivity.pt",
                        help="table path (.pt; .txt and .csv next to it; default: %(default)s)")


def sensitivity_run(args: argparse.Namespace) -> int:
    model, qmodel, data = _prepared(args)
    tables = _sensitivity(args, model, qmodel, data)
    tables = tables if isinstance(tables, list) else [tables]
    out = pathlib.Path(args.out)
    for i, table in enumerate(tables):
        path = out if len(tables) == 1 else out.with_name(f"{out.stem}_output{i}{out.suffix}")
        print(table)
        for written in table.save(path):
            print(f"wrote {written}")
    return 0


def report_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--out", default="fxquant_report.html",
                        help="HTML report path (PNGs next to it; default: %(default)s)")
    parser.add_argument("--embed", action="store_true", help="inline the images (one file)")


def report_run(args: argparse.Namespace) -> int:
    model, qmodel, data = _prepared(args)
    table = compare(model, qmodel, data[: min(2, len(data))])
    sens = _sensitivity(args, model, qmodel, data)
    path = report(args.out, compare=table, sensitivity=sens, embed=args.embed)
    print(f"wrote {path}")
    return 0
