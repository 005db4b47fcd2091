"""Constants derived from a model's tensors, kept across forward passes while those tensors hold.

A runtime kernel's constants -- the weight codes, the int32 bias, the requantization multipliers,
a quantizer's grid -- depend only on weights and quantizer parameters, which do not change
between the evaluation passes of a trained model.  Recomputing them at every call costs a few
dozen small tensor operations per kernel, more than the kernel's own arithmetic on small inputs.

:class:`Snapshot` records the tensors a constant was derived from (with copies) and the plain
values it depends on; :meth:`Snapshot.holds` says whether they are still what they were -- by
*content* (the same bytes, dtype and shape: one native ``memcmp`` call for all of them,
:func:`fxquant.numerics.native.same_bytes`; ``torch.equal`` where that does not apply), so an
in-place update (``load_state_dict``, an optimizer step, ``weight.mul_(...)`` under
``no_grad``) is seen as well as a replaced tensor.  No private version counters are read.  The
check reads every source byte once, against the several passes and allocations recomputing the
constants takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..numerics import native

__all__ = ["Snapshot"]


class Snapshot:
    """The tensors (by content, dtype included) and plain values a derived constant depends on.

    Example::

        >>> w = torch.ones(3)
        >>> snap = Snapshot((w,), extra=("per tensor",))
        >>> snap.holds((w,), ("per tensor",))
        True
        >>> _ = w.mul_(2)  # an in-place change is seen
        >>> snap.holds((w,), ("per tensor",))
        False
    """

    __slots__ = ("copies", "extra")

    def __init__(self, tensors: Sequence[Tensor | None], extra: tuple[Any, ...] = ()) -> None:
        self.copies = tuple(None if t is None else
                            t.detach().clone(memory_format=torch.contiguous_format)
                            for t in tensors)
        self.extra = extra

    def holds(self, tensors: Sequence[Tensor | None], extra: tuple[Any, ...] = ()) -> bool:
        """Whether ``tensors`` and ``extra`` are what they were when the snapshot was taken."""
        if extra != self.extra or len(tensors) != len(self.copies):
            return False
        same = native.same_bytes(tensors, self.copies)
        if same is not None:
            return same
        for t, c in zip(tensors, self.copies, strict=True):
            if t is None or c is None:
                if t is not c:
                    return False
            elif t.dtype is not c.dtype or not _equal(t, c):
                return False
        return True


def _equal(t: Tensor, copy: Tensor) -> bool:
    try:
        return torch.equal(t, copy)
    except RuntimeError:  # moved to another device
        return False
