"""Cross-layer equalization (CLE) and high-bias absorption (Nagel et al. 2019, "Data-Free
Quantization Through Weight Equalization and Bias Correction", sections 4.1-4.2).

**Equalization.**  For two layers ``y = W2 f(W1 x + b1) + b2`` with ``f`` positively homogeneous
per channel (``f(x / s) = f(x) / s`` for ``s > 0``: ReLU, LeakyReLU, identity, max / average
pooling, dropout), scaling output channel ``i`` of layer 1 by ``1 / s_i`` and input channel ``i``
of layer 2 by ``s_i`` leaves the function unchanged.  With per-channel weight ranges
``r1_i = max |W1[i, ...]|`` (over the weights producing channel ``i``) and ``r2_i`` (over the
weights of layer 2 reading channel ``i``), the paper's choice::

    s_i = (1 / r2_i) * sqrt(r1_i * r2_i)        W1[i] /= s_i,  b1[i] /= s_i,  W2[:, i] *= s_i

makes both ranges ``sqrt(r1_i r2_i)``, so one per-tensor scale suits every channel.  Channels with
a zero range keep ``s_i = 1``.  Chains of three or more layers (conv -> depthwise conv -> conv)
are equalized pair by pair, sweeping until no scale moves more than ``tolerance`` (relative).
Grouped and depthwise layers are handled through their channel layout (:func:`channel_ranges`).

**ReLU6** is not positively homogeneous (it clips at 6), so by default a chain through ReLU6 /
Hardtanh is *skipped* and reported (:attr:`Relu6Policy.SKIP`): the function is preserved.
:attr:`Relu6Policy.REPLACE` replaces ReLU6 on chains by ReLU first, as the paper does for
MobileNetV2; that changes the function wherever a pre-activation exceeds 6.  ``nn.ReLU6``
modules are swapped for ``nn.ReLU``; functional ``F.relu6`` / ``F.hardtanh(x, 0, 6)`` calls are
rewritten to ``F.relu`` in the traced graph of the module whose ``forward`` makes them, and that
module becomes an ``fx.GraphModule`` (same submodules, parameters and buffers).

**High-bias absorption.**  A folded BatchNorm says the layer-1 output of channel ``i`` is
``N(beta_i, gamma_i^2)``.  When ``c_i = max(0, beta_i - 3 |gamma_i|) > 0``, ReLU passes
``x - c_i`` unchanged for all but ~0.13 % of inputs (those more than 3 sigma below the mean), so
``b1 -= c`` and ``b2 += W2 c`` (summed over layer 2's kernel) shrink the activation range at
(almost) no change of the function.  It is applied only across a ReLU and only when
layer 2 has no zero padding (at a zero-padded border the padding would not carry ``c``, so the
bias shift would be wrong there); max pooling and identities may follow the ReLU (they commute
with subtracting a per-channel constant).  ``gamma`` / ``beta`` come from :func:`fold_bn`'s
report.

Supported layers: ``Conv1d/2d/3d`` followed by a conv of the same rank, ``Linear`` followed by
``Linear`` (elementwise ops only in between: a pooling op after a linear layer would pool over
its features).  Transposed convs and conv -> flatten -> linear are not equalized.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..fake_quant import FakeQuantize
from ..graph.ops import (
    RELU,
    RELU6,
    MacRule,
    OpTraits,
    clip_bounds,
    module_traits,
    node_traits,
)
from . import _chains
from .bn_fold import BnFoldReport, FoldedBN, _set_report, fold_bn, get_bn_fold_report

__all__ = [
    "Relu6Policy",
    "EqualizedPair",
    "CleReport",
    "equalize",
    "get_cle_report",
    "channel_ranges",
    "scale_channels",
    "equalization_scale",
    "high_bias_amount",
    "input_channel_sum",
]

_REPORT_KEY = "fxquant_cle"


class Relu6Policy(enum.Enum):
    """What :func:`equalize` does with a chain that crosses ReLU6 (or Hardtanh).

    SKIP: leave the chain alone and report it; the model's function is preserved.
    REPLACE: replace ReLU6 on the chain by ReLU, then equalize; changes outputs wherever a
        pre-activation exceeds 6.  ``nn.ReLU6`` modules become ``nn.ReLU`` (every call site of
        that module); functional ``F.relu6`` and ``F.hardtanh(x, 0, 6)`` calls become
        ``F.relu`` in the traced graph of the module making them, which turns into an
        ``fx.GraphModule``.  Other clipping (``nn.Hardtanh`` / ``F.hardtanh`` with other
        bounds) is still skipped.
    """

    SKIP = "skip"
    REPLACE = "replace"


@dataclass(frozen=True)
class EqualizedPair:
    """Two layers equalized against each other, and the ops between them."""

    first: str
    second: str
    through: tuple[str, ...]


@dataclass
class CleReport:
    """What :func:`equalize` did.

    Attributes:
        pairs: equalized layer pairs, in graph order.
        skipped: ``(first, second, reason)`` for chains left alone.
        replaced_relu6: ReLU6 replaced by ReLU: module paths of ``nn.ReLU6`` modules, and
            ``"<module path>:<node name>"`` for functional calls (``"<node name>"`` at the
            root).
        iterations: sweeps over all pairs; ``converged``: the last sweep moved no scale more
            than the tolerance.
        max_scale_change: ``max |log s|`` of the last sweep.
        absorbed: layer path -> number of channels whose bias was absorbed into the next layer.
        bn_fold: the report of the BN folding done first.
    """

    pairs: list[EqualizedPair] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    replaced_relu6: list[str] = field(default_factory=list)
    iterations: int = 0
    converged: bool = True
    max_scale_change: float = 0.0
    absorbed: dict[str, int] = field(default_factory=dict)
    bn_fold: BnFoldReport = field(default_factory=BnFoldReport)


# -- math --------------------------------------------------------------------------------------
def _axis1_layout(weight: Tensor, groups: int) -> tuple[int, int, int]:
    n0, n1 = weight.shape[0], weight.shape[1]
    if groups < 1 or n0 % groups:
        raise ValueError(f"groups={groups} does not divide weight axis 0 of size {n0}")
    return n0, n1, n0 // groups


def channel_ranges(weight: Tensor, axis: int, groups: int = 1) -> Tensor:
    """Per-channel ``max |w|`` of a conv / linear weight ``[n0, n1 / groups, *kernel]``.

    ``axis=0``: the ``n0`` channels of axis 0 (a conv's / linear's output channels).
    ``axis=1``: the ``groups * n1`` channels that axis 1 indexes per group (a conv's input
    channels: group ``g`` reads channels ``g * n1 ... (g + 1) * n1 - 1`` with the weight rows
    ``g * n0 / groups ...``).  For a depthwise conv both give one value per channel.

    >>> w = torch.tensor([[[1.0]], [[-3.0]], [[2.0]], [[0.5]]])   # [4, 1, 1]: 2 groups
    >>> channel_ranges(w, 0).tolist(), channel_ranges(w, 1, groups=2).tolist()
    ([1.0, 3.0, 2.0, 0.5], [3.0, 2.0])
    """
    if axis == 0:
        return weight.abs().reshape(weight.shape[0], -1).amax(1)
    if axis != 1:
        raise ValueError(f"axis must be 0 or 1, got {axis}")
    n0, n1, per_group = _axis1_layout(weight, groups)
    m = weight.abs().reshape(n0, n1, -1).amax(2)
    return m.reshape(groups, per_group, n1).amax(1).reshape(-1)


def scale_channels(weight: Tensor, scale: Tensor, axis: int, groups: int = 1) -> Tensor:
    """``weight`` with channel ``i`` (numbered as in :func:`channel_ranges`) times ``scale[i]``."""
    spatial = [1] * (weight.dim() - 2)
    if axis == 0:
        return weight * scale.reshape(-1, 1, *spatial)
    if axis != 1:
        raise ValueError(f"axis must be 0 or 1, got {axis}")
    n0, n1, per_group = _axis1_layout(weight, groups)
    full = scale.reshape(groups, 1, n1).expand(groups, per_group, n1).reshape(n0, n1, *spatial)
    return weight * full


def equalization_scale(r1: Tensor, r2: Tensor) -> Tensor:
    """``s = sqrt(r1 * r2) / r2`` per channel (1 where either range is 0 or not finite).

    After ``W1 /= s`` and ``W2 *= s`` both ranges equal ``sqrt(r1 * r2)``.

    >>> equalization_scale(torch.tensor([4.0, 1.0, 0.0]), torch.tensor([1.0, 4.0, 2.0])).tolist()
    [2.0, 0.5, 1.0]
    """
    ok = (r1 > 0) & (r2 > 0) & torch.isfinite(r1) & torch.isfinite(r2)
    safe1 = torch.where(ok, r1, torch.ones_like(r1))
    safe2 = torch.where(ok, r2, torch.ones_like(r2))
    return torch.where(ok, torch.sqrt(safe1 * safe2) / safe2, torch.ones_like(r1))


def high_bias_amount(beta: Tensor, gamma: Tensor, num_sigma: float = 3.0) -> Tensor:
    """``c = max(0, beta - num_sigma * |gamma|)``: what ReLU passes unchanged (w.h.p.)."""
    return (beta - num_sigma * gamma.abs()).clamp(min=0)


def input_channel_sum(weight: Tensor, values: Tensor, groups: int = 1) -> Tensor:
    """``sum_{i, k} W[o, i, k] * values[i]`` per output channel ``o``: a constant input
    ``values`` (per input channel) as seen by a conv / linear without zero padding."""
    return scale_channels(weight, values, 1, groups).reshape(weight.shape[0], -1).sum(1)


# -- plumbing ----------------------------------------------------------------------------------
def _traits(root: nn.Module, node: fx.Node, scope: _chains.Scope) -> OpTraits:
    if node.op == "call_module":
        return module_traits(root.get_submodule(scope.path(node)))
    return node_traits(node, root)


def _bounds(root: nn.Module, node: fx.Node, scope: _chains.Scope):
    path = scope.path(node) if node.op == "call_module" else None
    return clip_bounds(node, root, path)


def _is_layer(m: nn.Module) -> bool:
    return module_traits(m).macs in (MacRule.CONV, MacRule.LINEAR)


def _is_partner(first: nn.Module, second: nn.Module) -> bool:
    if type(first) is nn.Linear:
        return type(second) is nn.Linear and second.in_features == first.out_features
    return type(second) is type(first) and second.in_channels == first.out_channels


def _step(root: nn.Module):
    def step(node: fx.Node, scope: _chains.Scope) -> _chains.Step:
        traits = _traits(root, node, scope)
        if traits.homogeneous:
            return _chains.Step.PASS
        if traits.clip_like:  # relu6 / hardtanh: clips above, not homogeneous
            return _chains.Step.BLOCK
        return _chains.Step.STOP

    return step


def _is_relu(root: nn.Module, node: fx.Node, scope: _chains.Scope) -> bool:
    return _bounds(root, node, scope) == RELU


def _commutes_with_shift(root: nn.Module, node: fx.Node, scope: _chains.Scope) -> bool:
    return _traits(root, node, scope).shift_commutes


def _describe(node: fx.Node, scope: _chains.Scope) -> str:
    if node.op == "call_module":
        return scope.path(node)
    return getattr(node.target, "__name__", str(node.target))


def _zero_padded(conv: nn.Module) -> bool:
    if isinstance(conv, nn.Linear) or conv.padding_mode != "zeros":
        return False
    if conv.padding == "valid":
        return False
    if conv.padding == "same":
        return any(d * (k - 1) > 0 for d, k in zip(conv.dilation, conv.kernel_size, strict=True))
    return any(p > 0 for p in conv.padding)


def get_cle_report(model: nn.Module) -> CleReport | None:
    """The :class:`CleReport` kept on a model returned by :func:`equalize` (None otherwise)."""
    store = model.meta if isinstance(model, fx.GraphModule) else vars(model)
    rep = store.get(_REPORT_KEY)
    return rep if isinstance(rep, CleReport) else None


@dataclass
class _Layer:
    """A layer's parameters in float64 while the scales are searched."""

    module: nn.Module
    weight: Tensor
    bias: Tensor | None
    groups: int
    out_scale: Tensor  # product of the 1 / s applied to its output channels
    absorbed: Tensor | None = None  # bias moved into the next layer (high-bias absorption)

    @classmethod
    def of(cls, module: nn.Module) -> _Layer:
        w = module.weight.detach().to(torch.float64)
        b = None if module.bias is None else module.bias.detach().to(torch.float64)
        ones = torch.ones(w.shape[0], dtype=torch.float64, device=w.device)
        return cls(module, w, b, getattr(module, "groups", 1), ones)

    def write_back(self) -> None:
        mod = self.module
        grad = mod.weight.requires_grad
        mod.weight = nn.Parameter(self.weight.to(mod.weight.dtype), requires_grad=grad)
        if self.bias is not None:
            mod.bias = nn.Parameter(self.bias.to(mod.weight.dtype), requires_grad=grad)


