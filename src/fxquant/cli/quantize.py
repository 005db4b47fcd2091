"""``fxquant quantize``: a PyTorch model + a folder of raw files -> QDQ ONNX + encodings.

The steps, each with fxquant's public API: load the model spec, read the calibration inputs
(:mod:`.rawdata`), check that the float model runs on them, ``prepare`` (16-bit activations
for the ops ``--int16`` names, or for the top ratio of a ``sensitivity`` analysis),
``calibrate``, optionally ``adaround`` and QAT (:mod:`.training`), then ``export_onnx``,
``export_encodings``, ``summary``, ``report`` (``compare`` + sensitivity) and ``verify`` in a
real runtime.  Everything is written to a staging folder and moved to ``--out`` at the end.
Exit code 1 when verify finds an output more than ``--max-steps`` steps from the simulation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..algorithms import adaround, calibrate
from ..backends import PROFILES, Runtime, get_profile
from ..debug import compare, report, sensitivity, summary
from ..errors import ConfigError, UnknownOpNameError, bounded, bounded_list, require
from ..export import ExportWarning, VerifyReport, export_encodings, export_onnx, verify
from ..export.encodings import ENCODING_VERSIONS
from ..graph import prepare
from ..modelio import as_inputs
from ..qconfig import (
    default_calibration_qconfig_setter,
    default_qat_qconfig_setter,
    sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter,
    sensitive_op_qat_8bit_weight_16bit_act_qconfig_setter,
)
from .common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    StagedOutput,
    existing_file,
    non_negative_int,
    one_line,
    positive_float,
    positive_int,
    signature_defaults,
)
from .rawdata import (
    InputSpec,
    calib_dir_rows,
    read_input_list,
    read_raw,
    resolve_shapes,
    shape_argument,
)
from .runner import RUNTIMES
from .spec import SPEC_HELP, LoadedModel, check_runs, load_model
from .training import fine_tune, train_setup

__all__ = ["quantize_arguments", "quantize_run", "EXAMPLE", "OUTPUT_FILES"]

EXAMPLE = ("example: fxquant quantize mymodel.py:build --input-list calib/input_list.txt "
           "--backend onnxruntime --out int8/")

OUTPUT_FILES = {
    "model.onnx": "QDQ ONNX model",
    "model.encodings": "AIMET / QNN encodings JSON (tensor names of model.onnx)",
    "model_float.onnx": "the float model with the same tensor names (the reference to run and "
    "compare with; float ONNX + encodings for SNPE / QNN converters)",
    "summary.txt": "every quantizer and what stayed float, with the reason",
    "report.html": "accuracy report: per-layer comparison (and sensitivity)",
    "verify.txt": "the ONNX file run in the runtime vs the simulation, in quantization steps",
    "quantize.json": "the run: inputs, options, files, verify result",
}

SENSITIVITY_BATCHES = 4
"""``--int16 RATIO`` ranks ops on at most this many calibration batches."""


def quantize_arguments(p: argparse.ArgumentParser) -> None:
    ada = signature_defaults(adaround)
    enc = signature_defaults(export_encodings)
    ver = signature_defaults(verify)
    p.epilog = EXAMPLE
    p.add_argument("spec", metavar="MODEL_SPEC", help=SPEC_HELP)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input-list", metavar="FILE",
                     help="calibration input list: one line per call, raw float32 files "
                          "(plain paths in input order, or name:=path entries)")
    src.add_argument("--calib-dir", metavar="DIR",
                     help="calibration folder of *.raw files (one subfolder per input for "
                          "multi-input models)")
    p.add_argument("--backend", required=True, choices=sorted(PROFILES), action=_BackendAction,
                   help="backend profile the model is quantized for")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (created; files of the same name are replaced)")
    p.add_argument("--input-shape", action="append", metavar="[NAME:]D,D,...",
                   type=shape_argument,
                   help="shape of an input (repeat per input) when the spec has no example "
                        "inputs or to override them; exact, no free batch dimension")
    p.add_argument("--batches", type=positive_int, metavar="N",
                   help="use at most N calibration calls (default: every line / file)")
    p.add_argument("--int16", metavar="RATIO|OPS",
                   help="16-bit activations: a ratio in (0, 1] of the most sensitive ops "
                        "(sensitivity analysis), or comma-separated op names (see summary.txt)")
    p.add_argument("--adaround", action="store_true", help="AdaRound the weights after "
                   "calibration")
    p.add_argument("--adaround-iterations", type=positive_int, metavar="N",
                   default=ada["num_iterations"],
                   help="AdaRound steps per layer (default: 10000, 15000 below 8 bits)")
    p.add_argument("--qat-epochs", type=non_negative_int, default=0, metavar="N",
                   help="QAT fine-tuning epochs after calibration (default: %(default)s)")
    p.add_argument("--train-spec", metavar="SPEC",
                   help="file.py:function returning QAT batches, or (batches, loss_fn) with "
                        "loss_fn(model, batch) -> loss; default: distill the float model's "
                        "outputs on the calibration batches")
    p.add_argument("--lr", type=positive_float, default=1e-4,
                   help="QAT learning rate (Adam; default: %(default)s)")
    p.add_argument("--runtime", choices=RUNTIMES, default=ver["runtime"],
                   help="runtime verify runs the ONNX file in (default: the --backend "
                        "profile's runtime, onnxruntime for profiles that name none)")
    p.add_argument("--max-steps", type=non_negative_int, metavar="N",
                   default=signature_defaults(VerifyReport.ok)["max_steps"],
                   help="verify passes when every output is within N quantization steps of the "
                        "simulation (default: %(default)s); above -> exit code 1")
    p.add_argument("--min-identical", type=_fraction, metavar="F",
                   default=signature_defaults(VerifyReport.ok)["min_identical"],
                   help="verify also needs this fraction of every output's values on the same "
                        "integer code as the simulation (default: %(default)s)")
    p.add_argument("--no-verify", action="store_true", help="skip verify")
    p.add_argument("--encodings-version", choices=ENCODING_VERSIONS, default=enc["version"],
                   help="AIMET encodings format (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds AdaRound / QAT (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# -- arguments ---------------------------------------------------------------------------------
def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


def _int16(text: str | None) -> float | tuple[str, ...] | None:
    if text is None:
        return None
    try:
        ratio = float(text)
    except ValueError:
        ops = tuple(t.strip() for t in text.split(","))
        if not all(ops):
            raise ConfigError(f"--int16 {bounded(text)!r}: give a ratio in (0, 1] or "
                              "comma-separated op names (see summary.txt)") from None
        return ops
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"--int16 {bounded(text)!r}: a ratio must be in (0, 1], e.g. 0.1 for "
                          "the 10% most sensitive ops")
    return ratio


def _check_arguments(args: argparse.Namespace) -> float | tuple[str, ...] | None:
    if args.train_spec is not None and args.qat_epochs == 0:
        raise ConfigError("--train-spec needs --qat-epochs N (N >= 1)")
    int16 = _int16(args.int16)
    for option, path in (("--input-list", args.input_list),):
        if path is not None:
            existing_file(path, option)
    if args.calib_dir is not None and not os.path.isdir(args.calib_dir):
        raise ConfigError(f"--calib-dir: no such folder {bounded(args.calib_dir)!r}")
    require("onnx", "onnx", "fxquant quantize (ONNX export)")
    if not args.no_verify:
        extra = "onnx" if args.runtime == "onnxruntime" else "openvino"
        require(args.runtime, extra, f"fxquant quantize's verify in {args.runtime}")
    require("matplotlib", "report", "fxquant quantize's HTML report")
    return int16


class _BackendAction(argparse.Action):
    """``--backend``; it also gives ``--runtime`` its default when that is not given: the
    runtime of the backend profile (``onnxruntime`` for profiles that name none), as
    :func:`fxquant.verify` defaults to it."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        setattr(namespace, self.dest, values)
        if getattr(namespace, "runtime", None) is None:
            namespace.runtime = (get_profile(values).runtime or Runtime.ONNXRUNTIME).value


