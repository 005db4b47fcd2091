"""TinyNeuralNetwork's quantizers on fxquant: change ``tinynn`` to ``fxquant.compat.tinynn`` in
the imports.

>>> import torch
>>> from fxquant.compat.tinynn.graph.quantization.quantizer import PostQuantizer
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
>>> x = torch.randn(2, 3, 8, 8)
>>> quantizer = PostQuantizer(model, x, work_dir=None, config={"backend": "qnnpack"})
>>> ptq_model = quantizer.quantize()
>>> with torch.no_grad():
...     _ = ptq_model(x)                              # calibration
>>> int8 = quantizer.convert(ptq_model)               # fxquant.convert on qnnpack
>>> int8(x).shape
torch.Size([2, 4, 6, 6])

Modules: :mod:`.graph.quantization.quantizer` (``QATQuantizer``, ``PostQuantizer``);
:mod:`.converter` (``TFLiteConverter``: TFLite files through :func:`fxquant.export_tflite`).
"""

from .converter import TFLiteConverter
from .graph.quantization.quantizer import PostQuantizer, QATQuantizer

__all__ = ["QATQuantizer", "PostQuantizer", "TFLiteConverter"]