def equalize(
    model: nn.Module,
    *,
    max_iterations: int = 100,
    tolerance: float = 1e-6,
    high_bias_absorption: bool = True,
    relu6: Relu6Policy = Relu6Policy.SKIP,
    num_sigma: float = 3.0,
    progress: bool = True,
) -> nn.Module:
    """Cross-layer equalization of a float model (a copy is returned; ``model`` is untouched).

    BatchNorms are folded first (:func:`fold_bn`), then every conv -> conv (same rank) and
    linear -> linear pair joined by per-channel positively homogeneous ops (ReLU, LeakyReLU,
    identity, pooling, dropout) is equalized, sweeping over all pairs until the largest
    relative scale change of a sweep is below ``tolerance`` or after ``max_iterations`` sweeps.
    Then, with ``high_bias_absorption``, biases are absorbed across ReLUs where the folded BN
    statistics allow (``num_sigma`` standard deviations; see the module docstring).

    The function is preserved up to float rounding (the scales are found in float64 and each
    weight is rounded to its dtype once), except with ``relu6=Relu6Policy.REPLACE`` and for the
    rare inputs more than ``num_sigma`` BN standard deviations below a channel's mean when a
    bias was absorbed.  ``get_cle_report(result)`` tells what was equalized, skipped, replaced
    and absorbed.  ``progress=False`` silences the progress bar.
    """
    if not isinstance(relu6, Relu6Policy):
        raise TypeError(f"equalize: relu6 must be a Relu6Policy, got {relu6!r}")
    if max_iterations < 1:
        raise ValueError(f"equalize: max_iterations must be >= 1, got {max_iterations}")
    _check_float(model)
    model = fold_bn(model)
    fold_report = get_bn_fold_report(model)
    report = CleReport(bn_fold=fold_report)
    scopes = _chains.trace_scopes(model)
    matches = _chains.find_pairs(model, scopes, _is_layer, _is_partner, _step(model))
    rewrites: dict[str, _chains.Scope] = {}
    accepted = [m for m in matches if _accept(model, m, relu6, report, rewrites)]
    layers: dict[str, _Layer] = {}
    for m in accepted:
        for path in (m.first, m.second):
            layers.setdefault(path, _Layer.of(model.get_submodule(path)))
        report.pairs.append(
            EqualizedPair(m.first, m.second, tuple(_describe(n, m.scope) for n in m.through))
        )
    if accepted:
        _iterate(accepted, layers, max_iterations, tolerance, progress, report)
    if high_bias_absorption:
        for m in accepted:
            _absorb(model, m, layers, fold_report, num_sigma, report)
    for layer in layers.values():
        layer.write_back()
    model = _apply_rewrites(model, rewrites)
    report.bn_fold = _updated_fold_report(fold_report, layers)
    _set_report(model, report.bn_fold)
    store = model.meta if isinstance(model, fx.GraphModule) else vars(model)
    store[_REPORT_KEY] = report
    return model


