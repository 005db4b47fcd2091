"""What every command shares: exit codes, argument types, one-line errors and output folders.

Exit codes: :data:`EXIT_OK` (0), :data:`EXIT_CHECK_FAILED` (1: the command ran, but a check
it was asked to make failed, e.g. ``verify`` above the allowed steps) and :data:`EXIT_USAGE` (2:
a user mistake -- bad argument, missing / unreadable file, model spec that does not resolve,
unwritable output; one line on stderr, no traceback).

Output folders are written all at once (:class:`StagedOutput`): the folder is checked (and a
hidden staging folder created next to it) *before* any work starts, every file goes to the
staging folder, and only a finished run moves them into place.  A failed run leaves nothing.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import tempfile
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ..errors import ConfigError, bounded

__all__ = [
    "EXIT_OK",
    "EXIT_CHECK_FAILED",
    "EXIT_USAGE",
    "one_line",
    "user_code_error",
    "positive_int",
    "non_negative_int",
    "positive_float",
    "StagedOutput",
    "existing_file",
    "signature_defaults",
]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


def one_line(message: str) -> str:
    """``message`` on one line: its lines joined with ``"; "``, other characters that are not
    printable shown as escapes (``\\x1b``), so a terminal shows exactly one line."""
    text = "; ".join(p for p in (part.strip() for part in message.splitlines()) if p)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def user_code_error(what: str, exc: BaseException) -> ConfigError:
    """A :class:`ConfigError` for an exception raised by the user's code (``what`` did it):
    its type, message and the innermost source line, on one line."""
    where = ""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    if frames:
        f = frames[-1]
        where = f" (at {bounded(f.filename, 80)}:{f.lineno})"
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" (at {bounded(exc.filename, 80)}:{exc.lineno})"
    return ConfigError(
        f"{what} raised {type(exc).__name__}: {bounded(one_line(str(exc)), 200)}{where}; "
        "fix that code and run again"
    )


def signature_defaults(func: Callable[..., Any]) -> dict[str, Any]:
    """Keyword defaults of ``func`` (the single source of a command's option defaults)."""
    return {
        name: p.default
        for name, p in inspect.signature(func).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


# -- argparse types: a bad value is a usage error naming the option ---------------------------
def positive_int(text: str) -> int:
    """An ``int >= 1`` (``argparse`` type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number >= 1, got {bounded(text, 40)!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An ``int >= 0`` (``argparse`` type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number >= 0, got {bounded(text, 40)!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite ``float > 0`` (``argparse`` type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number > 0, got {bounded(text, 40)!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def existing_file(path: str, option: str) -> str:
    """``path`` if it is a readable file, else a :class:`ConfigError` naming ``option``."""
    if "\0" in path or not os.path.exists(path):
        raise ConfigError(f"{option}: no such file {bounded(path)!r}; check the path")
    if os.path.isdir(path):
        raise ConfigError(f"{option}: {bounded(path)!r} is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{option}: {bounded(path)!r} is not readable; check its permissions")
    return path


# -- output folders -----------------------------------------------------------------------------
class StagedOutput:
    """An output folder that appears complete or not at all.

    Creating one checks that ``path`` can be written (an existing file, or a file where a
    parent folder should be, is a :class:`ConfigError` naming ``option``) and creates a hidden
    staging folder in the nearest existing ancestor.  Write files under :attr:`root`;
    :meth:`commit` moves them into ``path`` (files already there with the same names are
    replaced, others are kept).  Leaving the ``with`` block without :meth:`commit` removes the
    staging folder.
    """

    def __init__(self, path: str, option: str) -> None:
        if "\0" in path or not path.strip():
            raise ConfigError(f"{option} {bounded(path)!r} is not writable: not a usable folder "
                              "name")
        self.path = os.path.abspath(os.fspath(path))
        self.option = option
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ConfigError(
                f"{option} {bounded(path)!r} is a file; give a folder (it is created if missing)"
            )
        anchor = self.path
        while not os.path.exists(anchor):
            anchor = os.path.dirname(anchor)
        if not os.path.isdir(anchor):
            raise ConfigError(
                f"{option} {bounded(path)!r}: {bounded(anchor)!r} is a file, so no folder can be "
                "created below it; choose another output folder"
            )
        stage_in = anchor if anchor != self.path else os.path.dirname(self.path) or anchor
        try:
            if os.path.isdir(self.path):  # must be able to put files into it
                fd, probe = tempfile.mkstemp(prefix=".fxquant-probe-", dir=self.path)
                os.close(fd)
                os.unlink(probe)
            self.root = tempfile.mkdtemp(
                prefix=f".{os.path.basename(self.path) or 'out'}.fxquant-", dir=stage_in
            )
        except OSError as err:
            raise ConfigError(
                f"{option} {bounded(path)!r} is not writable ({err.strerror or err}); choose "
                "a folder you can write to"
            ) from None
        self.committed = False

    def file(self, *parts: str) -> str:
        """Path of a file inside the staging folder (its parent folders are created)."""
        p = os.path.join(self.root, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def final(self, *parts: str) -> str:
        """Where :meth:`file` ``(*parts)`` will be after :meth:`commit`."""
        return os.path.join(self.path, *parts)

    def commit(self) -> str:
        """Move everything into place; returns the output folder."""
        if not os.path.exists(self.path):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            os.rename(self.root, self.path)
        else:
            clash = _conflicts(self.root, self.path)
            if clash:
                raise ConfigError(
                    f"{self.option}: cannot replace {bounded(clash[0])!r} (a file and a folder "
                    "of the same name); remove it or choose another output folder"
                )
            _merge(self.root, self.path)
            shutil.rmtree(self.root, ignore_errors=True)
        self.committed = True
        return self.path

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.committed:
            self.discard()


def _conflicts(src: str, dst: str) -> list[str]:
    """Entries of ``src`` whose counterpart in ``dst`` is a file where a folder goes or back."""
    out = []
    for name in sorted(os.listdir(src)):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if not os.path.lexists(d):
            continue
        if os.path.isdir(s) and os.path.isdir(d):
            out += _conflicts(s, d)
        elif os.path.isdir(s) or os.path.isdir(d):
            out.append(d)
    return out


def _merge(src: str, dst: str) -> None:
    for name in sorted(os.listdir(src)):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if os.path.isdir(s) and os.path.isdir(d):
            _merge(s, d)
        else:
            os.replace(s, d)
