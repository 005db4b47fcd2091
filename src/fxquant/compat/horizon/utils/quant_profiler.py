"""``horizon_plugin_pytorch.utils.quant_profiler``: sensitivity in Horizon's row format.

``QuantAnalysis(baseline_model, analysis_model, analysis_model_type, out_dir)`` keeps the
models; ``auto_find_bad_case(data)`` records the batches to analyse; ``sensitivity()`` runs
:func:`fxquant.sensitivity` (one quantizer on at a time, L1 of the output against the float
baseline) and returns its rows ``[op_name, "activation"|"weight", op_type, metric_value, dtype,
"flops(x%)"]``, most sensitive first, saved with ``torch.save`` in ``out_dir`` as
``output_0_L1_sensitive_ops.pt`` -- what the ``sensitive_op_*`` template setters take.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .... import sensitivity as _fx_sensitivity
from ....errors import ConfigError

__all__ = ["QuantAnalysis"]


class QuantAnalysis:
    """Compare a quantized (fake-quant) model with its float baseline."""

    def __init__(self, baseline_model: nn.Module, analysis_model: nn.Module,
                 analysis_model_type: str = "fake_quant", device: Any = None,
                 out_dir: str | os.PathLike | None = None, **kwargs: Any) -> None:
        if analysis_model_type != "fake_quant":
            raise ConfigError("QuantAnalysis: only analysis_model_type='fake_quant' (a prepared "
                              "fxquant model) is supported")
        self.baseline_model = baseline_model
        self.analysis_model = analysis_model
        self.out_dir = None if out_dir is None else os.fspath(out_dir)
        self.data: list[Any] = []

    def auto_find_bad_case(self, data_generator: Iterable[Any], num_steps: int | None = None,
                           **kwargs: Any) -> None:
        """Record the batches the analysis runs on (up to ``num_steps``)."""
        self.data = []
        for i, batch in enumerate(data_generator):
            if num_steps is not None and i >= num_steps:
                break
            self.data.append(batch)

    def set_bad_case(self, data: Any) -> None:
        """Analyse exactly this batch."""
        self.data = [data]

    def sensitivity(self, device: Any = None, metric: str = "L1",
                    **kwargs: Any) -> list[list[Any]]:
        """The sensitivity table rows (most sensitive first); saved in ``out_dir``."""
        if not self.data:
            raise ConfigError("QuantAnalysis.sensitivity: call auto_find_bad_case(data) first")
        table = _fx_sensitivity(self.analysis_model, self.data, metric=metric,
                                float_model=self.baseline_model, progress=False)
        rows = table.as_lists()
        if self.out_dir is not None:
            os.makedirs(self.out_dir, exist_ok=True)
            torch.save(rows, os.path.join(self.out_dir, f"output_0_{metric}_sensitive_ops.pt"))
        return rows