def _check_float(model: nn.Module) -> None:
    if any(isinstance(m, FakeQuantize) for m in model.modules()):
        raise TypeError(
            "equalize works on float models: call it before fxquant.prepare() (this model "
            "already holds fake quantizers)"
        )


def _elementwise(root: nn.Module, node: fx.Node, scope: _chains.Scope) -> bool:
    return _traits(root, node, scope).elementwise


def _relu6_like(root: nn.Module, node: fx.Node, scope: _chains.Scope) -> bool:
    """A ReLU6 that :attr:`Relu6Policy.REPLACE` can turn into a ReLU: an ``nn.ReLU6`` module or
    a functional op clipping to ``[0, 6]`` (``F.relu6``, ``F.hardtanh(x, 0, 6)``)."""
    if node.op == "call_module":
        return type(root.get_submodule(scope.path(node))) is nn.ReLU6
    return node.op == "call_function" and _bounds(root, node, scope) == RELU6


def _accept(model: nn.Module, m: _chains.PairMatch, relu6: Relu6Policy, report,
            rewrites: dict[str, _chains.Scope]) -> bool:
    if type(model.get_submodule(m.first)) is nn.Linear and not all(
        _elementwise(model, n, m.scope) for n in m.through
    ):
        return False  # pooling after a linear layer would pool over its features
    if not m.blocked:
        return True
    replaceable = [n for n in m.blocked if _relu6_like(model, n, m.scope)]
    if relu6 is Relu6Policy.REPLACE and len(replaceable) == len(m.blocked):
        for n in replaceable:
            if n.op == "call_module":
                path = m.scope.path(n)
                old = model.get_submodule(path)
                if type(old) is nn.ReLU6:  # not replaced yet by an earlier chain
                    parent, _, leaf = path.rpartition(".")
                    setattr(model.get_submodule(parent), leaf, nn.ReLU(inplace=old.inplace))
                    report.replaced_relu6.append(path)
            elif n.target is not F.relu:  # not replaced yet by an earlier chain
                inplace = n.target is F.hardtanh_ or bool(
                    n.kwargs.get("inplace", n.args[3] if len(n.args) > 3 else False)
                    if n.target is F.hardtanh
                    else n.kwargs.get("inplace", n.args[1] if len(n.args) > 1 else False)
                )
                n.target, n.args, n.kwargs = F.relu, (n.args[0],), {"inplace": inplace}
                rewrites[m.scope.prefix] = m.scope
                report.replaced_relu6.append(
                    f"{m.scope.prefix}:{n.name}" if m.scope.prefix else n.name
                )
        return True
    what = ", ".join(_describe(n, m.scope) for n in m.blocked)
    if relu6 is Relu6Policy.REPLACE:
        reason = f"clipping op {what} is not a ReLU6 (only ReLU6 / hardtanh(0, 6) is replaced)"
    else:
        reason = f"clipping op {what} is not positively homogeneous (relu6=Relu6Policy.SKIP)"
    report.skipped.append((m.first, m.second, reason))
    return False


