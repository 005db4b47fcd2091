"""``report``: one HTML page (plus PNG plots next to it) about a quantized model's accuracy.

Sections, each present when its input is given:

* the per-quantizer comparison table of :func:`fxquant.debug.compare` and a bar chart of the
  cumulative / isolated SQNR of every quantizer;
* the sensitivity chart and table of :func:`fxquant.debug.sensitivity`;
* histograms of the float values of the worst quantizers (lowest isolated SQNR) with the
  range each quantizer represents (its clipping range) marked;
* the accuracy / cost Pareto plot of :func:`fxquant.search_mixed_precision`.

Plots are PNG files named ``<stem>_<plot>.png`` in the folder of the HTML file (``embed=True``
inlines them as data URIs instead: a single file).  Every file is written atomically; the page
has no scripts and no external resources.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, require
from ..export.atomic import atomic_path, check_writable
from .compare import CompareTable, write_text_atomic
from .sensitivity import SensitivityTable

__all__ = ["report", "WORST_HISTOGRAMS"]

WORST_HISTOGRAMS = 4
"""How many of the worst quantizers get a histogram."""

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;
color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}
tr.bad td{background:#fde2e2}
img{max-width:100%;border:1px solid #eee;margin:6px 0}
.note{color:#555;font-size:13px}
"""


def _plt():
    matplotlib = require("matplotlib", "report", "fxquant.report")
    matplotlib.use("Agg", force=False)
    return require("matplotlib.pyplot", "report", "fxquant.report")


class _Figures:
    """Saves figures as ``<stem>_<name>.png`` (atomically) or as data URIs."""

    def __init__(self, html_path: str, embed: bool) -> None:
        self.folder = os.path.dirname(html_path)
        self.stem = os.path.splitext(os.path.basename(html_path))[0]
        self.embed = embed
        self.files: list[str] = []

    def save(self, fig: Any, name: str) -> str:
        plt = _plt()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        data = buf.getvalue()
        if self.embed:
            return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        fname = f"{self.stem}_{name}.png"
        path = os.path.join(self.folder, fname)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(data)
        self.files.append(path)
        return fname


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.4g}"
    return str(v)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 2,
           bad: Sequence[bool] | None = None) -> str:
    def cell(tag: str, i: int, v: Any) -> str:
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{html.escape(_fmt(v))}</{tag}>"

    out = ["<table>", "<tr>" + "".join(cell("th", i, h) for i, h in enumerate(head)) + "</tr>"]
    for k, r in enumerate(rows):
        cls = ' class="bad"' if bad is not None and bad[k] else ""
        out.append(f"<tr{cls}>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(src: str, alt: str) -> str:
    return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}">'


def _finite(v: float, lo: float = -10.0, hi: float = 120.0) -> float:
    if math.isnan(v):
        return 0.0
    return min(max(v, lo), hi)


