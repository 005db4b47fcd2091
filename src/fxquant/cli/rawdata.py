"""Raw tensor files and input lists, the SNPE / QNN way of feeding a model from the shell.

* A **raw file** holds one input tensor as float32 little-endian values, C order, no header
  (integer inputs such as token ids are written as float32 too and cast back).
* A **shape** comes from ``--input-shape`` (``1,3,224,224`` for the inputs in order, or
  ``name:1,3,224,224``) or from the model (ONNX input shapes, a factory's example inputs).
  A shape taken from the model keeps its first dimension free: a file may hold any whole
  number of samples (a batch); a shape given with ``--input-shape`` is exact.
* An **input list** is a text file with one model call per line.  A line holds one path per
  input in input order, or ``name:=path`` entries in any order (SNPE's syntax, separated by
  spaces).  Empty lines and ``#`` comment lines are skipped; a first line ``%out1 out2`` names
  the outputs to write (SNPE's ``%`` header).  Relative paths are read from the current folder
  or, failing that, from the input list's folder.
* A **calibration folder** (``--calib-dir``) holds the ``*.raw`` files of a single-input model,
  or one subfolder per input name with the same number of files; files are matched in sorted
  order.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError, bounded, bounded_list

__all__ = [
    "InputSpec",
    "InputList",
    "parse_shape",
    "resolve_shapes",
    "read_input_list",
    "calib_dir_rows",
    "read_raw",
    "write_raw",
    "raw_file_name",
    "MAX_RAW_BYTES",
    "shape_argument",
]

MAX_RAW_BYTES = 4 << 30
"""A raw file larger than this (4 GiB) is refused rather than read."""

_DIMS = re.compile(r"^\s*\d+(\s*,\s*\d+)*\s*$")


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, shape, dtype, and whether the shape is exact (from
    ``--input-shape``) or lets the first dimension follow the file.  ``shape`` is ``None``
    when the model does not fix it (then ``--input-shape`` must)."""

    name: str
    shape: tuple[int, ...] | None
    dtype: np.dtype
    exact: bool = False

    def describe(self) -> str:
        if self.shape is None:
            return "unknown"
        dims = [str(d) for d in self.shape]
        if dims and not self.exact:
            dims[0] = "N"
        return "x".join(dims) or "scalar"


def parse_shape(text: str) -> tuple[str | None, tuple[int, ...]]:
    """``"1,3,224,224"`` -> ``(None, (1, 3, 224, 224))``; ``"x:1,8"`` -> ``("x", (1, 8))``.

    Raises:
        ValueError: not comma-separated positive integers (the message says what is expected).
    """
    name, dims = None, text
    if ":" in text:
        name, dims = text.rsplit(":", 1)
        name = name.strip()
        if not name:
            raise ValueError(f"expected name:D,D,... with a name before ':', got {text!r}")
    if not _DIMS.match(dims):
        raise ValueError(
            f"expected comma-separated whole numbers such as 1,3,224,224 (or "
            f"name:1,3,224,224), got {bounded(text, 60)!r}"
        )
    shape = tuple(int(d) for d in dims.split(","))
    if any(d < 1 for d in shape) or len(shape) > 8:
        raise ValueError(f"every dimension must be >= 1 (at most 8 of them), got {text!r}")
    if math.prod(shape) > MAX_RAW_BYTES // 4:
        raise ValueError(f"shape {text!r} has more than {MAX_RAW_BYTES // 4} elements")
    return name, shape