def _apply_rewrites(model: nn.Module, rewrites: dict[str, _chains.Scope]) -> nn.Module:
    """Rebuild each scope whose graph was edited; returns the (possibly new) root."""
    for prefix, scope in sorted(rewrites.items(), key=lambda kv: -kv[0].count(".")):
        owner = model.get_submodule(prefix) if prefix else model
        if isinstance(owner, fx.GraphModule):
            owner.recompile()
            continue
        gm = fx.GraphModule(owner, scope.graph, class_name=type(owner).__name__)
        gm.train(owner.training)
        if not prefix:
            model = gm
        else:
            parent, _, leaf = prefix.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, gm)
    return model


def _iterate(matches, layers, max_iterations, tolerance, progress, report) -> None:
    bar = tqdm(range(max_iterations), desc="equalize", disable=not progress, leave=False)
    change = math.inf
    for it in bar:
        change = 0.0
        for m in matches:
            a, b = layers[m.first], layers[m.second]
            r1 = channel_ranges(a.weight, 0)
            r2 = channel_ranges(b.weight, 1, b.groups)
            s = equalization_scale(r1, r2)
            a.weight = scale_channels(a.weight, s.reciprocal(), 0)
            if a.bias is not None:
                a.bias = a.bias / s
            b.weight = scale_channels(b.weight, s, 1, b.groups)
            a.out_scale = a.out_scale / s
            change = max(change, float(s.log().abs().max()))
        report.iterations = it + 1
        if change <= tolerance:
            break
    bar.close()
    report.max_scale_change = change
    report.converged = change <= tolerance


