"""``fxquant sensitivity`` and ``fxquant report``: the debug tools on a model named on the
command line.

``SPEC`` is a model spec (:mod:`.spec`): ``package.module:function`` (imported from the current
folder), ``path/to/file.py:function`` or an exported ``file.pt2``.  The function takes no
arguments and returns a float model, or ``(model, example_inputs)``, or ``(model,
example_inputs, data)`` where ``data`` is an iterable of batches.  Without data, ``--batches``
random batches shaped like the example inputs are used; without example inputs,
``--input-shape`` gives them.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

import torch

from ..algorithms import calibrate
from ..backends import PROFILES
from ..debug import compare, report, sensitivity
from ..errors import ConfigError, bounded
from ..export.atomic import check_writable
from ..graph import prepare
from ..qconfig import default_calibration_qconfig_setter
from .common import positive_int
from .rawdata import parse_shape, shape_argument
from .spec import SPEC_HELP, check_runs, load_model

__all__ = ["load_spec", "sensitivity_arguments", "sensitivity_run", "report_arguments",
           "report_run"]


def load_spec(spec: str, input_shape: str | None, batches: int, seed: int = 0
              ) -> tuple[Any, tuple[Any, ...], list[Any]]:
    """``(float_model, example_inputs tuple, data list)`` from a model spec."""
    loaded = load_model(spec, max_batches=batches)
    example = loaded.example
    source = f"the example inputs of {spec}"
    if input_shape:
        try:
            _, shape = parse_shape(input_shape)
        except ValueError as err:
            raise ConfigError(f"--input-shape: {err}") from None
        example, source = (torch.randn(*shape),), f"--input-shape {input_shape}"
    if example is None:
        raise ConfigError(f"model spec {bounded(spec)!r} returned only a model; pass "
                          "--input-shape (e.g. 1,3,32,32) or return (model, example_inputs)")
    check_runs(loaded.model, example, source)
    data = loaded.data
    if not data:
        g = torch.Generator().manual_seed(seed)
        data = [tuple(torch.randn(e.shape, generator=g) if e.is_floating_point() else e
                      for e in example) for _ in range(batches)]
    return loaded.model, example, list(data)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    parser.add_argument("--backend", default="generic", choices=sorted(PROFILES),
                        help="backend profile (default: %(default)s)")
    parser.add_argument("--input-shape", metavar="D,D,...", type=shape_argument,
                        help="example input shape when SPEC returns only a model")
    parser.add_argument("--batches", type=positive_int, default=8, metavar="N",
                        help="calibration batches (and random batches without data; "
                             "default: %(default)s)")
    parser.add_argument("--metric", default="L1", choices=["L1", "cosine", "mse", "sqnr"],
                        help="sensitivity metric (default: %(default)s)")
    parser.add_argument("--mode", default="one_on", choices=["one_on", "one_off"],
                        help="one quantizer on, or one off (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _prepared(args: argparse.Namespace, outputs: list[str]):
    for path in outputs:  # before any work: an unwritable path is a one-line error now
        try:
            check_writable(path)
        except OSError as err:
            raise ConfigError(f"--out: {err}; choose a path you can write to") from None
    model, example, data = load_spec(args.spec, args.input_shape, args.batches)
    qmodel = prepare(model, example, default_calibration_qconfig_setter, backend=args.backend)
    calibrate(qmodel, data[: args.batches], progress=not args.quiet)
    return model, qmodel, data


def _sensitivity(args, model, qmodel, data):
    return sensitivity(qmodel, data[: args.batches], metric=args.metric, float_model=model,
                       mode=args.mode, progress=not args.quiet)


def sensitivity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("example: fxquant sensitivity mymodel:build --batches 4 --out "
                     "sensitivity.pt   (mymodel.py in the current folder)")
    _common(parser)
    parser.add_argument("--out", default="sensitivity.pt",
                        help="table path (.pt; .txt and .csv next to it; default: %(default)s)")


def sensitivity_run(args: argparse.Namespace) -> int:
    out = pathlib.Path(args.out)
    model, qmodel, data = _prepared(args, [str(out), str(out.with_suffix(".txt")),
                                           str(out.with_suffix(".csv"))])
    tables = _sensitivity(args, model, qmodel, data)
    tables = tables if isinstance(tables, list) else [tables]
    for i, table in enumerate(tables):
        path = out if len(tables) == 1 else out.with_name(f"{out.stem}_output{i}{out.suffix}")
        print(table)
        for written in table.save(path):
            print(f"wrote {written}")
    return 0


def report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("example: fxquant report mymodel.py:build --input-shape 1,3,32,32 --out "
                     "report.html")
    _common(parser)
    parser.add_argument("--out", default="fxquant_report.html",
                        help="HTML report path (PNGs next to it; default: %(default)s)")
    parser.add_argument("--embed", action="store_true", help="inline the images (one file)")


def report_run(args: argparse.Namespace) -> int:
    model, qmodel, data = _prepared(args, [args.out])
    table = compare(model, qmodel, data[: min(2, len(data))])
    sens = _sensitivity(args, model, qmodel, data)
    path = report(args.out, compare=table, sensitivity=sens, embed=args.embed)
    print(f"wrote {path}")
    return 0
