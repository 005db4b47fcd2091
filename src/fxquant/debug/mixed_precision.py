"""``search_mixed_precision``: per-op bit widths under an accuracy budget, lowest cost found.

Decision variables: one bit width per *op that decides quantizers* (the op names of
:func:`fxquant.debug.sensitivity` rows: a fused ``conv -> relu`` is the conv); the op's weight
and output activation take that width together (``W<b>A<b>``; activations use the profile's
signedness).  Costs:

* ``"size"``: deployed model bytes (:func:`fxquant.debug.size.quantized_size_bytes`: weights at
  their bit width plus scales / zero points, other parameters 32-bit);
* ``"bitops"``: per sample, ``sum MACs x weight bits x input activation bits`` over weighted
  ops (the input activation bits are those of the last activation quantizer that ran before
  the op) plus ``elements x bits`` for other quantized ops.

Search (deterministic: every configuration is prepared and calibrated after
``torch.manual_seed(seed)``, candidates are visited in a fixed order):

1. evaluate the float model and every uniform configuration (all int4, all int8, ...);
2. sensitivity: starting from all-highest, lower one op at a time to each lower candidate and
   measure the accuracy drop;
3. greedy descent from all-highest: repeatedly take the move (one op one candidate lower) with
   the largest cost saving per unit of measured drop; keep it if the accuracy stays within
   ``allowed_drop`` of float, otherwise freeze that op at its current width;
4. the chosen configuration is the cheapest evaluated one within the budget (a uniform one
   when that is cheapest); the report holds every evaluated point and the Pareto front.

``eval_fn(model) -> float`` must return a score where higher is better, in the units of
``allowed_drop`` (e.g. accuracy in percent with ``allowed_drop=0.5`` point).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..algorithms import calibrate
from ..errors import ConfigError
from ..fake_quant import FakeQuantize
from ..graph import prepare
from ..graph.ops import count_macs, layer_traits
from ..graph.report import get_report
from ..graph.simulate import float_simulation
from ..modelio import ModelInputs, as_inputs, call_model
from ..numerics import QDType, qint4, qint8, qint16
from ..qconfig import OpInfo, OpKind, QConfig, SetterContext
from ..qconfig.templates import (
    TemplateMode,
    TemplateQconfigSetter,
    activation_factory,
    weight_factory,
)
from .compare import quantizer_entries
from .sensitivity import op_groups
from .size import quantized_size_bytes

__all__ = [
    "MixedPrecisionQconfigSetter",
    "SearchPoint",
    "SearchReport",
    "search_mixed_precision",
]


@dataclass(frozen=True)
class MixedPrecisionQconfigSetter:
    """Per-op bit widths: ``bits`` maps op name -> :class:`QDType` (weight and output
    activation of that op); no opinion on other ops (compose it before a template)."""

    bits: tuple[tuple[str, QDType], ...]
    mode: TemplateMode = TemplateMode.CALIBRATION

    def __call__(self, op: OpInfo, ctx: SetterContext) -> QConfig | None:
        dt = dict(self.bits).get(op.name)
        if dt is None or op.kind in (OpKind.FLOAT, OpKind.DEQUANT_STUB):
            return None
        act_base = ctx.profile.activation_dtype
        act_dt = QDType(dt.bits, act_base.signed if dt.bits <= 8 else True)
        out = activation_factory(ctx.profile, self.mode, bits16=False).with_args(
            dtype=act_dt, symmetric=True if act_dt.signed else ctx.profile.activation_symmetric)
        weight = None
        if op.kind is OpKind.WEIGHTED:
            wd = ctx.profile.weight_dtype
            weight = weight_factory(ctx.profile).with_args(
                dtype=QDType(dt.bits, wd.signed, wd.narrow_range))
        return QConfig(weight=weight, output=out)

    def __repr__(self) -> str:
        return "MixedPrecisionQconfigSetter({" + ", ".join(
            f"{k!r}: {v}" for k, v in self.bits) + "})"


@dataclass(frozen=True)
class SearchPoint:
    """One evaluated configuration."""

    label: str
    bits: tuple[tuple[str, int], ...]
    accuracy: float
    cost: float
    on_front: bool = False


@dataclass(frozen=True)
class SearchReport:
    """Result of the search (also accepted by :func:`fxquant.debug.report`).

    Attributes:
        chosen: the cheapest evaluated point within the budget (``met`` False: none was, and
            this is the most accurate point).
        points: every evaluated configuration (``on_front`` marks the Pareto front:
            no other point is both cheaper-or-equal and more-accurate-or-equal).
        pareto: the front, by increasing cost.
        float_accuracy / target / allowed_drop / objective / candidates: the problem.
        sensitivity: ``(op, bits) -> accuracy drop`` measured in step 2.
    """

    chosen: SearchPoint
    points: tuple[SearchPoint, ...]
    float_accuracy: float
    target: float
    allowed_drop: float
    objective: str
    candidates: tuple[int, ...]
    met: bool
    sensitivity: dict[tuple[str, int], float] = field(default_factory=dict)

    @property
    def pareto(self) -> list[SearchPoint]:
        return sorted((p for p in self.points if p.on_front), key=lambda p: (p.cost, -p.accuracy))

    def uniform(self, bits: int) -> SearchPoint:
        return next(p for p in self.points if p.label == f"all int{bits}")

    def __str__(self) -> str:
        lines = [f"fxquant mixed-precision search ({self.objective}): float "
                 f"{self.float_accuracy:.4g}, budget >= {self.target:.4g}; "
                 f"{len(self.points)} configurations evaluated"]
        for p in self.pareto:
            mark = "  <- chosen" if p == self.chosen else ""
            lines.append(f"  front: {p.label:<40} accuracy {p.accuracy:8.4g}  cost "
                         f"{p.cost:12.6g}{mark}")
        if not self.chosen.on_front:
            lines.append(f"  chosen: {self.chosen.label} accuracy {self.chosen.accuracy:.4g} "
                         f"cost {self.chosen.cost:.6g}")
        return "\n".join(lines)


def _bitops(qmodel: nn.Module, example: ModelInputs) -> float:
    last_bits = [32]
    total = [0.0]
    hooks = []
    batch = example.batch_size()
    for m in qmodel.modules():
        if isinstance(m, FakeQuantize) and not m.is_weight:
            def act_hook(mod, _i, out):
                last_bits[0] = mod.dtype.bits
                total[0] += out.numel() * mod.dtype.bits / batch
            hooks.append(m.register_forward_hook(act_hook))
        wfq = getattr(m, "weight_fake_quant", None)
        if isinstance(wfq, FakeQuantize) and isinstance(getattr(m, "weight", None), torch.Tensor):
            def w_hook(mod, inp, out, _w=wfq):
                macs = count_macs(layer_traits(mod), mod.weight, inp[0], out)
                total[0] += macs * _w.dtype.bits * last_bits[0] / batch
            hooks.append(m.register_forward_hook(w_hook))
    try:
        with torch.no_grad(), float_simulation():  # every layer's forward runs (its hooks count)
            call_model(qmodel.eval(), example)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def search_mixed_precision(
    model: nn.Module,
    example_inputs: Any,
    calib_data: Iterable[Any],
    eval_fn: Callable[[nn.Module], float],
    allowed_drop: float,
    candidates: Sequence[QDType] = (qint4, qint8, qint16),
    objective: str = "size",
    *,
    backend: str = "generic",
    seed: int = 0,
    progress: bool = True,
) -> tuple[tuple[Any, ...], SearchReport]:
    """Search per-op bit widths (module docstring).

    Returns:
        ``(setter, report)``: ``setter`` is a setter tuple for :func:`fxquant.prepare`
        (``MixedPrecisionQconfigSetter`` then the calibration template) that reproduces the
        chosen configuration; ``report`` is a :class:`SearchReport`.
    """
    if objective not in ("size", "bitops"):
        raise ConfigError(f"objective must be 'size' or 'bitops', got {objective!r}")
    cands = sorted({c.bits: c for c in candidates}.values(), key=lambda c: c.bits)
    if not cands:
        raise ConfigError("candidates must not be empty")
    calib = list(calib_data)
    example = as_inputs(example_inputs)
    template = TemplateQconfigSetter(TemplateMode.CALIBRATION)
    probe = prepare(model, example_inputs, template, backend=backend)
    ops = sorted({g.op_name for g in op_groups(probe, quantizer_entries(probe))},
                 key=list(probe_order(probe)).index)
    if not ops:
        raise ConfigError("search_mixed_precision: the model has no quantizable op")
    was_training = model.training
    model.eval()
    cache: dict[tuple[int, ...], SearchPoint] = {}
    bar = tqdm(desc="mixed-precision search", unit="config", disable=not progress, leave=False)

    def setter_for(bits: dict[str, int]):
        by_bits = {c.bits: c for c in cands}
        return (MixedPrecisionQconfigSetter(tuple((o, by_bits[bits[o]]) for o in ops)), template)

    def evaluate(bits: dict[str, int], label: str | None = None) -> SearchPoint:
        key = tuple(bits[o] for o in ops)
        if key in cache:
            return cache[key]
        torch.manual_seed(seed)
        q = prepare(model, example_inputs, setter_for(bits), backend=backend)
        calibrate(q, calib, progress=False)
        q.eval()
        with torch.no_grad():
            acc = float(eval_fn(q))
        cost = quantized_size_bytes(q) if objective == "size" else _bitops(q, example)
        if label is None:
            label = ", ".join(f"{o}:{bits[o]}" for o in ops)
        p = SearchPoint(label, tuple((o, bits[o]) for o in ops), acc, float(cost))
        cache[key] = p
        bar.update(1)
        bar.set_postfix(acc=f"{acc:.4g}", cost=f"{cost:.4g}")
        return p

    try:
        with torch.no_grad():
            float_acc = float(eval_fn(model))
        target = float_acc - float(allowed_drop)
        for c in cands:  # 1. uniform configurations
            evaluate({o: c.bits for o in ops}, f"all int{c.bits}")
        top = cands[-1].bits
        start = {o: top for o in ops}
        base = evaluate(start)
        # 2. sensitivity: one op lowered at a time
        sens: dict[tuple[str, int], float] = {}
        for o in ops:
            for c in cands[:-1]:
                p = evaluate({**start, o: c.bits})
                sens[(o, c.bits)] = max(0.0, base.accuracy - p.accuracy)
        # 3. greedy descent
        current, frozen = dict(start), set()
        cur_point = base
        while base.accuracy >= target:
            moves = []
            for o in ops:
                if o in frozen:
                    continue
                lower = [c.bits for c in cands if c.bits < current[o]]
                if not lower:
                    continue
                nb = lower[-1]
                trial = {**current, o: nb}
                saving = cur_point.cost - _estimate_cost(cache, trial, ops, cur_point)
                moves.append((-(max(saving, 0.0) / (sens[(o, nb)] + 1e-3)), ops.index(o), o, nb))
            if not moves:
                break
            moves.sort()
            _, _, o, nb = moves[0]
            p = evaluate({**current, o: nb})
            if p.accuracy >= target:
                current, cur_point = {**current, o: nb}, p
            else:
                frozen.add(o)
    finally:
        bar.close()
        model.train(was_training)
    points = list(cache.values())
    front = []
    for p in points:
        dominated = any((q.cost <= p.cost and q.accuracy >= p.accuracy)
                        and (q.cost < p.cost or q.accuracy > p.accuracy) for q in points)
        front.append(not dominated)
    points = [SearchPoint(p.label, p.bits, p.accuracy, p.cost, f)
              for p, f in zip(points, front, strict=True)]
    ok = [p for p in points if p.accuracy >= target]
    met = bool(ok)
    chosen = min(ok, key=lambda p: (p.cost, -p.accuracy)) if ok else max(
        points, key=lambda p: (p.accuracy, -p.cost))
    report = SearchReport(chosen, tuple(points), float_acc, target, float(allowed_drop),
                          objective, tuple(c.bits for c in cands), met, sens)
    return setter_for(dict(chosen.bits)), report


def _estimate_cost(cache: dict, trial: dict[str, int], ops: list[str],
                   cur: SearchPoint) -> float:
    """Cost of ``trial`` (``cur`` with one op lowered): exact if evaluated, else ``cur``'s cost
    minus the saving the same change of that op makes from all-highest (costs are additive
    over ops to first order)."""
    key = tuple(trial[o] for o in ops)
    if key in cache:
        return cache[key].cost
    cur_bits = dict(cur.bits)
    top = max(cur_bits.values())
    changed = [o for o in ops if trial[o] != cur_bits[o]]
    before = tuple(cur_bits[o] if o in changed else top for o in ops)
    after = tuple(trial[o] if o in changed else top for o in ops)
    if before in cache and after in cache:
        return cur.cost - (cache[before].cost - cache[after].cost)
    return cur.cost


def probe_order(qmodel: nn.Module) -> list[str]:
    return list(get_report(qmodel).ops)
