"""``aimet_torch.adaround.adaround_weight``: AdaRound on :func:`fxquant.adaround`."""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .... import QConfig, adaround, calibrate, export_encodings, prepare
from ..common.defs import QuantScheme
from ..config import read_config

__all__ = ["AdaroundParameters", "Adaround"]


@dataclass
class AdaroundParameters:
    """AIMET's AdaRound settings (``default_num_iterations=None``: 10000, 15000 below 8 bits)."""

    data_loader: Iterable[Any]
    num_batches: int
    default_num_iterations: int | None = None
    default_reg_param: float = 0.01
    default_beta_range: tuple[float, float] = (20, 2)
    default_warm_start: float = 0.2
    forward_fn: Callable[..., Any] | None = None


class Adaround:
    """``Adaround.apply_adaround(...)`` (a class with one static method, as in AIMET)."""

    @staticmethod
    def apply_adaround(model: nn.Module, dummy_input: Any, params: AdaroundParameters,
                       path: str | os.PathLike, filename_prefix: str,
                       default_param_bw: int = 4, param_bw_override_list: Any = None,
                       ignore_quant_ops_list: Any = None,
                       default_quant_scheme: QuantScheme =
                       QuantScheme.post_training_tf_enhanced,
                       default_config_file: str | os.PathLike | None = None,
                       **kwargs: Any) -> nn.Module:
        """Learn the rounding of every conv / linear weight at ``default_param_bw`` bits.

        Weights are quantized as the quantsim config says (symmetry, per channel);
        activations stay float, as in AIMET.  Writes ``<path>/<filename_prefix>.encodings``
        (parameter encodings; load them with ``sim.set_and_freeze_param_encodings``) and
        returns a copy of ``model`` whose weights are the rounded ones.
        """
        cfg = read_config(default_config_file, default_quant_scheme, 8, default_param_bw)
        weight = cfg._weight  # the config's weight quantizer (symmetry, granularity)

        def setter(op: Any, ctx: Any) -> QConfig | None:
            if op.kind.value != "weighted" or not cfg.weight_quantized(op):
                return None
            return QConfig(weight=weight(op))

        qmodel = prepare(model, dummy_input, setter, backend=cfg.profile(), fold_bn=False)
        data = list(itertools.islice(iter(params.data_loader), params.num_batches))
        calibrate(qmodel, data, progress=False)
        adaround(qmodel, data, num_iterations=params.default_num_iterations,
                 reg_param=params.default_reg_param,
                 beta_range=tuple(params.default_beta_range),
                 warm_start=params.default_warm_start, progress=False)
        export_encodings(qmodel, os.path.join(os.fspath(path), filename_prefix + ".encodings"))
        out = copy.deepcopy(model)
        own = out.state_dict()
        rounded = {k: v for k, v in qmodel.state_dict().items()
                   if k in own and v.shape == own[k].shape}
        out.load_state_dict(rounded, strict=False)
        return out
