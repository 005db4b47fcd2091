"""torch.ao's quantization API (eager and FX) on fxquant: change the import, keep the script.

>>> import torch
>>> from torch import nn
>>> import fxquant.compat.torch_ao as tq
>>> class M(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
...         self.conv, self.relu = nn.Conv2d(1, 1, 1), nn.ReLU()
...     def forward(self, x):
...         return self.dequant(self.relu(self.conv(self.quant(x))))
>>> m = M().eval()
>>> m.qconfig = tq.get_default_qconfig("x86")
>>> m = tq.fuse_modules(m, [["conv", "relu"]])
>>> prepared = tq.prepare(m)
>>> _ = prepared(torch.randn(4, 1, 4, 4))          # calibration (the first call captures)
>>> int8 = tq.convert(prepared)                      # fxquant.convert: torch int8 kernels
>>> int8(torch.randn(4, 1, 4, 4)).shape
torch.Size([4, 1, 4, 4])

What differs from torch.ao: eager ``prepare`` captures the graph on the model's first call
(fxquant needs one example batch); functional ops (``x + y``, ``torch.cat``) are quantized even
without ``FloatFunctional``; symmetric grids are ``amax / 127``; ``HistogramObserver`` is
fxquant's (MSE search on an exact histogram).  ``convert`` returns an
:class:`fxquant.ConvertedModel`.  Nothing here imports ``torch.ao``.
"""

from ...nn import DeQuantStub, FloatFunctional, QuantStub
from .eager import (
    QuantWrapper,
    convert,
    prepare,
    prepare_qat,
    prepared_module,
    quantize,
    quantize_dynamic,
    quantize_qat,
)
from .fake_quantize import (
    FakeQuantize,
    FusedMovingAvgObsFakeQuantize,
    default_fake_quant,
    default_fused_act_fake_quant,
    default_fused_per_channel_wt_fake_quant,
    default_fused_wt_fake_quant,
    default_per_channel_weight_fake_quant,
    default_weight_fake_quant,
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
    enable_observer,
    freeze_bn_stats,
)
from .fuse import FusedModule, fuse_modules, fuse_modules_qat
from .observer import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    NoopObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
    default_histogram_observer,
    default_observer,
    default_per_channel_weight_observer,
    default_placeholder_observer,
    default_weight_observer,
)
from .qconfig import (
    QConfig,
    default_per_channel_qconfig,
    default_qat_qconfig,
    default_qconfig,
    get_default_qat_qconfig,
    get_default_qconfig,
    to_fxquant_qconfig,
)
from .qconfig_mapping import (
    QConfigMapping,
    get_default_qat_qconfig_mapping,
    get_default_qconfig_mapping,
)

__all__ = [
    "QuantStub",
    "DeQuantStub",
    "FloatFunctional",
    "QuantWrapper",
    "fuse_modules",
    "fuse_modules_qat",
    "FusedModule",
    "QConfig",
    "default_qconfig",
    "default_qat_qconfig",
    "default_per_channel_qconfig",
    "get_default_qconfig",
    "get_default_qat_qconfig",
    "to_fxquant_qconfig",
    "QConfigMapping",
    "get_default_qconfig_mapping",
    "get_default_qat_qconfig_mapping",
    "FakeQuantize",
    "FusedMovingAvgObsFakeQuantize",
    "default_fake_quant",
    "default_weight_fake_quant",
    "default_per_channel_weight_fake_quant",
    "default_fused_act_fake_quant",
    "default_fused_wt_fake_quant",
    "default_fused_per_channel_wt_fake_quant",
    "enable_observer",
    "disable_observer",
    "enable_fake_quant",
    "disable_fake_quant",
    "freeze_bn_stats",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "HistogramObserver",
    "PlaceholderObserver",
    "NoopObserver",
    "default_observer",
    "default_weight_observer",
    "default_per_channel_weight_observer",
    "default_histogram_observer",
    "default_placeholder_observer",
    "prepare",
    "prepare_qat",
    "convert",
    "quantize",
    "quantize_qat",
    "quantize_dynamic",
    "prepared_module",
]
