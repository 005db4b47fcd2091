"""``pytorch_quantization.nn.modules.quant_rnn``."""

from ..layers import QuantLSTM, QuantLSTMCell

__all__ = ["QuantLSTM", "QuantLSTMCell"]
