"""``pytorch_quantization.nn.modules.tensor_quantizer``."""

from ..tensor_quantizer import TensorQuantizer

__all__ = ["TensorQuantizer"]
