"""AIMET / Qualcomm QNN quantization encodings JSON: export from, and load into, a prepared model.

Tensor names are the ONNX tensor names fixed by :mod:`fxquant.export.naming` (activation
``N`` / ``N.input_<i>``, parameter ``N.weight``), so a file can be written from the prepared
model alone and matches the graph :mod:`fxquant.export.onnx_export` writes.

Offset convention (AIMET / QNN describe every grid as *unsigned*: ``x = (q + offset) * scale``
with ``q`` in ``[0, 2^bw - 1]``).  For an fxquant quantizer with dtype ``D`` (``bits``, signed
or not, narrow or not), scale ``s`` and zero point ``z`` (``x = (q - z) * s``, q in
``[D.qmin, D.qmax]``) let ``full_qmin = -2^(bits-1)`` if signed else ``0`` (narrow range ignored):

* version ``1.0.0``: ``offset = full_qmin - z`` (AIMET ``offset - 2^(bw-1)`` for signed grids);
* version ``0.6.1``: ``offset = D.qmin - z``, ``min = offset * s``, ``max = (D.qmax - z) * s``;
  ``[min, max]`` is exactly fxquant's representable range.  For non-narrow dtypes
  ``D.qmin == full_qmin`` and ``max = min + (2^bw - 1) * s`` (the AIMET legacy convention);
  narrow dtypes follow AIMET's *strict symmetric* export (int8: ``offset = -127``,
  ``min = -127 s``, ``max = 127 s``, ``2^bw - 2`` steps).

Examples: symmetric int8 -> offset -128, ``min = -128 s``, ``max = 127 s``; uint8 (or the x86
7-bit reduced range) with zero point ``z`` -> offset ``-z``; symmetric uint8 (``z = 128``) ->
-128, the same grid as symmetric int8.  Loading inverts this for the *target* quantizer's dtype
(``z = full_qmin - offset``; a 0.6.1 entry whose ``[min, max]`` spans ``2^bw - 2`` steps, or a
symmetric one with offset ``-(2^(bw-1) - 1)`` and no min/max, is on the narrow grid:
``z = full_qmin + 1 - offset``).  Scales are the float32 values as exact Python floats, so
export -> load -> export is byte-identical.

Size (~680 lines): writing and reading AIMET encodings are inverses of one format mapping
(offset / zero-point conventions, the 0.6.1 and 1.0.0 schemas, narrow grids); they are kept
side by side so that export -> load -> export stays byte-identical when either changes.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import warnings
from collections import Counter
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._utils import as_path
from ..errors import ConfigError, EncodingsError, bounded, bounded_list, require
from ..fake_quant import FakeQuantize, FakeQuantState, LearnableFakeQuantize
from ..graph.report import get_report
from ..numerics import QDType
from .atomic import check_writable, write_bytes_atomic
from .naming import quantized_tensor_name

__all__ = ["ENCODING_VERSIONS", "EncodingsError", "export_encodings", "load_encodings",
           "read_encodings"]

ENCODING_VERSIONS = ("0.6.1", "1.0.0")
MAX_FILE_BITWIDTH = 64
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
"""Widest bitwidth an encodings file may name (fxquant's quantizers have 2 to 32 bits)."""


# -- the model side: tensor name -> quantizer --------------------------------------------------
@dataclass(frozen=True)
class _Slot:
    tensor: str  # ONNX tensor name
    path: str  # module path of the quantizer
    quantizer: FakeQuantize
    is_param: bool


def _slots(qmodel: nn.Module) -> dict[str, _Slot]:
    """Every quantized tensor of a prepared model, keyed by its ONNX tensor name."""
    report = get_report(qmodel)
    slots: dict[str, _Slot] = {}
    for op_name, rec in report.ops.items():
        for role, path in rec.quantizers.items():
            tensor = quantized_tensor_name(op_name, role)
            fq = qmodel.get_submodule(path)
            if not isinstance(fq, FakeQuantize):
                raise EncodingsError(f"{path!r} ({tensor!r}) is not a FakeQuantize: {fq!r}")
            if tensor in slots and slots[tensor].path != path:
                raise EncodingsError(
                    f"tensor name {tensor!r} is used by two quantizers: "
                    f"{slots[tensor].path!r} and {path!r}"
                )
            slots[tensor] = _Slot(tensor, path, fq, role == "weight")
    return slots


def _full_qmin(dtype: QDType) -> int:
    """Lowest code of ``dtype``'s full grid (narrow range ignored)."""
    return dtype.narrow(False).qmin


def _qparams(fq: FakeQuantize) -> tuple[list[float], list[int]]:
    """The scales (exact float32 values) and integer zero points the quantizer applies
    (:meth:`~fxquant.FakeQuantize.qparams`)."""
    qp = fq.qparams()
    scales = qp.scale.cpu().reshape(-1).tolist()
    zps = [int(v) for v in qp.zero_point.cpu().reshape(-1).tolist()]
    return scales, zps


def _legacy_entries(fq: FakeQuantize) -> list[dict[str, Any]]:
    d = fq.dtype
    sym = "True" if fq.symmetric else "False"
    out = []
    for s, z in zip(*_qparams(fq), strict=True):
        out.append(
            {
                "bitwidth": d.bits,
                "dtype": "int",
                "is_symmetric": sym,
                "max": (d.qmax - z) * s,
                "min": (d.qmin - z) * s,
                "offset": d.qmin - z,
                "scale": s,
            }
        )
    return out


def _v1_entry(name: str, fq: FakeQuantize) -> dict[str, Any]:
    scales, zps = _qparams(fq)
    qmin = _full_qmin(fq.dtype)
    return {
        "bw": fq.dtype.bits,
        "dtype": "INT",
        "enc_type": "PER_TENSOR" if fq.ch_axis is None else "PER_CHANNEL",
        "is_sym": fq.symmetric,
        "name": name,
        "offset": [qmin - z for z in zps],
        "scale": scales,
    }


def _quant_scheme(fq: FakeQuantize) -> str:
    """The AIMET ``QuantScheme`` name closest to how this quantizer finds its range."""
    if isinstance(fq, LearnableFakeQuantize):
        return "training_range_learning_with_tf_init"
    method = str(getattr(fq.observer, "method", "")).lower()
    if "percentile" in method or type(fq.observer).__name__ == "PercentileObserver":
        return "post_training_percentile"
    if method.endswith(("mse", "entropy")):
        return "post_training_tf_enhanced"
    return "post_training_tf"


def _most_common(values: list[Any], default: Any) -> Any:
    if not values:
        return default
    counts = Counter(values)
    return max(counts, key=lambda v: (counts[v], str(v)))


def _quantizer_args(slots: list[_Slot]) -> dict[str, Any]:
    """AIMET's ``quantizer_args``: the prevailing settings of the model (informative only)."""
    acts = [s.quantizer for s in slots if not s.is_param]
    params = [s.quantizer for s in slots if s.is_param]
    return {
        "activation_bitwidth": _most_common([q.dtype.bits for q in acts], 32),
        "dtype": "int",
        "is_symmetric": all(q.symmetric for q in params) if params else True,
        "param_bitwidth": _most_common([q.dtype.bits for q in params], 32),
        "per_channel_quantization": any(q.ch_axis is not None for q in params),
        "quant_scheme": _most_common(
            [_quant_scheme(q) for q in acts or params], "post_training_tf"
        ),
    }


def _onnx_tensor_names(onnx_path: str | os.PathLike) -> set[str]:
    onnx = require("onnx", "onnx", "export_encodings(onnx_path=...)")
    try:
        graph = onnx.load(os.fspath(onnx_path), load_external_data=False).graph
    except Exception as err:  # OSError, protobuf's DecodeError ...
        raise EncodingsError(
            f"onnx_path {_file(onnx_path)} cannot be read as an ONNX model "
            f"({type(err).__name__}: {bounded(err, 100)}); pass the file export_onnx wrote"
        ) from None
    names = {o for node in graph.node for o in node.output}
    names.update(v.name for v in graph.input)
    names.update(t.name for t in graph.initializer)
    return names


def _dumps(encodings: dict[str, Any]) -> str:
    return json.dumps(encodings, sort_keys=True, indent=2, allow_nan=False) + "\n"


def export_encodings(
    qmodel: nn.Module,
    path: str | os.PathLike | None,
    onnx_path: str | os.PathLike | None = None,
    version: str = "0.6.1",
) -> dict[str, Any]:
    """Write the AIMET encodings of a calibrated prepared model to ``path`` and return them.

    Args:
        qmodel: a model from :func:`fxquant.prepare` whose quantizers all have scales.
        path: output JSON file (written atomically); ``None`` only returns the dict.
        onnx_path: an exported ONNX model; every encodings tensor name must be a node output,
            graph input or initializer there, else :class:`EncodingsError` lists the missing.
        version: ``"0.6.1"`` (legacy dict-of-lists, one entry per channel) or ``"1.0.0"``.

    Activations (output / input quantizers) go to ``activation_encodings``, weights (tensor
    ``N.weight``) to ``param_encodings``.  The JSON has sorted keys and fixed indentation, so
    export -> :func:`load_encodings` -> export reproduces the file byte for byte.
    """
    if version not in ENCODING_VERSIONS:
        raise ConfigError(
            f"export_encodings: unknown encodings version {bounded(repr(version))}; choose one "
            f"of {ENCODING_VERSIONS}"
        )
    if path is not None:
        path = check_writable(path, EncodingsError, "export_encodings")
    known = None if onnx_path is None else _onnx_tensor_names(onnx_path)
    slots = sorted(_slots(qmodel).values(), key=lambda s: s.tensor)
    missing_scale = [f"{s.tensor} ({s.path})" for s in slots if not bool(s.quantizer.calibrated)]
    if missing_scale:
        raise EncodingsError(
            f"cannot export encodings: {len(missing_scale)} quantizer(s) without a scale (run "
            f"fxquant.calibrate first): {bounded_list(missing_scale)}"
        )
    if version == "0.6.1":
        acts: Any = {s.tensor: _legacy_entries(s.quantizer) for s in slots if not s.is_param}
        params: Any = {s.tensor: _legacy_entries(s.quantizer) for s in slots if s.is_param}
    else:
        acts = [_v1_entry(s.tensor, s.quantizer) for s in slots if not s.is_param]
        params = [_v1_entry(s.tensor, s.quantizer) for s in slots if s.is_param]
    encodings = {
        "activation_encodings": acts,
        "excluded_layers": [],
        "param_encodings": params,
        "quantizer_args": _quantizer_args(slots),
        "version": version,
    }
    if known is not None:
        absent = [s.tensor for s in slots if s.tensor not in known]
        if absent:
            raise EncodingsError(
                f"{len(absent)} encodings tensor name(s) do not exist in {_file(onnx_path)} "
                f"(node outputs, graph inputs, initializers): {bounded_list(absent)}; was it "
                "exported from this model?"
            )
    if path is not None:
        try:
            write_bytes_atomic(path, _dumps(encodings).encode("utf-8"))
        except OSError as err:
            raise EncodingsError(f"export_encodings: cannot write {_file(path)}: "
                                 f"{err.strerror or err}") from None
    return encodings


# -- reading -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _FileEncoding:
    """One tensor's encoding as read from a file, in AIMET terms."""

    name: str
    is_float: bool
    bitwidth: int
    symmetric: bool
    scales: tuple[float, ...]
    offsets: tuple[int, ...]
    narrow_grid: bool  # offsets count from full_qmin + 1 (0.6.1 strict symmetric)


_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 60
_SHOW.maxlevel = 2


def _show(value: Any) -> str:
    """A short repr of a value read from a file (depth, items and length bounded)."""
    return _SHOW.repr(value)


def _file(path: str | os.PathLike) -> str:
    """The file's name for messages (bounded)."""
    return repr(bounded(os.fspath(path), 120))


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise EncodingsError(f"{where}: expected True/False (bool or string), got {_show(value)}")


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise EncodingsError(f"{where}: expected an integer, got {_show(value)}")
    return value


def _as_float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EncodingsError(f"{where}: expected a number, got {_show(value)}")
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise EncodingsError(f"{where}: expected a finite number, got {_show(value)}")
    return out


def _bitwidth(value: Any, where: str) -> int:
    bw = _as_int(value, f"{where} bitwidth")
    if not 1 <= bw <= MAX_FILE_BITWIDTH:
        raise EncodingsError(
            f"{where}: bitwidth {_show(bw)} is outside [1, {MAX_FILE_BITWIDTH}]; not an encodings "
            "file fxquant can read"
        )
    return bw


def _from_min_max(
    lo: float, hi: float, bw: int, symmetric: bool, strict_sym: bool
) -> tuple[float, int, bool]:
    """AIMET's ``calculate_delta_offset``: (scale, offset, offset-is-on-the-narrow-grid)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    hi = max(hi, lo + 1e-5)
    steps = (1 << bw) - 1 - (1 if symmetric and strict_sym else 0)
    if symmetric and lo < 0:
        positive = max(1, steps // 2)
        return hi / positive, -positive - (0 if strict_sym else 1), strict_sym
    scale = (hi - lo) / max(1, steps)
    if not (math.isfinite(scale) and scale > 0):
        return scale, 0, False  # rejected with the tensor's name when planned
    return scale, round(lo / scale), False


def _parse_legacy(name: str, entries: Any, strict_sym: bool) -> _FileEncoding:
    where = f"tensor {bounded(name)!r}"
    if isinstance(entries, dict):
        entries = [entries]
    if not (isinstance(entries, list) and entries and all(isinstance(e, dict) for e in entries)):
        raise EncodingsError(
            f"{where}: expected a non-empty list of encoding dicts, got {_show(entries)}"
        )
    first = entries[0]
    dtype = first.get("dtype", "int")
    is_float = isinstance(dtype, str) and dtype.lower() == "float"
    if "bitwidth" not in first and "bw" not in first:
        raise EncodingsError(f"{where}: encoding has no 'bitwidth'")
    bw = _bitwidth(first.get("bitwidth", first.get("bw")), where)
    sym = _as_bool(first.get("is_symmetric", False), f"{where} is_symmetric")
    if is_float:
        return _FileEncoding(name, True, bw, sym, (), (), False)
    scales, offsets, narrow = [], [], []
    for i, e in enumerate(entries):
        w = f"{where} channel {i}"
        if (
            _bitwidth(e.get("bitwidth", e.get("bw", bw)), w) != bw
            or _as_bool(e.get("is_symmetric", sym), f"{w} is_symmetric") != sym
        ):
            raise EncodingsError(f"{w}: bitwidth / is_symmetric differ between channels")
        if "scale" in e and "offset" in e:
            s = _as_float(e["scale"], f"{w} scale")
            o = _as_int(e["offset"], f"{w} offset")
            if "min" in e and "max" in e and s > 0:
                span = (_as_float(e["max"], f"{w} max") - _as_float(e["min"], f"{w} min")) / s
                nar = math.isfinite(span) and round(span) == (1 << bw) - 2
            else:
                nar = sym and o == -((1 << (bw - 1)) - 1)
        elif "min" in e and "max" in e:
            lo, hi = _as_float(e["min"], f"{w} min"), _as_float(e["max"], f"{w} max")
            if lo > hi:
                raise EncodingsError(f"{w}: min {lo} > max {hi}")
            s, o, nar = _from_min_max(lo, hi, bw, sym, strict_sym)
        else:
            raise EncodingsError(f"{w}: needs 'scale' and 'offset', or 'min' and 'max'")
        scales.append(s)
        offsets.append(o)
        narrow.append(nar)
    if len(set(narrow)) > 1:
        raise EncodingsError(f"{where}: channels mix the full and the strict-symmetric grid")
    return _FileEncoding(name, False, bw, sym, tuple(scales), tuple(offsets), narrow[0])


def _parse_v1(entry: Any, index: int, section: str) -> _FileEncoding:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise EncodingsError(
            f"{section}[{index}]: expected a dict with a 'name', got {_show(entry)}"
        )
    name = entry["name"]
    where = f"tensor {bounded(name)!r}"
    if "bw" not in entry:
        raise EncodingsError(f"{where}: encoding has no 'bw'")
    bw = _bitwidth(entry["bw"], where)
    sym = _as_bool(entry.get("is_sym", False), f"{where} is_sym")
    dtype, enc_type = entry.get("dtype", "INT"), entry.get("enc_type", "PER_TENSOR")
    if not isinstance(dtype, str) or not isinstance(enc_type, str):
        raise EncodingsError(f"{where}: 'dtype' and 'enc_type' must be strings")
    if dtype.upper() == "FLOAT":
        return _FileEncoding(name, True, bw, sym, (), (), False)
    enc_type = enc_type.upper()
    if enc_type not in ("PER_TENSOR", "PER_CHANNEL"):
        raise EncodingsError(f"{where}: enc_type {_show(enc_type)} is not supported by fxquant "
                             "(PER_TENSOR, PER_CHANNEL)")
    if "scale" not in entry or "offset" not in entry:
        raise EncodingsError(f"{where}: encoding needs 'scale' and 'offset'")
    raw_s, raw_o = entry["scale"], entry["offset"]
    raw_s = raw_s if isinstance(raw_s, list) else [raw_s]
    raw_o = raw_o if isinstance(raw_o, list) else [raw_o]
    if len(raw_s) != len(raw_o) or not raw_s:
        raise EncodingsError(f"{where}: 'scale' and 'offset' must be non-empty lists of one length")
    if enc_type == "PER_TENSOR" and len(raw_s) != 1:
        raise EncodingsError(f"{where}: PER_TENSOR encoding with {len(raw_s)} scales")
    scales = tuple(_as_float(v, f"{where} scale") for v in raw_s)
    offsets = tuple(_as_int(v, f"{where} offset") for v in raw_o)
    return _FileEncoding(name, False, bw, sym, scales, offsets, False)


def _load_json(path: str | os.PathLike) -> Any:
    """The JSON document at ``path``; :class:`EncodingsError` naming the file otherwise."""
    path = as_path(path, "the encodings path")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise EncodingsError(
            f"cannot read encodings file {_file(path)}: {e.strerror or type(e).__name__}; "
            "check the path"
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise EncodingsError(
            f"{_file(path)} is not an encodings JSON file (not UTF-8 text: byte {e.start}); "
            "pass the file export_encodings / AIMET / QNN wrote"
        ) from None
    try:
        return json.loads(text)
    except RecursionError:
        raise EncodingsError(f"{_file(path)} is not an encodings file: its JSON is nested too "
                             "deeply") from None
    except ValueError as e:  # JSONDecodeError, and integers too long to convert
        where = f" (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) \
            else ""
        msg = e.msg if isinstance(e, json.JSONDecodeError) else bounded(e, 100)
        raise EncodingsError(f"{_file(path)} is not valid JSON: {msg}{where}") from None


def _read(path: str | os.PathLike, strict_sym_of: dict[str, bool],
          known: Container[str] | None = None, skipped: list[str] | None = None
          ) -> list[_FileEncoding]:
    """The file's entries; with ``known``, entries of other tensor names are not parsed (their
    names go to ``skipped``)."""
    data = _load_json(path)
    try:
        return _parse_file(path, data, strict_sym_of, known,
                           skipped if skipped is not None else [])
    except RecursionError:
        raise EncodingsError(f"{_file(path)}: an entry is nested too deeply") from None


def _parse_file(path: str | os.PathLike, data: Any, strict_sym_of: dict[str, bool],
                known: Container[str] | None, skipped: list[str]) -> list[_FileEncoding]:
    if not isinstance(data, dict):
        raise EncodingsError(f"{_file(path)}: expected a JSON object at the top level, got "
                             f"{type(data).__name__}")
    sections = [data.get(k) for k in ("activation_encodings", "param_encodings")]
    if all(s is None for s in sections):
        raise EncodingsError(
            f"{_file(path)} has neither 'activation_encodings' nor 'param_encodings'"
        )
    legacy = all(isinstance(s, dict) for s in sections if s is not None)
    if not legacy and not all(isinstance(s, list) for s in sections if s is not None):
        raise EncodingsError(f"{_file(path)}: encodings sections must be dicts or lists")
    version = data.get("version", "0.6.1" if legacy else "1.0.0")
    if not isinstance(version, str) or (version != "1.0.0" and not version.startswith("0.")):
        raise EncodingsError(
            f"{_file(path)}: encodings version {_show(version)} is not supported "
            f"(readable: {', '.join(ENCODING_VERSIONS)})"
        )
    if legacy != version.startswith("0."):
        raise EncodingsError(
            f"{_file(path)}: version {_show(version)} does not match the layout of its sections"
        )
    out: list[_FileEncoding] = []
    for key, sec in zip(("activation_encodings", "param_encodings"), sections, strict=True):
        if sec is None:
            continue
        try:
            if legacy:
                named = list(sec.items())
            else:
                named = [(e.get("name") if isinstance(e, dict) else None, e) for e in sec]
            for i, (name, e) in enumerate(named):
                if known is not None and isinstance(name, str) and name not in known:
                    skipped.append(name)
                elif legacy:
                    out.append(_parse_legacy(name, e, strict_sym_of.get(name, False)))
                else:
                    out.append(_parse_v1(e, i, key))
        except EncodingsError as err:
            raise EncodingsError(f"{_file(path)}: {err}") from None
    names = Counter(e.name for e in out)
    dup = sorted(n for n, c in names.items() if c > 1)
    if dup:
        raise EncodingsError(f"{_file(path)}: tensors listed more than once: {bounded_list(dup)}")
    return out


# -- loading -----------------------------------------------------------------------------------
@dataclass
class _Plan:
    slot: _Slot
    dtype: QDType
    symmetric: bool
    scale: torch.Tensor
    zero_point: torch.Tensor


def _num_channels(qmodel: nn.Module, slot: _Slot) -> int | None:
    fq = slot.quantizer
    if fq.ch_axis is None:
        return None
    if fq.scale.numel() > 0:
        return fq.scale.numel()
    parent_path = slot.path.rpartition(".")[0]
    parent = qmodel.get_submodule(parent_path) if parent_path else qmodel
    w = getattr(parent, "weight", None) if slot.is_param else None
    return int(w.shape[fq.ch_axis]) if isinstance(w, torch.Tensor) else None


def _plan(
    qmodel: nn.Module, enc: _FileEncoding, slot: _Slot, strict: bool, problems: list[str]
) -> _Plan | None:
    fq = slot.quantizer
    where = f"tensor {bounded(enc.name)!r} (quantizer {bounded(slot.path)!r}, {fq.dtype})"
    hint = "; load with strict=False to adopt the file's setting"
    dtype, sym = fq.dtype, fq.symmetric
    if enc.bitwidth != dtype.bits:
        if not 2 <= enc.bitwidth <= 32:
            problems.append(f"{where}: file bitwidth {enc.bitwidth} cannot be loaded: fxquant "
                            "quantizers have 2 to 32 bits")
            return None
        if strict:
            problems.append(f"{where}: file bitwidth {enc.bitwidth} != {dtype.bits}{hint}")
            return None
        dtype = QDType(enc.bitwidth, dtype.signed, dtype.narrow_range)
    if enc.symmetric != sym:
        if strict:
            kind = ("symmetric", "asymmetric")
            problems.append(
                f"{where}: file is {kind[not enc.symmetric]}, quantizer is {kind[not sym]}{hint}"
            )
            return None
        sym = enc.symmetric
    base = _full_qmin(dtype) + (1 if enc.narrow_grid else 0)
    zps = [base - o for o in enc.offsets]
    bad = [z for z in zps if not max(_full_qmin(dtype), _INT32_MIN) <= z
           <= min(dtype.qmax, _INT32_MAX)]
    if bad:
        problems.append(
            f"{where}: offsets {bounded(list(enc.offsets))} put the zero point outside the "
            f"{dtype.bits}-bit grid (0 must be representable)"
        )
        return None
    if sym:
        mid = dtype.symmetric_zero_point
        if any(z != mid for z in zps):
            if strict:
                problems.append(
                    f"{where}: symmetric encoding with offsets "
                    f"{bounded(sorted(set(enc.offsets)))} does "
                    f"not give the symmetric zero point {mid} of {dtype}{hint} (affine)"
                )
                return None
            sym = False
    scale = torch.tensor(enc.scales, dtype=torch.float32)
    if not bool(((scale > 0) & torch.isfinite(scale)).all()):  # also catches float32 underflow
        problems.append(f"{where}: scales must be positive and finite in float32, got "
                        f"{bounded(list(enc.scales))}")
        return None
    zp = torch.tensor(zps, dtype=torch.int32)
    if fq.ch_axis is None:
        if len(zps) != 1:
            problems.append(f"{where}: {len(zps)} per-channel encodings for a per-tensor quantizer")
            return None
        scale, zp = scale[0], zp[0]
    else:
        channels = _num_channels(qmodel, slot)
        if channels is not None and len(zps) != channels:
            if len(zps) == 1 and not strict:
                scale, zp = scale.expand(channels).clone(), zp.expand(channels).clone()
            else:
                problems.append(
                    f"{where}: {len(zps)} encodings but the quantizer has {channels} channels "
                    f"(axis {fq.ch_axis})"
                )
                return None
    return _Plan(slot, dtype, sym, scale, zp)


def load_encodings(
    qmodel: nn.Module, path: str | os.PathLike, freeze: bool = True, strict: bool = True
) -> nn.Module:
    """Set the quantizers of a prepared model from an AIMET / QNN encodings file.

    Args:
        qmodel: a model from :func:`fxquant.prepare` (calibrated or not).
        path: a ``0.6.1`` or ``1.0.0`` encodings JSON (from :func:`export_encodings`, AIMET or
            QNN tools; extra keys are ignored, ``is_symmetric`` may be a string or a bool).
        freeze: put every loaded quantizer in ``FakeQuantState.VALIDATION`` and set
            ``fixed_in_qat`` so QAT keeps the loaded ranges; ``False`` leaves states as they are.
        strict: tensor names unknown to the model, bitwidth or symmetry different from the
            quantizer's raise :class:`EncodingsError`; ``False`` warns about unknown names and
            adopts the file's bitwidth / symmetry.

    Everything is validated before any quantizer changes.  Entries with only ``min`` / ``max``
    get scale and offset as AIMET computes them.  Returns ``qmodel``.
    """
    slots = _slots(qmodel)
    strict_sym_of = {
        n: s.quantizer.symmetric and s.quantizer.dtype.narrow_range for n, s in slots.items()
    }
    skipped: list[str] = []
    entries = _read(path, strict_sym_of, slots, skipped)
    unknown = sorted(skipped)
    if unknown:
        msg = (
            f"{_file(path)}: {len(unknown)} tensor name(s) match no quantizer of the model: "
            f"{bounded_list(unknown)}"
        )
        if strict:
            raise EncodingsError(
                msg + f" (model tensors: {bounded_list(sorted(slots))}); was the file written "
                "for this model? strict=False loads the names that match"
            )
        warnings.warn(msg, stacklevel=2)
    problems: list[str] = []
    plans: list[_Plan] = []
    for enc in entries:
        slot = slots.get(enc.name)
        if slot is None:
            continue
        if enc.is_float:
            msg = (f"tensor {bounded(enc.name)!r}: float encodings cannot be loaded into "
                   f"{bounded(slot.path)!r}")
            if strict:
                problems.append(msg)
            else:
                warnings.warn(msg + "; skipped", stacklevel=2)
            continue
        plan = _plan(qmodel, enc, slot, strict, problems)
        if plan is not None:
            plans.append(plan)
    if problems:
        more = f"\n  (+{len(problems) - 2} more)" if len(problems) > 2 else ""
        raise EncodingsError(f"cannot load {_file(path)}:\n  " + "\n  ".join(problems[:2]) + more)
    for p in plans:
        fq = p.slot.quantizer
        fq.dtype, fq.symmetric = p.dtype, p.symmetric
        if freeze:
            fq.set_state(FakeQuantState.VALIDATION)
            fq.fixed_in_qat = True
        fq._store_qparams(p.scale, p.zero_point)
        fq.calibrated.fill_(True)
        fq._dirty = False  # the loaded values win over anything observed before
    return qmodel


def read_encodings(path: str | os.PathLike) -> list[_FileEncoding]:
    """Every tensor entry of an AIMET / QNN encodings file, validated but not applied to a
    model (what ``fxquant inspect`` prints).

    Each entry has ``name``, ``is_float``, ``bitwidth``, ``symmetric``, ``scales`` and
    ``offsets`` (one per channel, AIMET's unsigned convention ``x = (q + offset) * scale``)
    and ``narrow_grid`` (0.6.1 strict-symmetric grids of ``2^bw - 2`` steps).  A file that
    cannot be read raises :class:`EncodingsError` naming it.
    """
    return _read(path, {})
