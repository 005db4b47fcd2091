"""``fxquant run`` (SNPE's ``snpe-net-run``) and ``fxquant compare`` (of two output folders).

``run`` feeds each line of an input list to an ONNX model in ONNX Runtime or OpenVINO and
writes every output as ``<output-dir>/Result_<N>/<output>.raw`` (float32, like SNPE).

``compare DIR_A DIR_B`` pairs the ``.raw`` files of two such folders by relative path and
reports per output name (over every ``Result_N``): max and mean absolute difference, SQNR of B
against A (the reference) and, when ``--grid`` names the ONNX model or its encodings, the
difference in quantization steps of the output's grid.  ``--max-steps`` / ``--min-sqnr`` make
it a check (exit code 1 when it fails).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..debug.compare import ErrorStats
from ..errors import ConfigError, DataError, bounded, bounded_list
from ..export.naming import dq_output
from .common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    StagedOutput,
    existing_file,
    non_negative_int,
    positive_int,
)
from .inspect_cmd import read_quantized
from .rawdata import (
    raw_file_name,
    read_input_list,
    read_raw,
    resolve_shapes,
    shape_argument,
    write_raw,
)
from .runner import RUNTIMES, open_session

__all__ = ["run_arguments", "run_run", "compare_arguments", "compare_run", "RUN_EXAMPLE",
           "COMPARE_EXAMPLE", "output_files"]

RUN_EXAMPLE = ("example: fxquant run int8/model.onnx --input-list calib/input_list.txt "
               "--output-dir out_int8")
COMPARE_EXAMPLE = ("example: fxquant compare out_float out_int8 --grid int8/model.onnx "
                   "--max-steps 2")


def run_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = RUN_EXAMPLE
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to run")
    p.add_argument("--input-list", required=True, metavar="FILE",
                   help="one line per call: raw float32 files in input order, or name:=path "
                        "entries; '#' lines are comments, a first line '%%out1 out2' selects "
                        "outputs")
    p.add_argument("--output-dir", default="output", metavar="DIR",
                   help="results go to DIR/Result_N/<output>.raw (default: %(default)s)")
    p.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                   help="CPU runtime (default: %(default)s)")
    p.add_argument("--input-shape", action="append", metavar="[NAME:]D,D,...",
                   type=shape_argument,
                   help="exact shape of an input (repeat per input) when the model does not "
                        "fix it")
    p.add_argument("--threads", type=positive_int, metavar="N", help="runtime threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def output_files(names: Sequence[str]) -> dict[str, str]:
    """Output name -> file name in ``Result_N`` (``<name>.raw``, made safe and unique)."""
    files: dict[str, str] = {}
    used: set[str] = set()
    for n in names:
        f = raw_file_name(n)
        stem, k = f[:-4], 1
        while f in used:
            f, k = f"{stem}_{k}.raw", k + 1
        used.add(f)
        files[n] = f
    return files


def run_run(args: argparse.Namespace) -> int:
    existing_file(args.model, "MODEL.onnx")
    existing_file(args.input_list, "--input-list")
    with StagedOutput(args.output_dir, "--output-dir") as out:
        session = open_session(args.model, args.runtime, args.threads)
        specs = resolve_shapes(session.inputs, args.input_shape)
        inputs = read_input_list(args.input_list, [s.name for s in specs])
        outputs = inputs.outputs or session.outputs
        unknown = [o for o in outputs if o not in session.outputs]
        if unknown:
            raise ConfigError(
                f"{bounded(args.input_list)!r}: the %output line names {bounded_list(unknown)}, "
                f"which the model does not output; its outputs: {bounded_list(session.outputs)}"
            )
        by_name = {s.name: s for s in specs}
        files = output_files(outputs)
        for i, row in enumerate(tqdm(inputs.rows, desc=f"run ({args.runtime})",
                                     disable=args.quiet, leave=False)):
            feeds = {n: read_raw(path, by_name[n]) for n, path in row.items()}
            for name, value in session.run(feeds, outputs).items():
                write_raw(out.file(f"Result_{i}", files[name]), value)
        with open(out.file("outputs.json"), "w", encoding="utf-8") as f:
            json.dump({"model": os.path.abspath(args.model), "runtime": args.runtime,
                       "outputs": files, "calls": len(inputs.rows)}, f, indent=2)
        folder = out.commit()
    print(f"wrote {len(inputs.rows)} result(s) x {len(outputs)} output(s) to {folder} "
          f"({args.runtime})")
    return EXIT_OK


# -- compare -----------------------------------------------------------------------------------
def compare_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = COMPARE_EXAMPLE
    p.add_argument("reference", metavar="DIR_A", help="reference outputs (e.g. the float model)")
    p.add_argument("other", metavar="DIR_B", help="outputs to compare (e.g. the int8 model)")
    p.add_argument("--grid", metavar="MODEL.onnx|ENCODINGS",
                   help="read each output's quantization step from this ONNX model or encodings "
                        "file, to report differences in steps")
    p.add_argument("--max-steps", type=non_negative_int, metavar="N",
                   help="check: every output with a grid within N steps (else exit code 1)")
    p.add_argument("--min-sqnr", type=float, metavar="DB",
                   help="check: every output's SQNR at least DB decibels (else exit code 1)")


@dataclass
class _Output:
    name: str
    files: int = 0
    stats: ErrorStats | None = None
    step: float | None = None
    max_steps: int | None = None
    identical: int = 0


def _raw_files(folder: str, option: str) -> dict[str, str]:
    """Relative path -> path of every ``.raw`` file under ``folder``."""
    if os.path.isfile(folder):
        raise ConfigError(f"{option}: {bounded(folder)!r} is a file; give a folder of "
                          "'fxquant run' results")
    if not os.path.isdir(folder):
        raise ConfigError(f"{option}: no such folder {bounded(folder)!r}")
    found = {}
    for root, _dirs, names in os.walk(folder):
        for n in names:
            if n.endswith(".raw"):
                path = os.path.join(root, n)
                found[os.path.relpath(path, folder)] = path
    if not found:
        raise ConfigError(f"{option} {bounded(folder)!r} holds no .raw files (run "
                          "'fxquant run' to make one)")
    return found


_DQ_SUFFIX = dq_output("")


def _key(rel: str) -> str:
    """A quantized model's output ``X_dequantized.raw`` pairs with the float model's ``X.raw``
    (:mod:`fxquant.export.naming`)."""
    return rel[: -len(_DQ_SUFFIX) - 4] + ".raw" if rel.endswith(_DQ_SUFFIX + ".raw") else rel


def _output_order(folder: str) -> list[str] | None:
    """The output files in model order, from the ``outputs.json`` that ``fxquant run`` writes."""
    try:
        with open(os.path.join(folder, "outputs.json"), encoding="utf-8") as f:
            files = json.load(f)["outputs"]
        return [str(v) for v in files.values()] if isinstance(files, dict) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _pairs(a_dir: str, b_dir: str) -> tuple[list[tuple[str, str, str]], list[str], str]:
    """``(name, file in A, file in B)`` pairs, the files without a partner, and how paired."""
    a_files, b_files = _raw_files(a_dir, "DIR_A"), _raw_files(b_dir, "DIR_B")
    a_by, b_by = {_key(k): k for k in a_files}, {_key(k): k for k in b_files}
    common = sorted(set(a_by) & set(b_by))
    how = "by output name"
    if not common:  # different output names: pair the outputs in model order
        a_order, b_order = _output_order(a_dir), _output_order(b_dir)
        if a_order and b_order and len(a_order) == len(b_order):
            rename = dict(zip(b_order, a_order, strict=True))
            b_by = {os.path.join(os.path.dirname(k), rename.get(os.path.basename(k),
                                 os.path.basename(k))): k for k in b_files}
            common = sorted(set(a_by) & set(b_by))
            how = "by output position (outputs.json): " + ", ".join(
                f"{a[:-4]} <-> {b[:-4]}" for b, a in list(rename.items())[:4])
    if not common:
        raise DataError(f"DIR_A and DIR_B share no output files (e.g. {bounded_list(a_files)} "
                        f"vs {bounded_list(b_files)}); compare folders written by 'fxquant run'")
    pairs = [(b_by[k], a_files[a_by[k]], b_files[b_by[k]]) for k in common]
    only = sorted([a_by[k] for k in set(a_by) - set(b_by)]
                  + [b_by[k] for k in set(b_by) - set(a_by)])
    return pairs, only, how


def _steps_by_file(grid: str) -> dict[str, float]:
    """Output file stem -> quantization step of the tensor, for per-tensor grids."""
    existing_file(grid, "--grid")
    steps = {}
    for row in read_quantized(grid):
        if len(row.scales) == 1 and row.kind == "activation":
            for name in (row.name, dq_output(row.name), *row.aliases):
                steps[raw_file_name(name)[:-4]] = row.scales[0]
    return steps


def _load(path: str) -> np.ndarray:
    size = os.path.getsize(path)
    if size % 4:
        raise DataError(f"{bounded(path)!r} holds {size} bytes, not a whole number of float32 "
                        "values")
    return np.fromfile(path, dtype="<f4").astype(np.float64)


def compare_run(args: argparse.Namespace) -> int:
    pairs, only, how = _pairs(args.reference, args.other)
    steps = _steps_by_file(args.grid) if args.grid else {}
    rows: dict[str, _Output] = {}
    for rel_b, a_path, b_path in pairs:
        a, b = _load(a_path), _load(b_path)
        if a.shape != b.shape:
            raise DataError(f"{bounded(rel_b)!r} holds {a.size} values in DIR_A but {b.size} in "
                            "DIR_B; the folders are not outputs of the same model")
        stem = os.path.basename(rel_b)[:-4]
        row = rows.setdefault(stem, _Output(stem, stats=ErrorStats(), step=steps.get(stem)))
        row.files += 1
        row.stats.add(torch.from_numpy(b), torch.from_numpy(a))
        if row.step is not None and a.size:
            q = np.rint((b - a) / row.step)
            row.max_steps = max(row.max_steps or 0, int(np.abs(q).max()))
            row.identical += int((q == 0).sum())
    print(f"fxquant compare: {bounded(args.other)} against {bounded(args.reference)} "
          f"(paired {how})")
    failures = _print_table(list(rows.values()), args)
    if only:
        print(f"{len(only)} file(s) only in one folder: {bounded_list(only)}")
    return EXIT_CHECK_FAILED if failures or only else EXIT_OK


def _fmt(v: float) -> str:
    return "inf" if v == math.inf else "-inf" if v == -math.inf else f"{v:.4g}"


def _print_table(rows: list[_Output], args: argparse.Namespace) -> list[str]:
    head = ("output", "files", "values", "max|diff|", "mean|diff|", "SQNR dB", "step",
            "max steps", "identical")
    body, failures = [], []
    for r in rows:
        s = r.stats
        assert s is not None
        ident = f"{100 * r.identical / s.n:.2f}%" if r.step is not None and s.n else "-"
        body.append((r.name, str(r.files), str(s.n), _fmt(s.max), _fmt(s.l1), _fmt(s.sqnr),
                     _fmt(r.step) if r.step is not None else "-",
                     str(r.max_steps) if r.max_steps is not None else "-", ident))
        if args.max_steps is not None and r.max_steps is not None and r.max_steps > args.max_steps:
            failures.append(f"{r.name}: {r.max_steps} steps > {args.max_steps}")
        if args.min_sqnr is not None and s.sqnr < args.min_sqnr:
            failures.append(f"{r.name}: SQNR {_fmt(s.sqnr)} dB < {args.min_sqnr}")
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    print(line(head))
    print(line(["-" * w for w in widths]))
    for b in body:
        print(line(b))
    if args.max_steps is not None and not any(r.step is not None for r in rows):
        failures.append("--max-steps: no output has a known grid (give --grid MODEL.onnx)")
    for f in failures:
        print(f"check failed: {f}")
    if (args.max_steps is not None or args.min_sqnr is not None) and not failures:
        print("checks passed")
    return failures
