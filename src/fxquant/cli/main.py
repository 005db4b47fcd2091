"""``fxquant <command> [options]``: one subparser per entry of :data:`COMMANDS`.

A command is two functions, ``add_arguments(parser)`` and ``run(args) -> exit status`` (next to
the library code they wrap: :mod:`fxquant.demo`, :mod:`.debug`); add one by listing them in
:data:`COMMANDS`.  Option defaults are read from the library function a command wraps (its
signature), never repeated as literals.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .. import demo
from ..version import __version__
from . import debug as debug_cli

__all__ = ["Command", "COMMANDS", "build_parser", "main", "run_command"]


@dataclass(frozen=True)
class Command:
    """A subcommand: a one-line ``help``, its options and what it runs."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "demo": Command(help=demo.HELP, add_arguments=demo.add_arguments, run=demo.run_from_args),
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
}
"""Subcommand name -> :class:`Command`, in the order ``fxquant --help`` lists them."""


def build_parser(prog: str = "fxquant") -> argparse.ArgumentParser:
    """The top-level parser with one subparser per :data:`COMMANDS` entry."""
    parser = argparse.ArgumentParser(
        prog=prog, description="fxquant: graph-mode quantization of unmodified PyTorch models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def _parse_and_run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # argparse exits after --help, --version and usage errors
        return done.code if isinstance(done.code, int) else 1 if done.code else 0
    return args._run(args)


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
    parser = argparse.ArgumentParser(prog=prog, description=cmd.help)
    cmd.add_arguments(parser)
    parser.set_defaults(_run=cmd.run)
    return _parse_and_run(parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
