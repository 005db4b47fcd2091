"""``sensitivity``: rank the quantized ops of a prepared model by how much they hurt.

Each op contributes up to two *groups* of quantizers: its activation quantizers (output /
``input_<i>``) and its weight quantizer.  An activation quantizer placed after a fused
``conv -> relu`` belongs to the conv (the op whose qconfig decides it), so rows name the op a
qconfig setter has to change.

Modes:

* ``"one_on"`` (default): only that group is quantized, everything else runs in float; the
  metric measures the damage the group does on its own.  Most sensitive = worst metric.
* ``"one_off"``: everything is quantized except that group; the metric measures the model
  without the group's error.  Most sensitive = best metric (turning it off helps most).

Metrics, computed on the model outputs against the float reference (``float_model`` when given,
else ``qmodel`` with every quantizer off), accumulated over every batch of ``data``:
``"L1"`` (mean absolute error), ``"mse"``, ``"cosine"`` (cosine similarity of the flattened
outputs) and ``"sqnr"`` (dB).  L1 / mse: lower is better; cosine / sqnr: higher is better.

A **callable** metric is a user evaluation function ``metric(model) -> float`` (e.g. accuracy
on a few batches), called with ``qmodel`` configured for the group under test (eval mode, no
grad); **higher is better** unless ``higher_is_better=False``.  ``data`` is then only used for
the FLOPs column.  A callable gives one table; built-in metrics give one table per model output.

The table rows are ``[op_name, "activation" | "weight", op_type, metric_value, dtype,
"flops(x%)"]`` (horizon_plugin_pytorch's layout), most sensitive first; ``save(path)`` writes
them as a plain list with :func:`torch.save` (loads with ``weights_only=True``), ``.txt`` and
``.csv`` next to it.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from tqdm.auto import tqdm

from ..export.atomic import atomic_path
from ..fake_quant import FakeQuantState
from ..graph.meta import op_name as node_op_name
from ..graph.ops import count_macs, layer_traits
from ..graph.report import get_report, num_inputs_of
from ..modelio import ModelInputs, eval_mode, iter_inputs
from ..qconfig import OpKind
from ..qconfig.sensitive import select_count
from .compare import (
    ErrorStats,
    QuantizerEntry,
    quantizer_entries,
    run_model,
    running,
    write_text_atomic,
)

__all__ = ["SensitivityRow", "SensitivityTable", "sensitivity", "METRICS", "load_table"]

METRICS = {"L1": False, "mse": False, "cosine": True, "sqnr": True}
"""Built-in metrics -> higher is better."""


@dataclass(frozen=True)
class SensitivityRow:
    """``[op_name, kind, op_type, metric_value, dtype, flops]`` as a frozen record."""

    op_name: str
    kind: str  # "activation" | "weight"
    op_type: str
    metric_value: float
    dtype: str
    flops: str  # "<flops>(<x>%)"

    def as_list(self) -> list[Any]:
        return [self.op_name, self.kind, self.op_type, self.metric_value, self.dtype, self.flops]


@dataclass(frozen=True)
class SensitivityTable:
    """Result of :func:`sensitivity`.

    Attributes:
        rows: most sensitive first.
        metric: metric name (``"callable"`` for a user function).
        mode: ``"one_on"`` or ``"one_off"``.
        higher_is_better: direction of ``metric_value``.
        output_index: the model output this table is about (``None`` for a callable metric).
        baseline_float / baseline_quant: the metric with every quantizer off / on.
    """

    rows: tuple[SensitivityRow, ...]
    metric: str
    mode: str
    higher_is_better: bool
    output_index: int | None
    baseline_float: float
    baseline_quant: float

    def as_lists(self) -> list[list[Any]]:
        return [r.as_list() for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.as_lists())

    def __getitem__(self, i):
        return self.as_lists()[i]

    def top(self, topk: int | None = None, ratio: float | None = None) -> list[SensitivityRow]:
        return list(self.rows[: select_count(len(self.rows), topk, ratio)])

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["op_name", "sensitive_type", "op_type", self.metric, "dtype", "flops"])
        for r in self.rows:
            w.writerow(r.as_list())
        return buf.getvalue()

    def __str__(self) -> str:
        head = ["op_name", "sensitive_type", "op_type", self.metric, "dtype", "flops"]
        body = [[r.op_name, r.kind, r.op_type, f"{r.metric_value:.6g}", r.dtype, r.flops]
                for r in self.rows]
        widths = [max(len(str(x[k])) for x in [head, *body]) for k in range(len(head))]
        fmt = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
        out = f" output {self.output_index}" if self.output_index is not None else ""
        return "\n".join([
            f"fxquant sensitivity ({self.mode}, metric={self.metric}{out}; float "
            f"{self.baseline_float:.6g}, all quantized {self.baseline_quant:.6g})",
            fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)])

    def save(self, path: str | os.PathLike[str]) -> list[str]:
        """``torch.save`` the rows (a plain list) at ``path``; ``<stem>.txt`` and ``<stem>.csv``
        next to it.  Returns the three paths.  Every write is atomic."""
        path = os.fspath(path)
        stem = os.path.splitext(path)[0]
        with atomic_path(path) as tmp:
            torch.save(self.as_lists(), tmp)
        write_text_atomic(stem + ".txt", str(self) + "\n")
        write_text_atomic(stem + ".csv", self.to_csv())
        return [path, stem + ".txt", stem + ".csv"]


def load_table(path: str | os.PathLike[str]) -> list[list[Any]]:
    """Rows saved by :meth:`SensitivityTable.save` (``weights_only=True``)."""
    return torch.load(os.fspath(path), weights_only=True)


# -- groups ---------------------------------------------------------------------------------
@dataclass
class _Group:
    op_name: str
    kind: str
    op_type: str
    dtype: str
    paths: list[str]


def _deciding_ops(qmodel: nn.Module) -> dict[str, str]:
    """Activation quantizer path -> name of the op whose qconfig decided it (a fused
    ``conv -> relu`` quantizer belongs to the conv)."""
    rep = get_report(qmodel)
    out: dict[str, str] = {}
    if not isinstance(qmodel, fx.GraphModule):
        return out
    for n in qmodel.graph.nodes:
        if n.op != "call_module" or not n.args or not isinstance(n.args[0], fx.Node):
            continue
        act = n.args[0]
        aname = node_op_name(act)
        rec = rep.ops.get(aname) if aname else None
        if rec is None or rec.kind is not OpKind.ACTIVATION or not act.args:
            continue
        prod = act.args[0]
        pname = node_op_name(prod) if isinstance(prod, fx.Node) else None
        prec = rep.ops.get(pname) if pname else None
        if prec is not None and prec.kind in (OpKind.WEIGHTED, OpKind.COMPUTE) and \
                prec.qconfig is not None and len(prod.users) == 1:
            out[str(n.target)] = prec.name
    return out


def op_groups(qmodel: nn.Module, entries: list[QuantizerEntry]) -> list[_Group]:
    """The quantizer groups of every op: its activation quantizers, its weight quantizer."""
    rep = get_report(qmodel)
    owner = _deciding_ops(qmodel)
    groups: dict[tuple[str, str], _Group] = {}
    for e in entries:
        kind = "weight" if e.role == "weight" else "activation"
        name = owner.get(e.path, e.name) if kind == "activation" else e.name
        rec = rep.ops.get(name)
        op_type = rec.op_type if rec is not None else e.op_type
        g = groups.setdefault((name, kind), _Group(name, kind, op_type, str(e.fq.dtype), []))
        g.paths.append(e.path)
    return list(groups.values())


# -- FLOPs ----------------------------------------------------------------------------------
def _flops(qmodel: nn.Module, batch: ModelInputs, groups: list[_Group],
           entries: list[QuantizerEntry]) -> dict[str, float]:
    """FLOPs per sample of each op named by ``groups``: 2 x MACs for weighted modules,
    output elements for the other ops (elementwise estimate)."""
    per_op: dict[str, float] = {}
    hooks = []
    names = {g.op_name for g in groups}
    rep = get_report(qmodel)
    batch_n = batch.batch_size()

    def weighted(name: str, mod: nn.Module) -> None:
        def hook(m, inp, out, _n=name):
            w = getattr(m, "weight", None)
            if not isinstance(out, torch.Tensor) or not isinstance(w, torch.Tensor):
                return
            macs = count_macs(layer_traits(m), w, inp[0], out)
            per_op[_n] = per_op.get(_n, 0.0) + 2.0 * macs / batch_n
        hooks.append(mod.register_forward_hook(hook))

    for name in names:
        rec = rep.ops.get(name)
        if rec is not None and rec.kind is OpKind.WEIGHTED:
            try:
                weighted(name, qmodel.get_submodule(name))
            except AttributeError:
                pass
    owner = _deciding_ops(qmodel)
    for e in entries:
        if e.role != "output":
            continue
        name = owner.get(e.path, e.name)
        if name in per_op or (rep.ops.get(name) and rep.ops[name].kind is OpKind.WEIGHTED):
            continue

        def hook(_m, _inp, out, _n=name):
            if isinstance(out, torch.Tensor):
                per_op[_n] = per_op.get(_n, 0.0) + out.numel() / batch_n
        hooks.append(e.fq.register_forward_hook(hook))
    try:
        with running(qmodel, FakeQuantState.FLOAT):
            run_model(qmodel, batch)
    finally:
        for h in hooks:
            h.remove()
    return per_op


def _fmt_flops(v: float, total: float) -> str:
    for unit, d in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if v >= d:
            s = f"{v / d:.2f}{unit}"
            break
    else:
        s = f"{v:.0f}"
    return f"{s}({100.0 * v / total if total else 0.0:.2f}%)"


# -- sensitivity ----------------------------------------------------------------------------
def _score(stats: ErrorStats, metric: str) -> float:
    return {"L1": stats.l1, "mse": stats.mse, "cosine": stats.cosine, "sqnr": stats.sqnr}[metric]


def sensitivity(
    qmodel: nn.Module,
    data: Any,
    metric: str | Callable[[nn.Module], float] = "L1",
    float_model: nn.Module | None = None,
    mode: str = "one_on",
    *,
    higher_is_better: bool = True,
    progress: bool = True,
) -> SensitivityTable | list[SensitivityTable]:
    """Sensitivity of every quantized op of a calibrated ``qmodel`` (module docstring).

    Args:
        qmodel: a calibrated model from :func:`fxquant.prepare` (left as it was).
        data: one batch (a tensor, a tuple of positional inputs, a dict of keyword inputs) or
            a list of batches, as :mod:`fxquant.modelio` defines them.
        metric: ``"L1"``, ``"mse"``, ``"cosine"``, ``"sqnr"`` or ``metric(model) -> float``.
        float_model: reference model for built-in metrics (default: ``qmodel`` all float).
        mode: ``"one_on"`` or ``"one_off"``.
        higher_is_better: direction of a callable metric.
        progress: show a progress bar.

    Returns:
        One :class:`SensitivityTable`, or a list of them (one per model output) when the
        model has several outputs and the metric is built in.
    """
    if mode not in ("one_on", "one_off"):
        raise ValueError(f"mode must be 'one_on' or 'one_off', got {mode!r}")
    user = callable(metric)
    if not user and metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)} or a callable, got {metric!r}")
    batches = list(iter_inputs(data, num_inputs_of(qmodel)))
    if not batches:
        raise ValueError("sensitivity: no data")
    entries = quantizer_entries(qmodel)
    groups = op_groups(qmodel, entries)
    flops = _flops(qmodel, batches[0], groups, entries)
    total = sum(flops.values())
    on, off = FakeQuantState.VALIDATION, FakeQuantState.FLOAT
    higher = higher_is_better if user else METRICS[metric]

    refs: list[list[torch.Tensor]] = []
    if not user:
        for b in batches:
            if float_model is not None:
                with eval_mode(float_model):
                    refs.append(run_model(float_model, b))
            else:
                with running(qmodel, off):
                    refs.append(run_model(qmodel, b))

    def evaluate(default: FakeQuantState, overrides: dict[str, FakeQuantState]) -> list[float]:
        with running(qmodel, default, overrides), torch.no_grad():
            if user:
                return [float(metric(qmodel))]
            stats: list[ErrorStats] = []
            for b, ref in zip(batches, refs, strict=True):
                outs = run_model(qmodel, b)
                while len(stats) < len(outs):
                    stats.append(ErrorStats())
                for k, (o, r) in enumerate(zip(outs, ref, strict=True)):
                    stats[k].add(o, r)
            return [_score(s, metric) for s in stats]

    base_float = evaluate(off, {})
    base_quant = evaluate(on, {})
    values: list[list[float]] = []
    for g in tqdm(groups, desc=f"sensitivity ({mode})", disable=not progress, leave=False):
        if mode == "one_on":
            values.append(evaluate(off, {p: on for p in g.paths}))
        else:
            values.append(evaluate(on, {p: off for p in g.paths}))
    tables = []
    for k in range(len(base_float)):
        # one_on: most sensitive = worst value; one_off: best value.
        worst_first = mode == "one_on"
        sign = -1.0 if (higher == worst_first) else 1.0  # sort ascending on sign * value
        order = sorted(range(len(groups)),
                       key=lambda i: (_nan_last(-sign * values[i][k]), i))
        rows = tuple(
            SensitivityRow(groups[i].op_name, groups[i].kind, groups[i].op_type,
                           float(values[i][k]), groups[i].dtype,
                           _fmt_flops(flops.get(groups[i].op_name, 0.0), total))
            for i in order
        )
        tables.append(SensitivityTable(
            rows, "callable" if user else str(metric), mode, higher,
            None if user else k, base_float[k], base_quant[k]))
    return tables[0] if len(tables) == 1 else tables


def _nan_last(v: float) -> float:
    return math.inf if math.isnan(v) else v