def shape_argument(text: str) -> str:
    """``argparse`` type of ``--input-shape``: checks the syntax, keeps the text."""
    try:
        parse_shape(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def resolve_shapes(
    model_inputs: Sequence[InputSpec], given: Sequence[str] | None, option: str = "--input-shape"
) -> list[InputSpec]:
    """The model's inputs with the shapes of ``given`` (``--input-shape`` values) applied.

    Unnamed shapes apply to the inputs in order; named ones to that input.  A model input
    without any shape (unknown rank) and no ``--input-shape`` is a :class:`ConfigError`.
    """
    specs = list(model_inputs)
    if given:
        parsed = []
        for text in given:
            try:
                parsed.append(parse_shape(text))
            except ValueError as err:
                raise ConfigError(f"{option}: {err}") from None
        names = [s.name for s in specs]
        unnamed = [p for p in parsed if p[0] is None]
        named = [p for p in parsed if p[0] is not None]
        if unnamed and named:
            raise ConfigError(f"{option}: give every shape with a name (name:D,D,...) or none")
        if unnamed and len(unnamed) != len(specs):
            raise ConfigError(
                f"{option}: the model has {len(specs)} input(s) ({bounded_list(names)}) but "
                f"{len(unnamed)} shape(s) were given; give one per input, in order"
            )
        for i, (name, shape) in enumerate(parsed):
            if name is not None:
                if name not in names:
                    raise ConfigError(
                        f"{option}: the model has no input {bounded(name)!r}; its inputs: "
                        f"{bounded_list(names)}"
                    )
                i = names.index(name)
            specs[i] = InputSpec(specs[i].name, shape, specs[i].dtype, exact=True)
    missing = [s.name for s in specs if s.shape is None]
    if missing:
        raise ConfigError(
            f"the shape of input(s) {bounded_list(missing)} is not known from the model; pass "
            f"{option} (e.g. {option} 1,3,224,224)"
        )
    return specs


# -- input lists -------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputList:
    """A parsed input list: ``rows[i]`` maps each input name to its file for call ``i``;
    ``outputs`` are the names of the ``%`` header (``None``: every output)."""

    path: str
    rows: tuple[dict[str, str], ...]
    outputs: tuple[str, ...] | None


def _locate(path: str, list_dir: str, where: str) -> str:
    if os.path.isabs(path):
        candidates = [path]
    else:
        candidates = [os.path.abspath(path), os.path.join(list_dir, path)]
    for c in candidates:
        if os.path.isfile(c):
            return c
    tried = " or ".join(repr(bounded(c, 80)) for c in dict.fromkeys(candidates))
    raise DataError(f"{where}: no such file {bounded(path)!r} (looked for {tried})")


def read_input_list(path: str, input_names: Sequence[str], option: str = "--input-list"
                    ) -> InputList:
    """Parse an input list (module docstring) for a model whose inputs are ``input_names``."""
    if not os.path.isfile(path):
        raise ConfigError(f"{option}: no such file {bounded(path)!r}")
    list_dir = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read(16 << 20).splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"{option} {bounded(path)!r} is not a text file (input lists list "
                          "one raw file per input on each line)") from None
    except OSError as err:
        raise ConfigError(f"{option}: cannot read {bounded(path)!r}: {err.strerror}") from None
    rows: list[dict[str, str]] = []
    outputs: tuple[str, ...] | None = None
    names = list(input_names)
    for number, raw_line in enumerate(lines, 1):
        line = raw_line.strip()
        where = f"{bounded(path, 60)} line {number}"
        if not line or line.startswith("#"):
            continue
        if line.startswith("%"):
            if rows or outputs is not None:
                raise DataError(f"{where}: the %output line must come before the first input "
                                "line, once")
            outputs = tuple(line[1:].split())
            if not outputs:
                raise DataError(f"{where}: '%' must be followed by output names")
            continue
        tokens = line.split()
        named = [t for t in tokens if ":=" in t]
        if named and len(named) != len(tokens):
            raise DataError(f"{where}: mixes name:=path entries and plain paths; use one form")
        row: dict[str, str] = {}
        if named:
            for t in tokens:
                name, file = t.split(":=", 1)
                if name not in names:
                    raise DataError(
                        f"{where}: the model has no input {bounded(name)!r}; its inputs: "
                        f"{bounded_list(names)}"
                    )
                if name in row:
                    raise DataError(f"{where}: input {bounded(name)!r} is given twice")
                row[name] = _locate(file, list_dir, where)
            absent = [n for n in names if n not in row]
            if absent:
                raise DataError(f"{where}: no file for input(s) {bounded_list(absent)}")
        else:
            if len(tokens) != len(names):
                raise DataError(
                    f"{where}: {len(tokens)} path(s) for a model with {len(names)} input(s) "
                    f"({bounded_list(names)}); give one per input in this order, or "
                    "name:=path entries"
                )
            row = {n: _locate(t, list_dir, where) for n, t in zip(names, tokens, strict=True)}
        rows.append(row)
    if not rows:
        raise DataError(f"{option} {bounded(path)!r} lists no input files")
    return InputList(os.path.abspath(path), tuple(rows), outputs)


