"""``aimet_torch.cross_layer_equalization``: BN fold + cross-layer equalization + high-bias
absorption, in place (:func:`fxquant.equalize`'s result written back into the model)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...algorithms import equalize
from .batch_norm_fold import fold_all_batch_norms

__all__ = ["equalize_model"]


def equalize_model(model: nn.Module, input_shapes: Any = None, dummy_input: Any = None,
                   **kwargs: Any) -> None:
    """Fold BatchNorms, equalize conv / linear pairs and absorb high biases (in place)."""
    fold_all_batch_norms(model)
    equalized = equalize(model, progress=False)
    model.load_state_dict(equalized.state_dict())
