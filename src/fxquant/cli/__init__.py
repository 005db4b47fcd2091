"""The ``fxquant`` command line: argument parsing and wiring only (see :mod:`.main`)."""

from .main import COMMANDS, Command, build_parser, main

__all__ = ["COMMANDS", "Command", "build_parser", "main"]
