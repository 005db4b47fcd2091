"""Fake quantization modules and the state machine that drives them."""

from .control import fake_quantize_state, quantizer_states, set_fake_quantize
from .fake_quantize import FakeQuantize, LearnableFakeQuantize, QuantizerError
from .state import FakeQuantState

__all__ = [
    "FakeQuantize",
    "LearnableFakeQuantize",
    "QuantizerError",
    "FakeQuantState",
    "set_fake_quantize",
    "fake_quantize_state",
    "quantizer_states",
]