# -- sections -------------------------------------------------------------------------------
def _compare_section(t: CompareTable, figs: _Figures) -> str:
    plt = _plt()
    cum = t.select("sim", "cumulative")
    iso = {(r.name, r.role): r for r in t.select("sim", "isolated")}
    ort = {(r.name, r.role): r for r in t.select("onnxruntime", "cumulative")}
    labels = [f"{r.name} [{r.role}]" for r in cum]
    parts = ["<h2>Per-quantizer comparison</h2>",
             '<p class="note">cumulative: every quantizer on, against the float model at that '
             "tensor; isolated: only that quantizer on. SQNR in dB (higher is better); "
             "saturation = fraction of values clipped.</p>"]
    head = ["name", "role", "dtype", "SQNR cum", "SQNR iso", "cosine", "L1", "max err",
            "saturation %", "observed range", "chosen range"]
    if ort:
        head += ["SQNR ORT", "ORT steps vs sim"]
    rows, bad = [], []
    for r in cum:
        i = iso[(r.name, r.role)]
        row = [r.name, r.role, r.dtype, r.sqnr, i.sqnr, f"{r.cosine:.5f}", r.l1, r.max_error,
               f"{100 * r.saturation:.3f}", f"[{r.observed_min:.4g}, {r.observed_max:.4g}]",
               f"[{r.chosen_min:.4g}, {r.chosen_max:.4g}]"]
        if ort:
            o = ort.get((r.name, r.role))
            row += [o.sqnr if o else "-", o.max_step_diff if o else "-"]
        rows.append(row)
        bad.append(i.sqnr < 20)
    parts.append(_table(head, rows, left=3, bad=bad))
    for o in t.outputs:
        parts.append(f'<p class="note">model output {o.index} vs {html.escape(o.reference)}: '
                     f"SQNR {_fmt(o.sqnr)} dB, cosine {o.cosine:.5f}, L1 {_fmt(o.l1)}</p>")
    # SQNR bar chart
    n = len(cum)
    fig, ax = plt.subplots(figsize=(9, 0.32 * n + 1.5))
    y = np.arange(n)
    ax.barh(y - 0.2, [_finite(r.sqnr) for r in cum], 0.4, label="cumulative", color="#4c72b0")
    ax.barh(y + 0.2, [_finite(iso[(r.name, r.role)].sqnr) for r in cum], 0.4,
            label="isolated", color="#dd8452")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("SQNR (dB)")
    ax.set_title("Per-quantizer SQNR")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    parts.append(_img(figs.save(fig, "sqnr"), "per-quantizer SQNR bar chart"))
    # histograms of the worst quantizers
    worst = [w for w in t.worst(WORST_HISTOGRAMS) if (w.name, w.role) in t.samples]
    if worst:
        parts.append("<h2>Worst quantizers: value histograms</h2>"
                     '<p class="note">float values at the quantizer (log scale); red lines: '
                     "the range the quantizer represents (values outside are clipped).</p>")
        cols = min(2, len(worst))
        rows_n = math.ceil(len(worst) / cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(5.5 * cols, 3.2 * rows_n),
                                 squeeze=False)
        for ax, w in zip(axes.ravel(), worst, strict=False):
            vals = np.asarray(t.samples[(w.name, w.role)], dtype=np.float64)
            lo = min(float(vals.min()), w.chosen_min) if vals.size else w.chosen_min
            hi = max(float(vals.max()), w.chosen_max) if vals.size else w.chosen_max
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo == hi:
                lo, hi = lo - 1, hi + 1
            ax.hist(vals, bins=120, range=(lo, hi), color="#4c72b0", log=True)
            for v in (w.chosen_min, w.chosen_max):
                if math.isfinite(v):
                    ax.axvline(v, color="red", linestyle="--", linewidth=1.2)
            ax.set_title(f"{w.name} [{w.role}] {w.dtype}: SQNR {_fmt(w.sqnr)} dB", fontsize=9)
            ax.tick_params(labelsize=8)
        for ax in axes.ravel()[len(worst):]:
            ax.axis("off")
        fig.tight_layout()
        parts.append(_img(figs.save(fig, "histograms"), "histograms of the worst quantizers"))
    return "\n".join(parts)


