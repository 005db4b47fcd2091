"""Atomic file writes: a temp file in the destination folder, then ``os.replace``.

Nothing half-written is ever left at ``path``: on any error the temp file is removed and the
previous content of ``path`` (if any) is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from ..errors import FxquantError, bounded

__all__ = ["check_writable", "atomic_path", "write_bytes_atomic"]


def check_writable(
    path: str | os.PathLike[str], error: type[FxquantError] | None = None, what: str = ""
) -> str:
    """The absolute path of ``path`` after checking that a file can be created there.

    Args:
        path: the file to write.
        error: raise this fxquant error class (its message starting with ``what``, the
            function or argument) instead of the ``OSError``.

    Raises:
        OSError: the folder does not exist, is not a folder, or is not writable; ``path`` is
            an existing folder, or an existing read-only file (replacing it atomically would
            bypass its permissions).
    """
    try:
        return _check_writable(path)
    except (OSError, TypeError) as err:
        if error is None:
            raise
        raise error(f"{what}: {err}; choose a writable file path") from None


def _check_writable(path: str | os.PathLike[str]) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a file path is a str or os.PathLike, got {type(path).__name__}")
    path = os.path.abspath(os.fspath(path))
    shown = repr(bounded(path, 160))
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {shown}: it is a folder")
    if not os.path.isdir(folder):
        what = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
        raise FileNotFoundError(f"cannot write {shown}: folder {bounded(folder, 160)!r} {what}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {shown}: folder {bounded(folder, 160)!r} is not "
                              "writable")
    if os.path.exists(path) and (not os.access(path, os.W_OK)
                                 or not os.stat(path).st_mode & 0o222):
        raise PermissionError(f"cannot write {shown}: the file exists and is read-only")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temp file name next to ``path``; it replaces ``path`` when the block succeeds.

    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with atomic_path(os.path.join(d, "a.txt")) as tmp:
    ...     _ = open(tmp, "w").write("hello")
    >>> open(os.path.join(d, "a.txt")).read(), os.listdir(d)
    ('hello', ['a.txt'])
    """
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=os.path.dirname(path))
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; returns the absolute path."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return os.path.abspath(os.fspath(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
