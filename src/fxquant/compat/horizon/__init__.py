"""``horizon_plugin_pytorch`` on fxquant: change ``horizon_plugin_pytorch`` to
``fxquant.compat.horizon`` in the imports.

>>> import torch
>>> from fxquant.compat.horizon.march import March, set_march
>>> from fxquant.compat.horizon.quantization import (FakeQuantState, prepare,
...                                                  set_fake_quantize)
>>> from fxquant.compat.horizon.quantization.qconfig_template import (
...     default_calibration_qconfig_setter)
>>> set_march(March.NASH_E)
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
>>> x = torch.randn(2, 3, 8, 8)
>>> calib = prepare(model, x, qconfig_setter=(default_calibration_qconfig_setter,))
>>> _ = set_fake_quantize(calib, FakeQuantState.CALIBRATION)
>>> _ = calib(x)
>>> _ = set_fake_quantize(calib, FakeQuantState.VALIDATION)
>>> calib(x).shape
torch.Size([2, 4, 6, 6])

Modules: :mod:`.march` (``March``, ``set_march``), :mod:`.dtype` (``qint8``, ``qint16``),
:mod:`.quantization` (``prepare``, ``get_qconfig``, observers, ``FakeQuantState``,
``set_fake_quantize``, ``QuantStub``), :mod:`.quantization.qconfig_template`,
:mod:`.nn.quantized` (``FloatFunctional``), :mod:`.utils.quant_profiler` (sensitivity).
"""

from . import dtype, march, quantization
from .dtype import qint8, qint16
from .march import March, get_march, set_march

__all__ = ["dtype", "march", "quantization", "qint8", "qint16", "March", "get_march",
           "set_march"]