def _sensitivity_section(tables: Sequence[Any], figs: _Figures) -> str:
    plt = _plt()
    parts = ["<h2>Sensitivity</h2>"]
    for k, t in enumerate(tables):
        rows = t.as_lists()
        title = f"metric {t.metric}, mode {t.mode}"
        if t.output_index is not None:
            title += f", output {t.output_index}"
        parts.append(f'<p class="note">{html.escape(title)}: most sensitive first; float '
                     f"{_fmt(t.baseline_float)}, all quantized {_fmt(t.baseline_quant)}.</p>")
        top = rows[:25]
        fig, ax = plt.subplots(figsize=(9, 0.3 * len(top) + 1.5))
        vals = [float(r[3]) for r in top]
        ax.barh(np.arange(len(top)), [_finite(v, -1e30, 1e30) for v in vals],
                color=["#c44e52" if i == 0 else "#55a868" for i in range(len(top))])
        ax.set_yticks(np.arange(len(top)), [f"{r[0]} [{r[1]}]" for r in top], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{t.metric} ({'higher' if t.higher_is_better else 'lower'} is better)")
        ax.set_title(f"Sensitivity ({title})")
        ax.grid(axis="x", alpha=0.3)
        parts.append(_img(figs.save(fig, f"sensitivity_{k}"), f"sensitivity chart {k}"))
        parts.append(_table(["op_name", "sensitive_type", "op_type", t.metric, "dtype", "flops"],
                            rows, left=3))
    return "\n".join(parts)


def _search_section(search: Any, figs: _Figures) -> str:
    plt = _plt()
    pts = list(search.points)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([p.cost for p in pts], [p.accuracy for p in pts], color="#999", s=18,
               label="evaluated")
    front = sorted((p for p in pts if p.on_front), key=lambda p: p.cost)
    ax.plot([p.cost for p in front], [p.accuracy for p in front], "-o", color="#4c72b0",
            label="Pareto front")
    c = search.chosen
    ax.scatter([c.cost], [c.accuracy], color="red", s=80, marker="*", zorder=5, label="chosen")
    ax.axhline(search.target, color="red", linestyle=":", label="accuracy budget")
    ax.set_xlabel(f"cost ({search.objective})")
    ax.set_ylabel("accuracy")
    ax.set_title("Mixed-precision search")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    parts = ["<h2>Mixed-precision search</h2>",
             f'<p class="note">float accuracy {_fmt(search.float_accuracy)}, budget '
             f"{_fmt(search.target)} (allowed drop {_fmt(search.allowed_drop)}); chosen: "
             f"{html.escape(c.label)} (accuracy {_fmt(c.accuracy)}, cost {_fmt(c.cost)}).</p>",
             _img(figs.save(fig, "pareto"), "accuracy / cost Pareto plot"),
             _table(["configuration", "accuracy", "cost", "on front"],
                    [[p.label, p.accuracy, p.cost, "yes" if p.on_front else ""] for p in pts],
                    left=1)]
    return "\n".join(parts)


def report(
    path: str | os.PathLike[str],
    compare: CompareTable | None = None,
    sensitivity: Any = None,
    search: Any = None,
    *,
    title: str = "fxquant accuracy report",
    embed: bool = False,
) -> str:
    """Write the HTML report at ``path`` (and its PNGs next to it); returns the path.

    Args:
        compare: a :class:`~fxquant.debug.CompareTable`.
        sensitivity: a :class:`~fxquant.debug.SensitivityTable` or a list of them.
        search: the report of :func:`fxquant.search_mixed_precision`.
        embed: inline the PNGs (one file, no PNGs written).
    """
    if compare is None and sensitivity is None and search is None:
        raise ConfigError("report: give at least one of compare=, sensitivity=, search=")
    tables = [] if sensitivity is None else \
        sensitivity if isinstance(sensitivity, (list, tuple)) else [sensitivity]
    for given, cls, what in ((compare, CompareTable, "compare= takes fxquant.compare's table"),
                             *((t, SensitivityTable, "sensitivity= takes fxquant.sensitivity's "
                                "table(s)") for t in tables)):
        if given is not None and not isinstance(given, cls):
            raise ConfigError(f"report: {what}, got {type(given).__name__}")
    if search is not None and not all(hasattr(search, a) for a in ("points", "chosen", "target")):
        raise ConfigError(f"report: search= takes the report of fxquant.search_mixed_precision, "
                          f"got {type(search).__name__}")
    _plt()  # the optional dependency, checked before any work
    path = check_writable(path, ConfigError, "report: path")
    figs = _Figures(path, embed)
    body = [f"<h1>{html.escape(title)}</h1>"]
    if compare is not None:
        body.append(_compare_section(compare, figs))
    if sensitivity is not None:
        body.append(_sensitivity_section(tables, figs))
    if search is not None:
        body.append(_search_section(search, figs))
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    write_text_atomic(path, page)
    return path
