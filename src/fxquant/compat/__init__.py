"""Familiar APIs: keep a script written for another quantization tool, change its imports.

Each subpackage mirrors one tool's import layout and is a thin layer over fxquant's public API
(``prepare``, ``calibrate``, ``set_fake_quantize``, observers, ``export_onnx``,
``export_encodings``, ``convert``, ``adaround``, ``AutoQuant`` ...):

* :mod:`fxquant.compat.torch_ao` -- torch.ao's quantization API (eager and FX);
* :mod:`fxquant.compat.horizon` -- ``horizon_plugin_pytorch``;
* :mod:`fxquant.compat.aimet` -- ``aimet_torch`` (QuantSim, AdaRound, AutoQuant, BN fold, CLE);
* :mod:`fxquant.compat.pytorch_quantization` -- NVIDIA's ``pytorch_quantization``;
* :mod:`fxquant.compat.modelopt` -- NVIDIA ModelOpt's ``modelopt.torch.quantization``;
* :mod:`fxquant.compat.tinynn` -- TinyNeuralNetwork's quantizers.

None of them imports ``torch.ao``; README.md's "Coming from ..." sections say what differs.
Importing this package imports none of the subpackages.
"""
