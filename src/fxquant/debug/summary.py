"""``summary``: every quantizer of a prepared model, and what stayed float and why."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..fake_quant import FakeQuantize
from ..graph.report import get_report

__all__ = ["QuantizerRow", "FloatRow", "Summary", "summary"]


@dataclass(frozen=True)
class QuantizerRow:
    """One quantizer: ``name`` is the op name, ``role`` output / weight / input_<i>."""

    name: str
    role: str
    op_type: str
    dtype: str
    granularity: str
    observer: str
    state: str
    scale: str
    zero_point: str
    path: str


@dataclass(frozen=True)
class FloatRow:
    """An op whose result stays in float, with the reason."""

    name: str
    op_type: str
    reason: str


@dataclass(frozen=True)
class Summary:
    """Result of :func:`summary`; ``str()`` renders the two tables."""

    quantizers: tuple[QuantizerRow, ...]
    float_ops: tuple[FloatRow, ...]
    capture_mode: str
    backend: str

    def __str__(self) -> str:
        head = (
            "name",
            "role",
            "op_type",
            "dtype",
            "granularity",
            "observer",
            "state",
            "scale",
            "zero_point",
        )
        rows = [head] + [tuple(getattr(r, h) for h in head) for r in self.quantizers]
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
        lines = [
            f"fxquant summary (backend={self.backend}, capture={self.capture_mode}): "
            f"{len(self.quantizers)} quantizers"
        ]
        for i, r in enumerate(rows):
            lines.append(
                "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
            )
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("")
        lines.append(f"coverage: {len(self.float_ops)} op(s) left in float")
        for f in self.float_ops:
            lines.append(f"  {f.name} ({f.op_type}): {f.reason}")
        return "\n".join(lines)


def _fmt(t) -> str:
    if t.numel() == 0:
        return "-"
    if t.numel() == 1:
        v = t.reshape(()).item()
        return f"{v:.6g}" if isinstance(v, float) else str(v)
    return f"[{t.numel()} ch: {t.min().item():.4g}..{t.max().item():.4g}]"


def summary(qmodel: nn.Module, print_table: bool = False) -> Summary:
    """Table of every quantizer (name, op type, dtype, granularity, observer, state,
    scale / zero point once known) and a coverage section listing float ops with reasons."""
    rep = get_report(qmodel)
    rows: list[QuantizerRow] = []
    for rec in rep.ops.values():
        for role, path in sorted(rec.quantizers.items()):
            fq = qmodel.get_submodule(path)
            if not isinstance(fq, FakeQuantize):
                continue
            known = bool(fq.calibrated)
            qp = fq.qparams()  # the grid forward applies (LSQ: clamped scale, integer zp)
            rows.append(
                QuantizerRow(
                    name=rec.name,
                    role=role,
                    op_type=rec.op_type,
                    dtype=str(fq.dtype),
                    granularity=repr(fq.granularity),
                    observer=type(fq.observer).__name__,
                    state=fq.state.name,
                    scale=_fmt(qp.scale) if known else "?",
                    zero_point=_fmt(qp.zero_point) if known else "?",
                    path=path,
                )
            )
    floats = tuple(
        FloatRow(r.name, r.op_type, r.float_reason)
        for r in rep.ops.values()
        if r.float_reason is not None and r.is_tensor_op
    )
    if rep.root_failure:
        floats = (FloatRow("<forward>", "root", rep.root_failure), *floats)
    s = Summary(tuple(rows), floats, rep.capture_mode, rep.profile.name)
    if print_table:
        print(s)
    return s
