"""Fake quantization modules and the state machine that drives them."""

from .control import fake_quantize_state, quantizer_states, set_fake_quantize
from .fake_quantize import (
    SPEC_VERSION,
    FakeQuantize,
    LearnableFakeQuantize,
    QuantizerError,
    QuantizerSpec,
    check_spec_format,
)
from .state import FakeQuantState

__all__ = [
    "FakeQuantize",
    "LearnableFakeQuantize",
    "QuantizerError",
    "QuantizerSpec",
    "SPEC_VERSION",
    "check_spec_format",
    "FakeQuantState",
    "set_fake_quantize",
    "fake_quantize_state",
    "quantizer_states",
]