def _raw_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.endswith(".raw") and os.path.isfile(os.path.join(folder, f)))


def calib_dir_rows(folder: str, input_names: Sequence[str], option: str = "--calib-dir"
                   ) -> list[dict[str, str]]:
    """The rows of a calibration folder (module docstring)."""
    if not os.path.isdir(folder):
        raise ConfigError(f"{option}: no such folder {bounded(folder)!r}")
    names = list(input_names)
    if len(names) == 1 and _raw_files(folder):
        return [{names[0]: f} for f in _raw_files(folder)]
    if len(names) == 1:
        raise DataError(f"{option} {bounded(folder)!r} holds no *.raw files")
    per_input = {}
    for n in names:
        sub = os.path.join(folder, n)
        if not os.path.isdir(sub):
            raise DataError(
                f"{option} {bounded(folder)!r}: the model has {len(names)} inputs, so the folder "
                f"needs one subfolder of *.raw files per input; {bounded(n)!r} is missing"
            )
        per_input[n] = _raw_files(sub)
    counts = {n: len(v) for n, v in per_input.items()}
    if len(set(counts.values())) != 1 or not next(iter(counts.values())):
        raise DataError(f"{option} {bounded(folder)!r}: the input subfolders must hold the same "
                        f"number (>= 1) of *.raw files; found {counts}")
    return [dict(zip(names, files, strict=True))
            for files in zip(*per_input.values(), strict=True)]


# -- raw files ---------------------------------------------------------------------------------
def read_raw(path: str, spec: InputSpec) -> np.ndarray:
    """Read one raw float32 file as input ``spec`` (shape checked, dtype cast)."""
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise DataError(f"cannot read {bounded(path)!r}: {err.strerror}") from None
    if spec.shape is None:
        raise ConfigError(f"the shape of input {bounded(spec.name)!r} is not known; pass "
                          "--input-shape")
    full = math.prod(spec.shape)
    free = not spec.exact and len(spec.shape) >= 1
    unit = math.prod(spec.shape[1:]) if free else full
    if size > MAX_RAW_BYTES:
        raise DataError(f"{bounded(path)!r} is {size} bytes, larger than the "
                        f"{MAX_RAW_BYTES >> 30} GiB a raw input may have")
    if size % 4 or size == 0 or (size // 4) % max(unit, 1) or (not free and size // 4 != full):
        need = (f"a multiple of {unit} values ({spec.describe()} with any first dimension)"
                if free else f"exactly {full} values")
        raise DataError(
            f"{bounded(path)!r} holds {size} bytes = {size / 4:g} float32 values, but input "
            f"{bounded(spec.name)!r} of shape {spec.describe()} needs {need}; fix the file or "
            "pass the right --input-shape"
        )
    data = np.fromfile(path, dtype="<f4")
    shape = (data.size // max(unit, 1), *spec.shape[1:]) if free else spec.shape
    data = data.reshape(shape)
    if np.issubdtype(spec.dtype, np.floating):
        return data.astype(spec.dtype, copy=False)
    if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
        raise DataError(
            f"{bounded(path)!r}: input {bounded(spec.name)!r} is {spec.dtype} but the file "
            "holds non-integer values (raw files hold float32; integers are written as floats)"
        )
    info = np.iinfo(spec.dtype) if np.issubdtype(spec.dtype, np.integer) else None
    if info is not None and data.size and (data.min() < info.min or data.max() > info.max):
        raise DataError(f"{bounded(path)!r}: values outside the range of {spec.dtype}")
    return data.astype(spec.dtype)


def write_raw(path: str, array: np.ndarray) -> None:
    """Write ``array`` as a raw float32 little-endian file."""
    np.ascontiguousarray(array, dtype="<f4").tofile(path)


def raw_file_name(tensor: str) -> str:
    """The file name of an output tensor: SNPE's ``<name>.raw`` with ``/`` and ``:`` (and
    other characters that are not safe in a file name) replaced by ``_``."""
    safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", tensor).lstrip(".") or "output"
    return f"{safe[:200]}.raw"
