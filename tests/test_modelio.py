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


def test_detached_copy_is_independent_of_the_callers_tensors():
    x = torch.ones(2, 3, requires_grad=True)
    inputs = ModelInputs((x, [x * 2], None), {"mask": {"m": torch.zeros(2)}, "n": 3})
    copy = inputs.detached_copy()
    with torch.no_grad():
        x.add_(1.0)
    assert torch.equal(copy.args[0], torch.ones(2, 3)) and not copy.args[0].requires_grad
    assert torch.equal(copy.args[1][0], torch.full((2, 3), 2.0)) and copy.args[2] is None
    assert copy.kwargs["n"] == 3 and torch.equal(copy.kwargs["mask"]["m"], torch.zeros(2))


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


# -- every consumer reads batches the same way ------------------------------------------------
class _Tagger(torch.nn.Module):
    """Hugging Face style: keyword inputs, a ModelOutput-like dict out."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(16, 8)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, input_ids, scale=None):
        h = self.emb(input_ids)
        return {"logits": self.fc(h if scale is None else h * scale)}


def _kw_batches(n: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 16, (4, 5), generator=g),
             "scale": torch.rand(4, 5, 1, generator=g) + 0.5} for _ in range(n)]


def test_dict_batches_are_keyword_inputs_everywhere():
    import fxquant

    data = _kw_batches()
    q = fxquant.prepare(_Tagger().eval(), data[0], fxquant.default_calibration_qconfig_setter)
    fxquant.calibrate(q, data, progress=False)
    assert all(r.state == "VALIDATION" for r in fxquant.summary(q).quantizers)
    fxquant.bias_correction(q, data, progress=False)
    table = fxquant.compare(None, q, data)
    assert table.outputs and table.select("sim", "cumulative")
    sens = fxquant.sensitivity(q, data, progress=False)
    assert {r.op_name for r in sens.rows} >= {"emb", "fc"}
    with torch.no_grad():
        out = q(**data[0])["logits"]
    assert out.shape == (4, 5, 3)


def test_labels_after_the_inputs_are_dropped_everywhere():
    import fxquant

    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(2)]  # (x, y)
    q = fxquant.prepare(model, data[0][0], fxquant.default_calibration_qconfig_setter)
    fxquant.calibrate(q, data, progress=False)
    fxquant.bias_correction(q, data, progress=False)
    fxquant.adaround(q, data, num_iterations=2, progress=False)
    assert fxquant.compare(None, q, data).outputs[0].numel == 2 * 8 * 3
