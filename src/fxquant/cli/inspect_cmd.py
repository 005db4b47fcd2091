"""``fxquant inspect FILE``: every quantized tensor of an ONNX model or encodings file.

Like ``snpe-dlc-info``: one row per quantized tensor with its dtype, bit width, symmetry,
granularity, scale, zero point (ONNX) or offset (AIMET encodings, whose grids are unsigned:
``x = (q + offset) * scale``) and the float range the grid covers.  Per-channel tensors are
shown on one line (scale range and channel count); ``--channels`` lists every channel,
``--json`` prints the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ConfigError, EncodingsError, bounded, require
from ..export.encodings import read_encodings
from ..export.naming import dq_output
from .common import EXIT_OK, existing_file

__all__ = ["QuantizedTensor", "read_quantized", "inspect_arguments", "inspect_run", "EXAMPLE"]

EXAMPLE = "example: fxquant inspect int8/model.onnx   (or int8/model.encodings)"

_MOVEMENT = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"})


@dataclass(frozen=True)
class QuantizedTensor:
    """One quantized tensor of a file.

    Attributes:
        name: tensor name (the float tensor before QuantizeLinear; a weight's DQ output).
        kind: ``"activation"`` or ``"param"``.
        dtype: ``int8``, ``uint8``, ``int16`` ... (ONNX) or ``int<bw>`` / ``float<bw>``.
        bits: bit width.
        symmetric: zero point at the middle of the grid (or the file says so).
        axis: per-channel axis (``None``: per tensor, or not recorded in encodings).
        scales / zero_points: one per channel; ``zero_points`` holds AIMET offsets for
            encodings (``zero_point_label`` says which).
        ranges: the float ``(min, max)`` each channel's grid covers.
        aliases: graph outputs that carry this tensor's values (ONNX).
    """

    name: str
    kind: str
    dtype: str
    bits: int
    symmetric: bool
    axis: int | None
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    ranges: tuple[tuple[float, float], ...]
    zero_point_label: str = "zero point"
    aliases: tuple[str, ...] = field(default_factory=tuple)


def _is_json(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    return head.startswith(b"{")


# -- encodings ---------------------------------------------------------------------------------
def _param_names(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    sec = data.get("param_encodings") if isinstance(data, dict) else None
    if isinstance(sec, dict):
        return set(sec)
    if isinstance(sec, list):
        return {e.get("name") for e in sec if isinstance(e, dict)}
    return set()


def _from_encodings(path: str) -> list[QuantizedTensor]:
    entries = read_encodings(path)
    params = _param_names(path)
    rows = []
    for e in entries:
        kind = "param" if e.name in params else "activation"
        if not 1 <= e.bitwidth <= 64:
            raise EncodingsError(f"{bounded(path)!r}: tensor {bounded(e.name)!r} has bitwidth "
                                 f"{bounded(e.bitwidth, 30)}; bit widths are 1 to 64")
        if e.is_float:
            rows.append(QuantizedTensor(e.name, kind, f"float{e.bitwidth}", e.bitwidth,
                                        e.symmetric, None, (), (), (), "offset"))
            continue
        steps = (1 << e.bitwidth) - 1 - (1 if e.narrow_grid else 0)
        ranges = tuple((o * s, (o + steps) * s) for s, o in zip(e.scales, e.offsets, strict=True))
        rows.append(QuantizedTensor(e.name, kind, f"int{e.bitwidth}", e.bitwidth, e.symmetric,
                                    None, tuple(e.scales), tuple(e.offsets), ranges, "offset"))
    return sorted(rows, key=lambda r: (r.kind != "activation", r.name))


# -- ONNX --------------------------------------------------------------------------------------
def _load_onnx(path: str):
    onnx = require("onnx", "onnx", "fxquant inspect of an ONNX file")
    try:
        return onnx.load(path)
    except Exception as exc:
        raise ConfigError(
            f"{bounded(path)!r} is neither an ONNX model nor an encodings JSON "
            f"({type(exc).__name__}: {bounded(str(exc), 100)})"
        ) from None


def _from_onnx(path: str) -> list[QuantizedTensor]:
    model = _load_onnx(path)
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t
    producer = {o: n for n in graph.node for o in n.output}

    def value(name: str) -> np.ndarray | None:
        t = consts.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def elem_type(name: str) -> int | None:
        t = consts.get(name)
        return None if t is None else t.data_type

    rows: dict[str, QuantizedTensor] = {}
    dq_of: dict[str, str] = {}  # DQ output -> row name
    for n in graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        scale = value(n.input[1]) if len(n.input) > 1 else None
        if scale is None:
            continue
        zp = value(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if n.op_type == "QuantizeLinear":
            name, kind = n.input[0], "activation"
            elem = elem_type(n.input[2]) if zp is not None else attrs.get("output_dtype") or 2
        else:
            src = n.input[0]
            q = producer.get(src)
            if q is not None and q.op_type == "QuantizeLinear":
                dq_of[n.output[0]] = q.input[0]
                continue  # the activation row comes from its QuantizeLinear
            name, kind = n.output[0], "param" if src in consts else "activation"
            elem = elem_type(src) or (elem_type(n.input[2]) if zp is not None else 2)
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{bounded(path)!r}: tensor {bounded(name)!r} has ONNX element type "
                              f"{elem}, which fxquant inspect does not know") from None
        info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
        scales = tuple(float(s) for s in np.atleast_1d(scale).ravel())
        zps = (tuple(int(z) for z in np.atleast_1d(zp).ravel()) if zp is not None
               else (0,) * len(scales))
        if len(zps) == 1 and len(scales) > 1:
            zps = zps * len(scales)
        lo, hi = (info.min, info.max) if info is not None else (0, 0)
        middle = 0 if info is None or info.min < 0 else (info.max + 1) // 2
        rows[name] = QuantizedTensor(
            name, kind, str(dtype), dtype.itemsize * 8 if info is not None else 0,
            all(z == middle for z in zps),
            int(attrs.get("axis", 1)) if len(scales) > 1 else None, scales, zps,
            tuple(((lo - z) * s, (hi - z) * s) for s, z in zip(scales, zps, strict=True)),
        )
    for out in graph.output:  # graph outputs that carry a quantized tensor
        node = producer.get(out.name)
        while node is not None and node.op_type in _MOVEMENT:
            node = producer.get(node.input[0])
        if node is not None and node.op_type == "DequantizeLinear":
            name = dq_of.get(node.output[0], node.output[0])
            if name in rows and out.name not in (name, dq_output(name)):
                r = rows[name]
                rows[name] = QuantizedTensor(**{**asdict(r), "aliases": (*r.aliases, out.name)})
    return sorted(rows.values(), key=lambda r: (r.kind != "activation", r.name))


def read_quantized(path: str) -> list[QuantizedTensor]:
    """Every quantized tensor of an ONNX model or an AIMET / QNN encodings JSON."""
    if os.path.getsize(path) == 0:
        raise ConfigError(f"{bounded(path)!r} is empty; give an ONNX model or encodings JSON")
    if _is_json(path):
        try:
            return _from_encodings(path)
        except RecursionError:
            raise EncodingsError(f"{bounded(path)!r} is nested too deeply to be an encodings "
                                 "file") from None
    return _from_onnx(path)


# -- the command -------------------------------------------------------------------------------
def inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EXAMPLE
    p.add_argument("file", metavar="FILE", help="an ONNX model or an encodings JSON")
    p.add_argument("--channels", action="store_true", help="one line per channel")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def _g(v: float) -> str:
    return f"{v:.6g}"


def _span(values: Sequence[float]) -> str:
    lo, hi = min(values), max(values)
    return _g(lo) if lo == hi else f"{_g(lo)}..{_g(hi)}"


def _cells(r: QuantizedTensor, channel: int | None = None) -> tuple[str, ...]:
    n = len(r.scales)
    if channel is not None:
        sl = slice(channel, channel + 1)
        gran = f"channel {channel}"
    else:
        sl = slice(None)
        gran = "per-tensor" if n <= 1 else (
            f"per-channel({n}" + (f", axis {r.axis})" if r.axis is not None else ")"))
    scales, zps, ranges = r.scales[sl], r.zero_points[sl], r.ranges[sl]
    rng = (f"[{_g(min(a for a, _ in ranges))}, {_g(max(b for _, b in ranges))}]"
           if ranges else "-")
    name = r.name + (f" (= {', '.join(r.aliases)})" if r.aliases and channel is None else "")
    return (name if channel is None else "", r.kind if channel is None else "", r.dtype,
            str(r.bits), "yes" if r.symmetric else "no", gran,
            _span(scales) if scales else "-", _span([float(z) for z in zps]) if zps else "-",
            rng)


def inspect_run(args: argparse.Namespace) -> int:
    existing_file(args.file, "FILE")
    rows = read_quantized(args.file)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
        return EXIT_OK
    label = rows[0].zero_point_label if rows else "zero point"
    head = ("tensor", "kind", "dtype", "bits", "sym", "granularity", "scale", label,
            "float range")
    body = []
    for r in rows:
        body.append(_cells(r))
        if args.channels and len(r.scales) > 1:
            body += [_cells(r, c) for c in range(len(r.scales))]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    acts = sum(r.kind == "activation" for r in rows)
    print(f"{args.file}: {len(rows)} quantized tensor(s) ({acts} activation(s), "
          f"{len(rows) - acts} parameter(s))")
    print(line(head))
    print(line(["-" * w for w in widths]))
    for b in body:
        print(line(b))
    return EXIT_OK
