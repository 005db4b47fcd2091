"""``aimet_torch.auto_quant.AutoQuant`` on :class:`fxquant.AutoQuant`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from ... import AutoQuant as _FxAutoQuant
from .adaround.adaround_weight import AdaroundParameters
from .common.defs import QuantScheme
from .config import read_config
from .quantsim import QuantizationSimModel

__all__ = ["AutoQuant"]


class AutoQuant:
    """AIMET's AutoQuant: BN fold, CLE, AdaRound ... until the accuracy budget is met.

    Args:
        model: the float model.
        dummy_input: one batch.
        data_loader: unlabelled calibration batches (``(x, y)`` tuples work too).
        eval_callback: ``eval_callback(model) -> float`` (higher is better).
        param_bw / output_bw: weight / activation bit widths.
        quant_scheme, config_file: as for ``QuantizationSimModel`` (the config decides
            symmetry and per-channel weights; AutoQuant itself tries every range scheme).
        results_dir: where the encodings go.
    """

    def __init__(self, model: nn.Module, dummy_input: Any, data_loader: Iterable[Any],
                 eval_callback: Callable[[nn.Module], float], param_bw: int = 8,
                 output_bw: int = 8,
                 quant_scheme: QuantScheme = QuantScheme.post_training_tf_enhanced,
                 rounding_mode: str = "nearest", config_file: str | os.PathLike | None = None,
                 results_dir: str | os.PathLike = "/tmp", cache_id: str | None = None,
                 strict_validation: bool = True, model_prepare_required: bool = True,
                 **kwargs: Any) -> None:
        self._cfg = read_config(config_file, quant_scheme, output_bw, param_bw)
        self._args = (model, dummy_input, data_loader, eval_callback)
        self._results_dir = results_dir
        self._adaround_iterations: int | None = None
        self.auto_quant: _FxAutoQuant | None = None

    def set_adaround_params(self, adaround_params: AdaroundParameters) -> None:
        """AdaRound settings (iterations per layer) of the AdaRound step."""
        self._adaround_iterations = adaround_params.default_num_iterations

    def run_inference(self) -> tuple[Any, float]:
        """``(sim, accuracy)`` of the plain quantized model (the config's scheme, no recovery
        technique): a :class:`~.quantsim.QuantizationSimModel` calibrated on the data."""
        model, dummy, data, evaluate = self._args
        cfg = self._cfg
        sim = QuantizationSimModel(model, dummy, cfg.quant_scheme,
                                   default_output_bw=cfg.output_bw,
                                   default_param_bw=cfg.param_bw, config_file=cfg.raw)

        def forward(m: nn.Module, batches: Any) -> None:
            for batch in batches:
                m(batch[0] if isinstance(batch, (tuple, list)) else batch)

        sim.compute_encodings(forward, data)
        return sim, float(evaluate(sim.model.eval()))

    def optimize(self, allowed_accuracy_drop: float = 0.0) -> tuple[nn.Module, float, str | None]:
        """``(model, accuracy, encodings path)`` of the best quantized model found."""
        profile = self._cfg.profile()
        model, dummy, data, evaluate = self._args
        self.auto_quant = _FxAutoQuant(
            model, dummy, data, evaluate, weight_dtype=profile.weight_dtype,
            act_dtype=profile.activation_dtype, backend=profile,
            adaround_iterations=self._adaround_iterations, results_dir=self._results_dir,
            progress=False,
        )
        return self.auto_quant.optimize(allowed_accuracy_drop)