def _absorb(model, m, layers, fold_report: BnFoldReport, num_sigma: float, report) -> None:
    stats = fold_report.stats(m.first)
    second = model.get_submodule(m.second)
    if stats is None or _zero_padded(second):
        return
    kinds = [
        (_is_relu(model, n, m.scope), _commutes_with_shift(model, n, m.scope)) for n in m.through
    ]
    if not kinds or not all(r or i for r, i in kinds) or not any(r for r, _ in kinds):
        return
    a, b = layers[m.first], layers[m.second]
    if a.bias is None:
        return
    beta = stats.beta.to(a.out_scale) * a.out_scale
    gamma = stats.gamma.to(a.out_scale) * a.out_scale
    c = high_bias_amount(beta, gamma, num_sigma)
    if not bool((c > 0).any()):
        return
    a.bias = a.bias - c
    shift = input_channel_sum(b.weight, c, b.groups)
    b.bias = shift if b.bias is None else b.bias + shift
    a.absorbed = c
    report.absorbed[m.first] = int((c > 0).sum())


def _updated_fold_report(old: BnFoldReport, layers: dict[str, _Layer]) -> BnFoldReport:
    """Fold records rewritten for the equalized layers: their outputs are now distributed as
    ``N(beta * out_scale - c, (gamma * out_scale)^2)``."""
    new = BnFoldReport(skipped=list(old.skipped))
    for rec in old.folded:
        layer = layers.get(rec.layer)
        if layer is None or old.stats(rec.layer) is not rec:
            new.folded.append(rec)
            continue
        scale = layer.out_scale.to(rec.gamma)
        beta = rec.beta * scale
        if layer.absorbed is not None:
            beta = beta - layer.absorbed.to(beta)
        new.folded.append(FoldedBN(rec.layer, rec.bn, rec.gamma * scale, beta, rec.found_by))
    return new
