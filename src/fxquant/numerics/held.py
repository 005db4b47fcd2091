"""Values derived from a model's tensors, kept across forward passes while those tensors hold.

Some values depend only on weights and quantizer parameters, which do not change between the
evaluation or calibration passes of a model: a runtime kernel's constants (the weight codes, the
int32 bias, the requantization multipliers, a quantizer's grid), a ConvBn's folded weight and
bias under ``no_grad`` (:mod:`fxquant.nn.conv_bn`), a weight quantizer's min-max statistics
during calibration (:mod:`fxquant.fake_quant.fake_quantize`).  Recomputing them at every call
costs a few dozen small tensor operations, more than the useful arithmetic on small inputs.

:class:`Snapshot` records the tensors a value was derived from (with copies) and the plain
values it depends on; :meth:`Snapshot.holds` says whether they are still what they were -- by
*content* (the same bytes, dtype and shape: one native ``memcmp`` call for all of them,
:func:`fxquant.numerics.native.same_bytes`; ``torch.equal`` where that does not apply), so an
in-place update (``load_state_dict``, an optimizer step, ``weight.mul_(...)`` under
``no_grad``) is seen as well as a replaced tensor.  No private version counters are read.  The
check reads every source byte once, against the several passes and allocations recomputing the
value takes.  The copies cost memory, so the training-time users keep them only for tensors of
at most :data:`KEEP_MAX_NUMEL` elements (above that the recomputation is dominated by reading
the tensor, which the check would do too).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from . import native

__all__ = ["KEEP_MAX_NUMEL", "Snapshot", "keepable", "mark_kept", "is_kept"]

KEEP_MAX_NUMEL = 1 << 20
"""Largest tensor (elements) whose copy a training-time cache keeps (4 MiB of float32)."""


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


_PLAIN = (Tensor, torch.nn.Parameter)


def keepable(*tensors: Tensor | None) -> bool:
    """Whether a training-time cache may keep a value derived from ``tensors``: ordinary CPU
    tensors (not the fake / functional tensors of ``torch.export`` or ``torch.compile``, not
    under ``torch.jit`` tracing) of at most :data:`KEEP_MAX_NUMEL` elements each (None counts).
    On an accelerator the content check would wait for the device (``torch.equal`` reads its
    result on the host) where recomputing queues a few asynchronous kernels: not kept."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return all(t is None or (type(t) in _PLAIN and t.is_cpu and t.numel() <= KEEP_MAX_NUMEL)
               for t in tensors)


_KEPT: weakref.WeakValueDictionary[int, Tensor] = weakref.WeakValueDictionary()


def mark_kept(t: Tensor) -> Tensor:
    """Mark ``t`` as a kept value: a tensor fxquant derived, holds and never writes again (a
    ConvBn's folded weight under ``no_grad``).  While it lives, the same object means the same
    content, so a consumer may recognise it by identity (:func:`is_kept`) instead of comparing
    bytes.  Returns ``t``."""
    _KEPT[id(t)] = t
    return t


def is_kept(t: Tensor) -> bool:
    """Whether ``t`` itself was marked by :func:`mark_kept`."""
    return _KEPT.get(id(t)) is t
