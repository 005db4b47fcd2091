"""``aimet_torch.batch_norm_fold``: fold BatchNorms into the preceding conv / linear, in place
(:func:`fxquant.fold_bn`'s result written back into the model)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...algorithms import fold_bn, get_bn_fold_report

__all__ = ["fold_all_batch_norms", "fold_all_batch_norms_to_weight"]


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def fold_all_batch_norms(model: nn.Module, input_shapes: Any = None, dummy_input: Any = None,
                         **kwargs: Any) -> list[tuple[nn.Module, nn.Module]]:
    """Fold every BatchNorm that follows a conv / linear into it (``model`` changes in place:
    the layer gets the folded weight and bias, the BatchNorm becomes ``nn.Identity``).

    Returns the ``(layer, batchnorm)`` module pairs folded."""
    folded = fold_bn(model)
    pairs = []
    for layer_path, bn_path in get_bn_fold_report(folded).pairs():
        pairs.append((model.get_submodule(layer_path), model.get_submodule(bn_path)))
        _set(model, layer_path, folded.get_submodule(layer_path))
        _set(model, bn_path, nn.Identity())
    return pairs


fold_all_batch_norms_to_weight = fold_all_batch_norms
