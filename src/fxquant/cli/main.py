"""``fxquant <command> [options]``: one subparser per entry of :data:`COMMANDS`.

A command is two functions, ``add_arguments(parser)`` and ``run(args) -> exit status``; add one
by writing them here and listing them in :data:`COMMANDS`.  Option defaults are read from the
library function a command wraps (its signature), never repeated as literals here.

Exit codes (:mod:`.common`): 0 ok, 1 the command ran but a check failed, 2 a user mistake.  A
:class:`~fxquant.errors.FxquantError` (or an ``OSError`` of the file system) raised by a command
is printed as one line on stderr with code 2; usage errors are one line too.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from ..demo import run_demo
from ..errors import FxquantError, bounded
from ..version import __version__
from . import debug as debug_cli
from . import inspect_cmd, netrun, quantize
from .common import EXIT_USAGE, non_negative_int, one_line
from .common import signature_defaults as _defaults

__all__ = ["Command", "COMMANDS", "build_parser", "main", "run_command"]


@dataclass(frozen=True)
class Command:
    """A subcommand: a one-line ``help``, its options and what it runs."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# -- demo -------------------------------------------------------------------------------------
def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    d = _defaults(run_demo)
    parser.epilog = "example: fxquant demo --epochs 5 --qat-epochs 1 --quiet"
    parser.add_argument("--epochs", type=non_negative_int, default=d["epochs"], metavar="N",
                        help="float training epochs (default: %(default)s)")
    parser.add_argument("--qat-epochs", type=non_negative_int, default=d["qat_epochs"],
                        metavar="N",
                        help="QAT fine-tuning epochs; 0 = calibrate only (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=d["seed"],
                        help="fixes split, initialisation and data order (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars, print only the table")


def _demo_run(args: argparse.Namespace) -> int:
    result = run_demo(epochs=args.epochs, qat_epochs=args.qat_epochs, seed=args.seed,
                      progress=not args.quiet)
    print(result.table())
    return 0


COMMANDS: dict[str, Command] = {
    "demo": Command(
        help="train a small CNN on scikit-learn digits, quantize it W8A8 with PTQ and QAT, "
        "print accuracy / size / time",
        add_arguments=_demo_arguments,
        run=_demo_run,
    ),
    "sensitivity": Command(
        help="per-op quantization sensitivity table of a model (torch.save + .txt + .csv)",
        add_arguments=debug_cli.sensitivity_arguments,
        run=debug_cli.sensitivity_run,
    ),
    "report": Command(
        help="HTML accuracy report (per-layer comparison, sensitivity, histograms) of a model",
        add_arguments=debug_cli.report_arguments,
        run=debug_cli.report_run,
    ),
    "quantize": Command(
        help="quantize a model with calibration data from raw files (like snpe-dlc-quantize): "
        "QDQ ONNX + encodings + summary + HTML report + verify",
        add_arguments=quantize.quantize_arguments,
        run=quantize.quantize_run,
    ),
    "inspect": Command(
        help="list every quantized tensor of an ONNX model or encodings file with dtype, "
        "scale, zero point / offset and bit width (like snpe-dlc-info)",
        add_arguments=inspect_cmd.inspect_arguments,
        run=inspect_cmd.inspect_run,
    ),
    "run": Command(
        help="run an ONNX model in ONNX Runtime or OpenVINO on an input list of raw files, "
        "writing raw outputs (like snpe-net-run)",
        add_arguments=netrun.run_arguments,
        run=netrun.run_run,
    ),
    "compare": Command(
        help="compare two output folders of 'fxquant run' per output: max |diff|, SQNR, "
        "quantization steps",
        add_arguments=netrun.compare_arguments,
        run=netrun.compare_run,
    ),
}
"""Subcommand name -> :class:`Command`, in the order ``fxquant --help`` lists them."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error: ``prog: error: message (see prog --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(bounded(message, 400))} "
                              f"(see '{self.prog} --help')\n")


def build_parser(prog: str = "fxquant") -> argparse.ArgumentParser:
    """The top-level parser with one subparser per :data:`COMMANDS` entry."""
    parser = _Parser(
        prog=prog, description="fxquant: graph-mode quantization of unmodified PyTorch models.",
        epilog="example: fxquant quantize mymodel.py:build --calib-dir calib --backend "
        "onnxruntime --out int8; 'fxquant COMMAND --help' shows an example for each command",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="show the Python traceback of an unexpected (internal) error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=textwrap.fill(cmd.help, 79),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run, _prog=p.prog)
    return parser


def _parse_and_run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # argparse exits after --help, --version and usage errors
        return done.code if isinstance(done.code, int) else 1 if done.code else 0
    prog = getattr(args, "_prog", parser.prog)
    try:
        return args._run(args)
    except BrokenPipeError:  # `fxquant inspect ... | head`: the reader left, nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except FxquantError as err:  # a user mistake: one line, no traceback
        print(f"{prog}: error: {one_line(str(err))}", file=sys.stderr)
    except OSError as err:  # the file system refused (disk full, permissions changed ...)
        where = f" {bounded(err.filename)!r}" if err.filename else ""
        print(f"{prog}: error: {err.strerror or err}{where}; check the path and free space",
              file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not a user mistake: still one line unless asked
        if getattr(args, "traceback", False):
            raise
        print(f"{prog}: internal error: {type(err).__name__}: {one_line(bounded(str(err), 300))}"
              " (please report it; run again with --traceback to see where)",
              file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None, prog: str = "fxquant") -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command; returns the exit status.

    ``--help`` / ``--version`` return 0 and usage errors 2 (argparse's codes) instead of
    exiting, so that ``main`` can be called in-process.
    """
    return _parse_and_run(build_parser(prog), argv)


def run_command(name: str, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run one command with its own parser (for ``python -m fxquant.<module>`` entry points);
    same return convention as :func:`main`."""
    cmd = COMMANDS[name]
    parser = _Parser(prog=prog, description=textwrap.fill(cmd.help, 79),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.add_arguments(parser)
    parser.add_argument("--traceback", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(_run=cmd.run, _prog=parser.prog)
    return _parse_and_run(parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
