"""``aimet_torch.quantsim.QuantizationSimModel`` on fxquant.

``sim.model`` is an :func:`fxquant.prepare` model built from the quantsim config
(:mod:`.config`); ``compute_encodings`` is a calibration; ``sim.model`` trains like any model
(QAT: scales fixed by ``compute_encodings``, or learned with the range-learning schemes);
``export`` writes the float ONNX, its AIMET encodings and the quantsim config that matches
them (:func:`fxquant.export_quantsim_config`) -- what AIMET's own tools and Qualcomm's
converters load.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ... import (
    FakeQuantState,
    export_encodings,
    export_onnx,
    export_quantsim_config,
    load_encodings,
    prepare,
    set_fake_quantize,
    summary,
)
from ...errors import ConfigError
from ...observers import PercentileObserver
from .common.defs import QuantizationDataType, QuantScheme
from .config import read_config

__all__ = ["QuantizationSimModel"]


class QuantizationSimModel:
    """Simulated quantization of ``model`` (AIMET's constructor).

    Args:
        model: the float model (copied unless ``in_place``).
        dummy_input: one batch (a tensor or a tuple of inputs).
        quant_scheme: a :class:`QuantScheme` (default ``post_training_tf_enhanced``).
        rounding_mode: ``"nearest"`` (AdaRound is :class:`~.adaround.Adaround`).
        default_output_bw / default_param_bw: activation / weight bit widths.
        in_place: prepare ``model`` itself (its parameters are shared).
        config_file: an AIMET quantsim config JSON (``None``: AIMET's default config).
        default_data_type: ``QuantizationDataType.int``.
    """

    def __init__(self, model: nn.Module, dummy_input: Any,
                 quant_scheme: QuantScheme | str = QuantScheme.post_training_tf_enhanced,
                 rounding_mode: str = "nearest", default_output_bw: int = 8,
                 default_param_bw: int = 8, in_place: bool = False,
                 config_file: str | os.PathLike | None = None,
                 default_data_type: QuantizationDataType = QuantizationDataType.int,
                 **kwargs: Any) -> None:
        if rounding_mode != "nearest":
            raise ConfigError(f"QuantizationSimModel: rounding_mode {rounding_mode!r} is not "
                              "supported ('nearest'; use Adaround for learned rounding)")
        if default_data_type is not QuantizationDataType.int:
            raise ConfigError("QuantizationSimModel: only integer quantization "
                              "(QuantizationDataType.int) is supported")
        self.config = read_config(config_file, quant_scheme, default_output_bw,
                                  default_param_bw)
        self.dummy_input = dummy_input
        self.model = prepare(model, dummy_input, self.config, backend=self.config.profile(),
                             inplace=in_place)
        set_fake_quantize(self.model, FakeQuantState.CALIBRATION)

    @property
    def quant_scheme(self) -> QuantScheme:
        return self.config.quant_scheme

    def set_percentile_value(self, percentile_value: float) -> None:
        """Percentile of the ``post_training_percentile`` scheme (before compute_encodings)."""
        if self.config.quant_scheme is not QuantScheme.post_training_percentile:
            raise ConfigError("set_percentile_value needs quant_scheme=post_training_percentile")
        self.config.percentile = float(percentile_value)
        for m in self.model.modules():
            if isinstance(m, PercentileObserver):
                m.percentile = float(percentile_value)

    def compute_encodings(self, forward_pass_callback: Callable[..., Any],
                          forward_pass_callback_args: Any = None) -> None:
        """Run ``forward_pass_callback(sim.model, forward_pass_callback_args)`` with observers
        on (no gradients), then fix every scale (the model then simulates quantization)."""
        was_training = self.model.training
        set_fake_quantize(self.model, FakeQuantState.CALIBRATION)
        try:
            with torch.no_grad():
                forward_pass_callback(self.model, forward_pass_callback_args)
        finally:
            set_fake_quantize(self.model, FakeQuantState.VALIDATION)
            self.model.train(was_training)

    def export(self, path: str | os.PathLike, filename_prefix: str, dummy_input: Any = None,
               *args: Any, **kwargs: Any) -> None:
        """Write ``<prefix>.onnx`` (float, fxquant's tensor names), ``<prefix>.encodings``
        (AIMET 0.6.1 JSON) and ``<prefix>_quantsim_config.json`` into ``path``."""
        dummy = self.dummy_input if dummy_input is None else dummy_input
        os.makedirs(os.fspath(path), exist_ok=True)
        base = os.path.join(os.fspath(path), filename_prefix)
        onnx_path = base + ".onnx"
        was_training = self.model.training
        self.model.eval()
        try:
            export_onnx(self.model, dummy, onnx_path, quantize=False)
            export_encodings(self.model, base + ".encodings", onnx_path=onnx_path)
            export_quantsim_config(self.model, base + "_quantsim_config.json",
                                   onnx_path=onnx_path)
        finally:
            self.model.train(was_training)

    def load_encodings(self, encodings: str | os.PathLike, strict: bool = True,
                       partial: bool = True, requires_grad: bool | None = None,
                       allow_overwrite: bool | None = None) -> None:
        """Load an encodings file (its scales are fixed; ``strict``: names, bit widths and
        symmetry must match the model's quantizers)."""
        load_encodings(self.model, encodings, freeze=True, strict=strict)

    def set_and_freeze_param_encodings(self, encoding_path: str | os.PathLike) -> None:
        """Load (and freeze) the parameter encodings of e.g. :class:`~.adaround.Adaround`."""
        load_encodings(self.model, encoding_path, freeze=True)

    def __str__(self) -> str:
        return str(summary(self.model))
