"""Real integer models on torch's quantized engines (x86 / fbgemm / qnnpack).

:func:`convert` turns a calibrated prepared model into a :class:`ConvertedModel` of torch
quantized modules and kernels; :meth:`ConvertedModel.report` (or :func:`summary`) lists how each
op runs.  This package is the only part of fxquant that imports ``torch.ao``.
"""

from .convert import ConvertedModel, ConvertError, convert, summary
from .lowering import ConvertedOp, Execution

__all__ = ["convert", "ConvertedModel", "ConvertError", "ConvertedOp", "Execution", "summary"]
