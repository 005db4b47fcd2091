"""The one input / output convention (fxquant.modelio)."""

import dataclasses
import doctest

import pytest
import torch

from fxquant import modelio
from fxquant.errors import DataError
from fxquant.modelio import ModelInputs, as_batches, as_inputs, flatten_outputs


def test_doctests():
    assert doctest.testmod(modelio, raise_on_error=True).attempted > 0


def test_batch_forms():
    x, y = torch.zeros(2, 3), torch.ones(2)
    assert as_inputs(x).args == (x,)
    assert as_inputs((x, y), num_inputs=1).args == (x,)
    assert as_inputs([x, y]).args == (x, y)
    assert as_inputs({"input_ids": x}).kwargs == {"input_ids": x}
    explicit = ModelInputs((x,), {"mask": y})
    assert as_inputs(explicit) is explicit
    assert explicit.tensors() == [x, y]


@pytest.mark.parametrize("bad", [None, "abc", b"x"])
def test_bad_batch_is_a_data_error(bad):
    with pytest.raises(DataError, match="batch"):
        as_inputs(bad)


def test_as_batches():
    x = torch.zeros(1)
    assert as_batches(x) == [x]
    assert as_batches((x, x)) == [(x, x)]
    assert as_batches([x, x]) == [x, x]
    with pytest.raises(DataError, match="iterable of batches"):
        as_batches(5)


@dataclasses.dataclass
class _Out:
    logits: torch.Tensor
    hidden: tuple
    loss: torch.Tensor | None = None


def test_flatten_outputs_names_are_stable():
    t = torch.zeros(1)
    assert [n for n, _ in flatten_outputs(t)] == ["output"]
    assert [n for n, _ in flatten_outputs((t, [t, t]))] == ["output_0", "output_1_0", "output_1_1"]
    assert [n for n, _ in flatten_outputs({"a": t, "b": {"c": t}})] == ["a", "b_c"]
    assert [n for n, _ in flatten_outputs(_Out(t, (t, t)))] == ["logits", "hidden_0", "hidden_1"]
    with pytest.raises(DataError, match="output"):
        flatten_outputs(object())
