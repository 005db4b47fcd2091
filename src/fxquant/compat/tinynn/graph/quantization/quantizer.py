"""``tinynn.graph.quantization.quantizer``: ``QATQuantizer`` / ``PostQuantizer`` on
:func:`fxquant.prepare`.

Config keys (TinyNN's defaults): ``asymmetric`` (True: affine quint8 activations, else
symmetric qint8), ``per_tensor`` (True: per-tensor weights, else per channel; weights are
symmetric qint8), ``backend`` (``"qnnpack"``; ``"fbgemm"`` / ``"x86"`` use the 7-bit
activation range, ``"onnx"`` the ``onnxruntime`` profile, ``"tensorrt"`` the ``tensorrt``
profile), ``rewrite_graph`` (accepted: fxquant always captures the graph; False is refused, as
fxquant cannot quantize a model it does not capture).  Other keys are ignored with no effect.

``quantize()`` returns the prepared model (QAT: training with fake quantization; post:
observing, outputs float); ``convert(model)`` -- or
:func:`fxquant.compat.torch_ao.convert` -- gives the torch int8 model on ``backend``'s engine.
With a ``work_dir`` the prepared graph's code is written to ``<work_dir>/<Model>_q.py``, as
TinyNN writes its rewritten model.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..... import FakeQuantState, convert, set_fake_quantize
from ..... import prepare as _fx_prepare
from .....convert import ConvertedModel
from .....errors import ConfigError
from ....torch_ao import (
    FakeQuantize,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
    QConfig,
    to_fxquant_qconfig,
)
from ...converter.base import register_prepared

__all__ = ["QATQuantizer", "PostQuantizer", "BACKENDS"]

BACKENDS = {"qnnpack": "qnnpack", "fbgemm": "fbgemm", "x86": "x86", "onnx": "onnxruntime",
            "tensorrt": "tensorrt"}
"""TinyNN backend -> fxquant profile."""

_DEFAULTS = {"asymmetric": True, "per_tensor": True, "backend": "qnnpack",
             "rewrite_graph": True}


class QATQuantizer:
    """Quantization-aware training (TinyNN's constructor)."""

    _qat = True

    def __init__(self, model: nn.Module, dummy_input: Any, work_dir: str | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.model = model
        self.dummy_input = dummy_input
        self.work_dir = work_dir
        self.config = {**_DEFAULTS, **(config or {})}
        backend = self.config["backend"]
        if backend not in BACKENDS:
            raise ConfigError(f"{type(self).__name__}: backend {backend!r} is not one of "
                              f"{sorted(BACKENDS)}")
        if not self.config["rewrite_graph"]:
            raise ConfigError(f"{type(self).__name__}: rewrite_graph=False is not supported; "
                              "fxquant always captures the model's graph")
        self.backend = backend
        self.profile = BACKENDS[backend]

    def qconfig(self) -> QConfig:
        """The torch.ao-style qconfig the config keys describe."""
        asym, per_tensor = bool(self.config["asymmetric"]), bool(self.config["per_tensor"])
        reduce = self.backend in ("fbgemm", "x86")
        act = dict(dtype=torch.quint8 if asym else torch.qint8, reduce_range=reduce,
                   qscheme=torch.per_tensor_affine if asym else torch.per_tensor_symmetric)
        if per_tensor:
            w = dict(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
        else:
            w = dict(dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)
        if self._qat:
            w_obs = MovingAverageMinMaxObserver if per_tensor else \
                MovingAveragePerChannelMinMaxObserver
            return QConfig(activation=FakeQuantize.with_args(
                observer=MovingAverageMinMaxObserver, **act),
                weight=FakeQuantize.with_args(observer=w_obs, **w))
        w_obs = MinMaxObserver if per_tensor else PerChannelMinMaxObserver
        return QConfig(activation=HistogramObserver.with_args(**act),
                       weight=w_obs.with_args(**w))

    def quantize(self) -> nn.Module:
        """The prepared model: training with fake quantization (QAT) or observing (post)."""
        qmodel = _fx_prepare(self.model, self.dummy_input, to_fxquant_qconfig(self.qconfig()),
                             backend=self.profile)
        if self._qat:
            set_fake_quantize(qmodel, FakeQuantState.QAT)
            qmodel.train()
        else:
            set_fake_quantize(qmodel, FakeQuantState.CALIBRATION)
            qmodel.eval()
        if self.work_dir is not None:
            self._write_code(qmodel)
        return qmodel

    def _write_code(self, qmodel: nn.Module) -> None:
        os.makedirs(self.work_dir, exist_ok=True)
        path = os.path.join(self.work_dir, f"{type(self.model).__name__}_q.py")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"# fxquant prepared graph of {type(self.model).__name__} "
                    f"(backend {self.backend})\n{qmodel.code}")
        os.replace(tmp, path)

    def convert(self, q_model: nn.Module, backend: str | None = None) -> ConvertedModel:
        """A torch int8 model on the backend's engine (``qnnpack`` / ``fbgemm`` / ``x86``)."""
        engine = backend or self.backend
        if engine not in ("qnnpack", "fbgemm", "x86"):
            raise ConfigError(f"convert: backend {engine!r} has no torch int8 engine; export "
                              "with fxquant.export_onnx instead")
        converted = convert(q_model, backend=engine, keep_float=True)
        register_prepared(converted, q_model)  # TFLiteConverter(converted, ...) exports q_model
        return converted


class PostQuantizer(QATQuantizer):
    """Post-training quantization: run calibration data through ``quantize()``'s result."""

    _qat = False
