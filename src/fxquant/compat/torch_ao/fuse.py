"""torch.ao's ``fuse_modules`` / ``fuse_modules_qat``.

fxquant fuses by itself at prepare time (conv / linear + BatchNorm are folded, fold-aware in
QAT; no quantizer between an op and the relu that follows it), so fusing is only needed to keep
torch.ao scripts and checkpoints working: each group becomes one :class:`FusedModule` (an
``nn.Sequential``, so its state-dict keys are torch.ao's ``conv.0.weight`` ...) at the first
name and ``nn.Identity`` at the others.

* ``fuse_modules`` (eval): conv / linear + BatchNorm are folded into the conv's weight and bias
  now, as torch.ao does (``FusedModule(conv, relu)``).
* ``fuse_modules_qat`` (training): the modules are kept (``FusedModule(conv, bn, relu)``);
  :func:`fxquant.prepare` folds the BatchNorm fold-aware.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ...nn import fold_bn_weights

__all__ = ["FusedModule", "fuse_modules", "fuse_modules_qat", "fuse_known_modules"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ACT = (nn.ReLU, nn.ReLU6)


class FusedModule(nn.Sequential):
    """A fused group (e.g. conv + relu), run in order; fxquant quantizes only its output.
    ``weight`` / ``bias`` are the first module's, as on torch.ao's fused modules."""

    @property
    def weight(self) -> torch.Tensor:
        return self[0].weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self[0].bias


def _fold(layer: nn.Module, bn: nn.Module) -> nn.Module:
    fused = copy.deepcopy(layer)
    with torch.no_grad():
        w, b = fold_bn_weights(layer.weight, layer.bias, bn.running_mean, bn.running_var,
                               bn.eps, bn.weight, bn.bias)
        fused.weight = nn.Parameter(w)
        fused.bias = nn.Parameter(b)
    return fused


def fuse_known_modules(mods: Sequence[nn.Module], is_qat: bool = False,
                       additional_fuser_method_mapping: Any = None) -> list[nn.Module]:
    """Fuse one group: ``[fused, Identity, ...]`` (torch.ao's ``fuser_func`` contract)."""
    mods = list(mods)
    kinds = [
        "conv" if isinstance(m, _CONV) else "linear" if isinstance(m, nn.Linear) else
        "bn" if isinstance(m, _BN) else "act" if isinstance(m, _ACT) else type(m).__name__
        for m in mods
    ]
    known = (["conv", "bn"], ["conv", "bn", "act"], ["conv", "act"], ["linear", "act"],
             ["bn", "act"], ["linear", "bn"])
    if kinds not in [list(k) for k in known]:
        raise ConfigError(
            f"fuse_modules: cannot fuse {kinds}; fusable groups are conv+bn(+relu), conv+relu, "
            "linear+relu, linear+bn, bn+relu (fxquant also fuses by itself at prepare time: "
            "leaving modules unfused is fine)"
        )
    if kinds[:2] in (["conv", "bn"], ["linear", "bn"]) and not is_qat:
        if mods[0].training or mods[1].training:
            raise ConfigError(
                "fuse_modules folds BatchNorm into the conv and needs model.eval(); for QAT "
                "call fuse_modules_qat on the model in training mode"
            )
        mods = [_fold(mods[0], mods[1]), *mods[2:]]
    fused = FusedModule(*mods)
    return [fused] + [nn.Identity() for _ in range(len(kinds) - 1)]


def _fuse(model: nn.Module, modules_to_fuse: Sequence[Any], inplace: bool, is_qat: bool,
          fuser_func: Any) -> nn.Module:
    if not inplace:
        model = copy.deepcopy(model)
    groups = list(modules_to_fuse)
    if groups and isinstance(groups[0], str):
        groups = [groups]
    for group in groups:
        try:
            mods = [model.get_submodule(name) for name in group]
        except AttributeError as err:
            raise ConfigError(f"fuse_modules: {err}; names are module paths such as "
                              "'layer1.0.conv1'") from None
        if fuser_func is None:
            new = fuse_known_modules(mods, is_qat)
        else:
            new = fuser_func(mods, is_qat)
        for name, mod in zip(group, new, strict=True):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, mod)
    return model


def fuse_modules(model: nn.Module, modules_to_fuse: Sequence[Any], inplace: bool = False,
                 fuser_func: Any = None, fuse_custom_config_dict: Any = None) -> nn.Module:
    """Fuse groups of module names, e.g. ``[["conv1", "bn1", "relu1"], ["fc", "relu2"]]``
    (model in eval mode; BatchNorm is folded now)."""
    return _fuse(model, modules_to_fuse, inplace, False, fuser_func)


def fuse_modules_qat(model: nn.Module, modules_to_fuse: Sequence[Any], inplace: bool = False,
                     fuser_func: Any = None, fuse_custom_config_dict: Any = None) -> nn.Module:
    """Fuse for QAT (model in training mode): BatchNorm stays and is folded fold-aware by
    :func:`fxquant.prepare`."""
    return _fuse(model, modules_to_fuse, inplace, True, fuser_func)
