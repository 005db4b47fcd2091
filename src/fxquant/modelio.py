"""What a batch is and what a model returns: fxquant's one input / output convention.

Every function that feeds a model (calibrate, AdaRound, bias correction, compare, sensitivity,
verify, export, the demo and the CLI) reads its data through this module, so a batch means the
same thing everywhere.

**One batch** is what one call of the model takes:

* a tensor: the model's single positional input;
* a tuple or list: positional inputs; items beyond the model's number of inputs are dropped, so
  the ``(images, labels)`` batches of a labelled ``DataLoader`` work as they are;
* a ``dict`` (any ``Mapping``, e.g. a Hugging Face ``BatchEncoding``): keyword inputs;
* a :class:`ModelInputs`: explicit positional and keyword inputs.

**Data** (``calibrate``, ``compare``, ``sensitivity``, AdaRound ...) is an iterable of batches:
a list, a ``DataLoader``, a generator.  A single tensor, tuple, dict or :class:`ModelInputs`
given as data is one batch.

**Outputs** are flattened in a stable order with stable names by :func:`flatten_outputs`: a
tensor is ``output``; tuples / lists number their items (``output_0``, ``output_1_0``); dicts,
``ModelOutput``\\ s and dataclasses use their keys (``logits``, ``hidden_states_2``; ``None``
fields skipped).  Exported files use these names for their graph outputs.

>>> import torch
>>> inp = as_inputs((torch.zeros(2, 3), torch.tensor([1, 0])), num_inputs=1)
>>> len(inp.args), inp.kwargs
(1, {})
>>> [name for name, _ in flatten_outputs({"logits": torch.zeros(1), "aux": (torch.zeros(1),)})]
['logits', 'aux_0']
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, DataError, FxquantError, bounded

__all__ = [
    "ModelInputs",
    "as_inputs",
    "as_batches",
    "iter_inputs",
    "num_batches",
    "check_num_batches",
    "call_model",
    "call_batch",
    "flatten_outputs",
    "output_tensors",
    "model_device",
    "eval_mode",
]


@dataclass(frozen=True)
class ModelInputs:
    """Positional and keyword inputs of one model call."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> ModelInputs:
        """The same inputs with every tensor (also inside lists / dicts) moved to ``device``."""
        return ModelInputs(_to(self.args, device), _to(self.kwargs, device))

    def detached_copy(self) -> ModelInputs:
        """The same inputs with every tensor (also inside lists / dicts) replaced by a detached
        copy: later in-place changes of the caller's tensors do not reach it."""
        return ModelInputs(_copy(self.args), _copy(self.kwargs))

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the call, positional first, in order."""
        return [t for _, t in _flatten((self.args, self.kwargs), "")]

    def batch_size(self) -> int:
        """Size of dim 0 of the first tensor with at least one dim (1 when there is none)."""
        return next((t.shape[0] for t in self.tensors() if t.dim() > 0), 1)

    def describe(self) -> str:
        """``tensor[2, 3] float32, mask=tensor[2] bool``: for messages (bounded)."""
        def one(v: Any) -> str:
            if isinstance(v, torch.Tensor):
                return f"tensor{list(v.shape)} {str(v.dtype).replace('torch.', '')}"
            return type(v).__name__

        parts = [one(a) for a in self.args] + [f"{k}={one(v)}" for k, v in self.kwargs.items()]
        return bounded(", ".join(parts) or "no inputs", 160)


def _copy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, tuple):
        return tuple(_copy(o) for o in obj)
    if isinstance(obj, list):
        return [_copy(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    return obj


def _to(obj: Any, device: torch.device | str) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def as_inputs(batch: Any, num_inputs: int | None = None) -> ModelInputs:
    """One batch as :class:`ModelInputs` (see the module docstring for what a batch is).

    ``num_inputs``: how many positional inputs the model takes (extra tuple items, e.g. labels,
    are dropped); ``None`` keeps them all.
    """
    if isinstance(batch, ModelInputs):
        return batch
    if isinstance(batch, Mapping):
        bad = [k for k in batch if not isinstance(k, str)]
        if bad:
            raise DataError(
                f"a dict batch is passed as keyword inputs, so its keys must be strings; got "
                f"key {bounded(repr(bad[0]))}"
            )
        return ModelInputs((), dict(batch))
    if isinstance(batch, (tuple, list)):
        items = tuple(batch)
        if num_inputs is not None and len(items) > num_inputs:
            items = items[:num_inputs]
        return ModelInputs(items, {})
    if batch is None or isinstance(batch, (str, bytes)):
        raise DataError(
            f"a batch must be a tensor, a tuple / list of positional inputs or a dict of "
            f"keyword inputs; got {type(batch).__name__}"
        )
    return ModelInputs((batch,), {})


def as_batches(data: Any) -> Iterable[Any]:
    """``data`` as an iterable of batches: a single tensor / tuple / dict is one batch."""
    if isinstance(data, (torch.Tensor, tuple, Mapping, ModelInputs)):
        return [data]
    if data is None or isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise DataError(
            f"data must be an iterable of batches (a list, a DataLoader, a generator) or one "
            f"batch (a tensor, tuple or dict); got {type(data).__name__}"
        )
    return data


def iter_inputs(
    data: Any,
    num_inputs: int | None = None,
    device: torch.device | str | None = None,
    limit: int | None = None,
) -> Iterator[ModelInputs]:
    """The batches of ``data`` (:func:`as_batches`) as :class:`ModelInputs` (:func:`as_inputs`
    with ``num_inputs``), moved to ``device`` when given; at most ``limit`` of them (the
    ``num_batches`` argument of the caller: :func:`check_num_batches`).  ``data`` and ``limit``
    are checked now, before the caller starts any work (a progress bar ...)."""
    check_num_batches(limit)
    batches = as_batches(data)

    def gen() -> Iterator[ModelInputs]:
        for i, batch in enumerate(batches):
            if limit is not None and i >= limit:
                return
            inputs = as_inputs(batch, num_inputs)
            yield inputs if device is None else inputs.to(device)

    return gen()


def check_num_batches(num_batches: Any) -> None:
    """``num_batches`` is ``None`` (all batches) or an int >= 1; :class:`ConfigError`
    otherwise."""
    if num_batches is not None and (isinstance(num_batches, bool)
                                    or not isinstance(num_batches, int) or num_batches < 1):
        raise ConfigError(f"num_batches must be None (all batches) or an int >= 1, got "
                          f"{bounded(repr(num_batches))}")


def num_batches(data: Any, limit: int | None = None) -> int | None:
    """How many batches ``data`` will yield (for progress bars), ``None`` when unknown."""
    if isinstance(data, (torch.Tensor, tuple, Mapping, ModelInputs)):
        return 1  # one batch (as_batches)
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        return limit
    return n if limit is None else min(n, limit)


def call_model(model: nn.Module | Any, inputs: ModelInputs) -> Any:
    """``model(*inputs.args, **inputs.kwargs)``."""
    return model(*inputs.args, **inputs.kwargs)


def call_batch(model: nn.Module | Any, inputs: ModelInputs, index: int, what: str) -> Any:
    """:func:`call_model` on batch number ``index`` of the data of ``what`` (``"calibrate"``):
    an empty batch (dimension 0 of size 0), or one the model raises on with anything but an
    fxquant error (e.g. NaN seen by a quantizer), is a :class:`DataError` naming the batch."""
    if inputs.batch_size() == 0:
        raise DataError(f"{what}: batch {index} is empty ({inputs.describe()}); every batch "
                        "needs at least one sample")
    try:
        return call_model(model, inputs)
    except FxquantError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(
            f"{what}: the model cannot run on batch {index} ({inputs.describe()}): "
            f"{type(exc).__name__}: {bounded(first, 200)}; every batch must be what the model "
            "takes (like the example inputs given to prepare)"
        ) from exc


def _is_dataclass_instance(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _flatten(obj: Any, name: str) -> list[tuple[str, torch.Tensor]]:
    def join(key: Any) -> str:
        return f"{name}_{key}" if name else str(key)

    if isinstance(obj, torch.Tensor):
        return [(name or "output", obj)]
    if obj is None or isinstance(obj, (int, float, bool, str)):
        return []
    if isinstance(obj, Mapping):  # dict, OrderedDict, transformers' ModelOutput
        return [p for k, v in obj.items() for p in _flatten(v, join(k))]
    if _is_dataclass_instance(obj):
        return [
            p for f in dataclasses.fields(obj) for p in _flatten(getattr(obj, f.name), join(f.name))
        ]
    if isinstance(obj, (tuple, list)):
        return [p for i, v in enumerate(obj) for p in _flatten(v, join(i))]
    raise DataError(
        f"model output {name or 'output'!r} is a {type(obj).__name__}; fxquant reads tensors "
        "nested in tuples, lists, dicts and dataclasses (ModelOutput)"
    )


def flatten_outputs(out: Any, prefix: str = "output") -> list[tuple[str, torch.Tensor]]:
    """Every tensor of a model output with its stable name (see the module docstring).

    A single tensor is named ``prefix``; nested items ``prefix_0`` ... for sequences and by key
    for dicts / dataclasses.  Non-tensor leaves (``None``, numbers, strings) are skipped.
    """
    if isinstance(out, torch.Tensor):
        return [(prefix, out)]
    if isinstance(out, (tuple, list)):
        return [p for i, v in enumerate(out) for p in _flatten(v, f"{prefix}_{i}")]
    return _flatten(out, "")


def output_tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of :func:`flatten_outputs`, without names."""
    return [t for _, t in flatten_outputs(out)]


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for an empty module)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` inside the block; every submodule's train / eval flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