# -- inputs ------------------------------------------------------------------------------------
def _model_inputs(loaded: LoadedModel, shapes: Sequence[str] | None) -> list[InputSpec]:
    if loaded.example is not None:
        specs = [InputSpec(n, tuple(t.shape), np.dtype(str(t.dtype).removeprefix("torch.")),
                           exact=loaded.fixed_shapes)
                 for n, t in zip(loaded.input_names, loaded.example, strict=True)]
        return resolve_shapes(specs, shapes)
    names = list(loaded.input_names)
    given = list(shapes or [])
    if not given:
        if loaded.data is not None:
            return []
        raise ConfigError(f"model spec {bounded(loaded.spec)!r} gives no example inputs; pass "
                          "--input-shape (e.g. --input-shape 1,3,224,224), one per input")
    named = [g.rsplit(":", 1)[0] for g in given if ":" in g]
    if named:
        order = [n for n in names if n in named] + [n for n in named if n not in names]
    else:
        order = names[: len(given)] if len(names) >= len(given) else [
            f"input_{i}" for i in range(len(given))]
    specs = [InputSpec(n, None, np.dtype("float32")) for n in order]
    return resolve_shapes(specs, given)


def _rows(args: argparse.Namespace, names: list[str]) -> tuple[list[dict[str, str]], str]:
    if args.input_list is not None:
        return list(read_input_list(args.input_list, names).rows), args.input_list
    return calib_dir_rows(args.calib_dir, names), args.calib_dir


