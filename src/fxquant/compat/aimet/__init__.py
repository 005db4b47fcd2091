"""``aimet_torch`` on fxquant: change ``aimet_torch`` (and ``aimet_common``) to
``fxquant.compat.aimet`` (``fxquant.compat.aimet.common``) in the imports.

>>> import torch
>>> from fxquant.compat.aimet.quantsim import QuantizationSimModel
>>> from fxquant.compat.aimet.common.defs import QuantScheme
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
>>> x = torch.randn(2, 3, 8, 8)
>>> sim = QuantizationSimModel(model, dummy_input=x, quant_scheme=QuantScheme.post_training_tf,
...                            default_output_bw=8, default_param_bw=8)
>>> def forward_pass(m, args):
...     m(x)
>>> sim.compute_encodings(forward_pass, None)
>>> sim.model(x).shape
torch.Size([2, 4, 6, 6])

Modules: :mod:`.quantsim` (``QuantizationSimModel``), :mod:`.common.defs` (``QuantScheme``),
:mod:`.adaround.adaround_weight` (``Adaround``, ``AdaroundParameters``),
:mod:`.batch_norm_fold` (``fold_all_batch_norms``), :mod:`.cross_layer_equalization`
(``equalize_model``), :mod:`.auto_quant` (``AutoQuant``), :mod:`.quantsim_config`.
"""

from .adaround import Adaround, AdaroundParameters
from .auto_quant import AutoQuant
from .batch_norm_fold import fold_all_batch_norms
from .common.defs import QuantizationDataType, QuantScheme
from .cross_layer_equalization import equalize_model
from .quantsim import QuantizationSimModel

__all__ = [
    "QuantizationSimModel",
    "QuantScheme",
    "QuantizationDataType",
    "Adaround",
    "AdaroundParameters",
    "AutoQuant",
    "fold_all_batch_norms",
    "equalize_model",
]
