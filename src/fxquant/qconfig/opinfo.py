"""What a qconfig setter gets to see about one op of the captured graph."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from torch import nn

from ..backends import BackendProfile

__all__ = ["OpKind", "OpInfo", "SetterContext"]


class OpKind(enum.Enum):
    """How an op takes part in quantization.

    WEIGHTED: has a weight (conv, linear, embedding, F.linear/F.conv*): weight + output quantized.
    COMPUTE: computes new values (add, matmul, cat, softmax, norms, avg pool ...): output quantized.
    ACTIVATION: relu-like; fused into a preceding WEIGHTED/COMPUTE op when it is the only user,
        otherwise treated as COMPUTE.
    SHARE: only moves or selects values (view, permute, max pool, slicing ...): reuses its input's
        quantization parameters, never requantizes.
    QUANT_STUB / DEQUANT_STUB: eager-style markers (quantization starts / ends).
    INPUT: a model input (placeholder).
    FLOAT: kept in float (no integer kernel, untraceable island, non-float values).
    """

    WEIGHTED = "weighted"
    COMPUTE = "compute"
    ACTIVATION = "activation"
    SHARE = "share"
    QUANT_STUB = "quant_stub"
    DEQUANT_STUB = "dequant_stub"
    INPUT = "input"
    FLOAT = "float"


@dataclass(frozen=True)
class OpInfo:
    """One op of the captured graph as seen by setters.

    Attributes:
        name: stable name (module path, ``relu_1`` for a 2nd call site, ``_generated_add_0``).
        op_type: module class name (``Conv2d``) or function / method name (``add``).
        kind: :class:`OpKind`.
        module: the called module for module ops, else ``None``.
    """

    name: str
    op_type: str
    kind: OpKind
    module: nn.Module | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SetterContext:
    """Graph-wide facts setters may use.

    Attributes:
        profile: the backend profile of this prepare call.
        grid_path: names of ops on the path that computes a ``grid_sample`` grid.
    """

    profile: BackendProfile
    grid_path: frozenset[str] = frozenset()