def _calibration_batches(args: argparse.Namespace, loaded: LoadedModel,
                         specs: list[InputSpec]) -> tuple[list[tuple[Any, ...]], str]:
    """Calibration calls as tuples of positional inputs, and where they came from."""
    if args.input_list is None and args.calib_dir is None:
        if not loaded.data:
            raise ConfigError("give the calibration data: --input-list FILE or --calib-dir DIR "
                              "(raw float32 files), or return data from the model spec")
        count = len(loaded.example) if loaded.example is not None else len(loaded.input_names)
        batches = []
        for batch in loaded.data:
            inputs = as_inputs(batch, count or None)
            if inputs.kwargs:
                raise ConfigError(f"the data of {bounded(loaded.spec)!r} holds keyword (dict) "
                                  "batches; the command line feeds positional inputs only")
            batches.append(inputs.args)
        return batches, f"the data of {loaded.spec}"
    rows, source = _rows(args, [s.name for s in specs])
    rows = rows[: args.batches] if args.batches else rows
    by_name = {s.name: s for s in specs}
    batches = []
    for row in tqdm(rows, desc="read raw inputs", disable=args.quiet, leave=False):
        batches.append(tuple(torch.from_numpy(read_raw(row[s.name], by_name[s.name]))
                             for s in specs))
    return batches, source


# -- quantization ------------------------------------------------------------------------------
def _sensitive_ops(qmodel, loaded: LoadedModel, batches, ratio: float, quiet: bool):
    tables = sensitivity(qmodel, batches[:SENSITIVITY_BATCHES], float_model=loaded.model,
                         progress=not quiet)
    tables = tables if isinstance(tables, list) else [tables]
    ops: list[str] = []
    for t in tables:  # the top ratio of every output's table
        ops += [r.op_name for r in t.top(ratio=ratio) if r.op_name not in ops]
    return ops, tables


def _quantized(args, loaded: LoadedModel, example, batches, int16, info: dict[str, Any]):
    qat = args.qat_epochs > 0
    template = default_qat_qconfig_setter if qat else default_calibration_qconfig_setter
    sensitive = (sensitive_op_qat_8bit_weight_16bit_act_qconfig_setter if qat
                 else sensitive_op_calibration_8bit_weight_16bit_act_qconfig_setter)
    tables = None
    ops: Sequence[str] = ()
    if isinstance(int16, float):
        probe = prepare(loaded.model, example, default_calibration_qconfig_setter,
                        backend=args.backend)
        calibrate(probe, batches, progress=not args.quiet)
        ops, tables = _sensitive_ops(probe, loaded, batches, int16, args.quiet)
    elif int16 is not None:
        ops = int16
    setter: Any = template
    if ops:
        rows = [[name, "activation"] for name in ops]
        setter = (sensitive(rows, topk=len(rows)), template)
    info["int16_ops"] = list(ops)
    try:
        qmodel = prepare(loaded.model, example, setter, backend=args.backend)
    except UnknownOpNameError as err:
        raise ConfigError(f"--int16: {err}") from None
    calibrate(qmodel, batches, progress=not args.quiet)
    if args.adaround:
        adaround(qmodel, batches, num_iterations=args.adaround_iterations,
                 progress=not args.quiet, seed=args.seed)
        info["adaround_iterations"] = args.adaround_iterations
    if qat:
        setup = train_setup(args.train_spec, batches)
        torch.manual_seed(args.seed)
        info["qat"] = {"epochs": args.qat_epochs, "lr": args.lr, "data": setup.label,
                       "loss": fine_tune(qmodel, loaded.model, setup, args.qat_epochs, args.lr,
                                         len(example), not args.quiet)}
    return qmodel, tables


