"""Folding BatchNorm into the preceding conv / linear layer of a float (or prepared) model.

``bn(layer(x)) == layer'(x)`` in eval mode, where ``layer'`` has the folded weight and bias
(:func:`fxquant.nn.fold_bn_weights`, the one implementation of the math) and the BatchNorm is
replaced by ``nn.Identity``.  Which layers fold:

* ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d`` and ``Linear`` (exact types) whose output is used
  only by a ``BatchNorm1d/2d/3d`` of the matching rank with running statistics and
  ``num_features`` equal to the layer's output channels, both modules called once;
* in a prepared model, every ``ConvBn1d/2d/3d`` becomes the plain ``QuantConvNd`` with the
  folded weight; its ``weight_fake_quant`` is kept (it already quantized the folded weight, so
  its scale stays valid).

``Linear -> BatchNorm1d`` assumes a 2-D ``[N, C]`` activation (the only layout in which
BatchNorm1d normalises the linear layer's output features).

Pairs are found on the ``torch.fx`` graph (see :mod:`fxquant.algorithms._chains`); where a
``forward`` cannot be traced, only adjacent children of an ``nn.Sequential`` are paired.  What
was folded is recorded in a :class:`BnFoldReport` (:func:`get_bn_fold_report`), which keeps each
BatchNorm's ``gamma`` / ``beta``: CLE's high-bias absorption needs them after the BN is gone.

Accuracy: per output element the folded layer computes ``sum_k (w_k sf) x_k + b'`` instead of
``(sum_k w_k x_k + b - mean) sf + beta``.  Rounding ``w_k sf`` costs at most half an ulp per
weight (relative ``2^-24``) and the float32 accumulations of both forms carry the usual
``O(sqrt(K)) 2^-24`` relative rounding of a length-``K`` dot product, so the two outputs agree
to a few times ``sqrt(K) 2^-24`` of the output scale: ``~1e-6`` for ``K`` in the thousands, well
inside the ``1e-5`` relative error the tests assert.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import Tensor, nn

from .. import nn as qnn
from ..errors import ConfigError
from . import _chains

__all__ = [
    "FOLDABLE_BN",
    "FoldedBN",
    "BnFoldReport",
    "fold_bn",
    "fold_layer_bn",
    "get_bn_fold_report",
]

FOLDABLE_BN: dict[type, type] = {
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
    nn.ConvTranspose1d: nn.BatchNorm1d,
    nn.ConvTranspose2d: nn.BatchNorm2d,
    nn.ConvTranspose3d: nn.BatchNorm3d,
    nn.Linear: nn.BatchNorm1d,
}
"""Float layer type -> the BatchNorm type that can fold into it (exact types)."""

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONV_BN_TO_QUANT: dict[type, type] = {
    qnn.ConvBn1d: qnn.QuantConv1d,
    qnn.ConvBn2d: qnn.QuantConv2d,
    qnn.ConvBn3d: qnn.QuantConv3d,
}
_REPORT_KEY = "fxquant_bn_fold"


@dataclass(frozen=True, eq=False)
class FoldedBN:
    """One BatchNorm folded into a layer.

    Attributes:
        layer: module path of the layer that now holds the folded weight and bias.
        bn: module path of the BatchNorm (now ``nn.Identity``; for a ``ConvBn`` module, its
            ``bn`` child, gone with it).
        gamma, beta: the BatchNorm's affine parameters (1 / 0 when ``affine=False``), detached
            copies: the layer's output is distributed as ``N(beta, gamma^2)`` per channel
            according to the BN statistics (what high-bias absorption uses).
        found_by: how the pair was found (fx graph, ``nn.Sequential`` order, ``ConvBn`` module).
    """

    layer: str
    bn: str
    gamma: Tensor
    beta: Tensor
    found_by: str


@dataclass
class BnFoldReport:
    """What :func:`fold_bn` folded and what it left alone (with the reason)."""

    folded: list[FoldedBN] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    """``(layer, bn, reason)`` for conv -> BN pairs that were not folded."""

    def stats(self, layer: str) -> FoldedBN | None:
        """The fold record of ``layer`` (the latest one), or None."""
        for rec in reversed(self.folded):
            if rec.layer == layer:
                return rec
        return None

    def pairs(self) -> list[tuple[str, str]]:
        """``(layer, bn)`` module paths of every folded pair."""
        return [(r.layer, r.bn) for r in self.folded]


# -- math --------------------------------------------------------------------------------------
def fold_layer_bn(layer: nn.Module, bn: nn.Module) -> tuple[Tensor, Tensor]:
    """Folded ``(weight, bias)`` of ``layer`` followed by ``bn`` (eval-mode statistics).

    ``layer`` is a conv, transposed conv or linear module, ``bn`` a BatchNorm with running
    statistics; the result is detached, in the layer weight's dtype.
    """
    with torch.no_grad():
        w, b = qnn.fold_bn_weights(
            layer.weight,
            layer.bias,
            bn.running_mean,
            bn.running_var,
            bn.eps,
            bn.weight,
            bn.bias,
            transpose=isinstance(layer, _TRANSPOSED),
            groups=getattr(layer, "groups", 1),
        )
    dtype = layer.weight.dtype
    return w.detach().to(dtype), b.detach().to(dtype)


def _affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    mean = bn.running_mean
    gamma = torch.ones_like(mean) if bn.weight is None else bn.weight
    beta = torch.zeros_like(mean) if bn.bias is None else bn.bias
    return gamma.detach().clone(), beta.detach().clone()


# -- plumbing ----------------------------------------------------------------------------------
def get_bn_fold_report(model: nn.Module) -> BnFoldReport:
    """The :class:`BnFoldReport` kept on a model returned by :func:`fold_bn` (empty if none)."""
    store = model.meta if isinstance(model, fx.GraphModule) else vars(model)
    rep = store.get(_REPORT_KEY)
    return rep if isinstance(rep, BnFoldReport) else BnFoldReport()


def _set_report(model: nn.Module, report: BnFoldReport) -> None:
    if isinstance(model, fx.GraphModule):
        model.meta[_REPORT_KEY] = report
    else:
        vars(model)[_REPORT_KEY] = report


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _is_foldable_layer(m: nn.Module) -> bool:
    return type(m) in FOLDABLE_BN


def _is_bn_for(layer: nn.Module, m: nn.Module) -> bool:
    return type(m) is FOLDABLE_BN[type(layer)]


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _skip_reason(layer: nn.Module, bn: nn.Module) -> str | None:
    if not bn.track_running_stats or bn.running_mean is None:
        return "BatchNorm has no running statistics (track_running_stats=False)"
    if bn.num_features != _out_channels(layer):
        return f"BatchNorm has {bn.num_features} features, the layer {_out_channels(layer)}"
    return None


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm that follows a conv / linear folded into it.

    Works on float models (before :func:`fxquant.prepare`) and on prepared models (``ConvBn``
    modules become ``QuantConvNd`` with the folded weight, keeping ``weight_fake_quant``).
    ``model`` is untouched; the copy keeps its train / eval mode.  In eval mode the copy's
    outputs equal the original's up to float rounding (see the module docstring).  The pairs
    folded (and skipped, with reasons) are in ``get_bn_fold_report(copy)``; calling
    ``fold_bn`` again appends to that report.

    >>> import torch
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    >>> folded = fold_bn(m)
    >>> type(folded[1]).__name__, get_bn_fold_report(folded).pairs()
    ('Identity', [('0', '1')])
    >>> x = torch.randn(2, 3, 8, 8)
    >>> bool(torch.allclose(folded(x), m(x), atol=1e-5))
    True
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"fold_bn: model must be a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model)
    old = get_bn_fold_report(model)
    report = BnFoldReport(list(old.folded), list(old.skipped))
    _fold_conv_bn_modules(model, report)
    scopes = _chains.trace_scopes(model)
    matches = _chains.find_pairs(model, scopes, _is_foldable_layer, _is_bn_for)
    for m in matches:
        layer, bn = model.get_submodule(m.first), model.get_submodule(m.second)
        reason = _skip_reason(layer, bn)
        if reason is not None:
            report.skipped.append((m.first, m.second, reason))
            continue
        w, b = fold_layer_bn(layer, bn)
        gamma, beta = _affine(bn)
        requires_grad = layer.weight.requires_grad
        layer.weight = nn.Parameter(w, requires_grad=requires_grad)
        layer.bias = nn.Parameter(b, requires_grad=requires_grad)
        _set_submodule(model, m.second, nn.Identity())
        report.folded.append(FoldedBN(m.first, m.second, gamma, beta, m.scope.kind.value))
    _set_report(model, report)
    return model


def _fold_conv_bn_modules(model: nn.Module, report: BnFoldReport) -> None:
    """Replace every ConvBn module by a QuantConv with the folded (eval) weight and bias."""
    for path, mod in list(model.named_modules()):
        quant_cls = _CONV_BN_TO_QUANT.get(type(mod))
        if quant_cls is None:
            if isinstance(mod, qnn.ConvBnNd):
                reason = f"{type(mod).__name__} subclasses a ConvBn module: left as is"
                report.skipped.append((path, _chains.join_path(path, "bn"), reason))
            continue
        gamma, beta = _affine(mod.bn)
        fq = mod.weight_fake_quant
        new = quant_cls.from_float(mod.to_float(), fq)
        new.train(mod.training)
        _set_submodule(model, path, new)
        report.folded.append(FoldedBN(path, _chains.join_path(path, "bn"), gamma, beta, "ConvBn"))
