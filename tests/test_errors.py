"""The FxquantError hierarchy: bounded messages, built-in bases, the optional-dependency check."""

import pytest

import fxquant
from fxquant import errors
from fxquant.errors import MAX_MESSAGE, FxquantError, MissingDependencyError, bounded, require


def test_every_public_error_is_an_fxquant_error():
    for name in ("ExportError", "QuantizerError", "ObserverError", "ConvertError",
                 "UnknownOpNameError"):
        assert issubclass(getattr(fxquant, name), FxquantError), name


def test_messages_are_bounded():
    msg = str(errors.UnknownOpNameError("no op named " + "x" * 10**6))
    assert len(msg) <= MAX_MESSAGE and msg.startswith("no op named")
    assert len(bounded("y" * 10**6, 40)) < 80


def test_require_names_the_extra():
    with pytest.raises(MissingDependencyError, match=r"pip install 'fxquant\[onnx\]'"):
        require("surely_not_a_module_fxq", "onnx", "export_onnx")
    assert require("json", "x", "y").dumps([]) == "[]"