@contextlib.contextmanager
def _fxquant_warnings(found: list[str]) -> Iterator[None]:
    """Collect the warnings fxquant's own code raises (printed as one line each afterwards);
    other libraries' deprecation chatter is dropped."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if issubclass(w.category, ExportWarning) or os.path.abspath(w.filename).startswith(root):
            msg = one_line(str(w.message))
            if msg not in found:
                found.append(msg)


def quantize_run(args: argparse.Namespace) -> int:
    int16 = _check_arguments(args)
    t0 = time.perf_counter()
    with StagedOutput(args.out, "--out") as out:
        notes: list[str] = []
        with _fxquant_warnings(notes):
            loaded = load_model(args.spec, max_batches=args.batches)
            specs = _model_inputs(loaded, args.input_shape)
            batches, source = _calibration_batches(args, loaded, specs)
            check_runs(loaded.model, batches[0], source)
            raw = args.input_list is not None or args.calib_dir is not None
            example = batches[0] if raw or loaded.example is None else loaded.example
            info: dict[str, Any] = {
                "spec": args.spec, "backend": args.backend, "calibration": source,
                "calibration_calls": len(batches),
                "inputs": {s.name: s.describe() for s in specs},
            }
            qmodel, tables = _quantized(args, loaded, example, batches, int16, info)
            exported = export_onnx(qmodel, example, out.file("model.onnx"))
            export_onnx(qmodel, example, out.file("model_float.onnx"), quantize=False)
            export_encodings(qmodel, out.file("model.encodings"), onnx_path=exported.path,
                             version=args.encodings_version)
            with open(out.file("summary.txt"), "w", encoding="utf-8") as f:
                f.write(str(summary(qmodel)) + "\n")
            table = compare(loaded.model, qmodel, batches[: min(2, len(batches))])
            report(out.file("report.html"), compare=table, sensitivity=tables, embed=True,
                   title=f"fxquant quantize {bounded(args.spec, 60)}")
            ok = True
            if not args.no_verify:
                result = verify(qmodel, exported.path, batches[-1], runtime=args.runtime)
                ok = result.ok(max_steps=args.max_steps, min_identical=args.min_identical)
                with open(out.file("verify.txt"), "w", encoding="utf-8") as f:
                    f.write(str(result) + "\n")
                info["verify"] = {
                    "runtime": args.runtime, "ok": ok, "max_steps_allowed": args.max_steps,
                    "min_identical": args.min_identical,
                    "outputs": {d.name: {"max_steps": d.max_step_diff, "identical": d.identical}
                                for d in result.outputs},
                }
        info.update(inputs_onnx=list(exported.input_names),
                    outputs_onnx=list(exported.output_names), opset=exported.opset, warnings=notes,
                    seconds=round(time.perf_counter() - t0, 2))
        with open(out.file("quantize.json"), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, default=str)
        files = sorted(os.listdir(out.root))
        folder = out.commit()
    for note in notes:
        print(f"warning: {note}")
    print(f"wrote {folder}: {', '.join(files)}")
    if "verify" in info:
        worst = max((d["max_steps"] or 0 for d in info["verify"]["outputs"].values()), default=0)
        ident = min((d["identical"] for d in info["verify"]["outputs"].values()), default=1.0)
        verdict = "OK" if ok else (f"FAILED (needs <= {args.max_steps} step(s) and >= "
                                   f"{100 * args.min_identical:g}% identical; see verify.txt)")
        print(f"verify ({args.runtime}): outputs {bounded_list(exported.output_names, 3)} "
              f"within {worst} step(s) of the simulation, {100 * ident:.2f}% identical -> "
              f"{verdict}")
    return EXIT_OK if ok else EXIT_CHECK_FAILED
