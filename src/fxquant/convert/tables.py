"""The lowering's views of the op-trait table, and the torch kernels it maps ops to.

What an op *is* (runs natively on ``torch.quint8`` tensors in which engines, is an identity at
inference, clips, returns a sequence) is asked from :mod:`fxquant.graph.ops`; this module only
keeps the views the lowering and its tests read, and what is about torch's kernels themselves:
which quantized kernel computes a binary op, method rewrites and engine quirks.  The views are
checked against torch in ``tests/convert``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from ..graph.ops import (
    FUNCTION_TRAITS,
    METHOD_TRAITS,
    MODULE_TRAITS,
    TORCH_ENGINES,
    hashable,
    reads_shape_only,
)

__all__ = [
    "NATIVE_FUNCTIONS",
    "NATIVE_METHODS",
    "METHOD_REWRITES",
    "NATIVE_MODULES",
    "NATIVE_MISSING",
    "CLAMP_NEEDS_CONTIGUOUS",
    "IDENTITY_MODULES",
    "IDENTITY_FUNCTIONS",
    "BINARY_KERNELS",
    "binary_base",
    "hashable",
    "is_metadata",
]

# ``view`` fails on the channels-last tensors quantized convs return: use ``reshape`` (same
# values; inference does not rely on aliasing).
METHOD_REWRITES = {"view": "reshape", "view_as": "reshape_as"}

NATIVE_MODULES: tuple[type, ...] = tuple(t for t, tr in MODULE_TRAITS.items() if tr.native)
"""Module types that run on quantized tensors in at least one engine (nn.Upsample: nearest)."""
NATIVE_FUNCTIONS = frozenset(f for f, tr in FUNCTION_TRAITS.items() if tr.native)
"""Functions that run on quantized tensors in at least one engine (F.interpolate: nearest)."""
NATIVE_METHODS = frozenset(
    m for m, tr in METHOD_TRAITS.items() if tr.native and m not in METHOD_REWRITES
)
"""Tensor methods that run on quantized tensors as they are (see also METHOD_REWRITES)."""
NATIVE_MISSING: dict[str, frozenset[Any]] = {
    engine: missing
    for engine in sorted(TORCH_ENGINES)
    if (missing := frozenset(
        k for table in (MODULE_TRAITS, FUNCTION_TRAITS)
        for k, tr in table.items() if tr.native and engine not in tr.native
    ))
}
"""Engine -> native ops it lacks (run in float there, exactly)."""
# engines whose quantized clamp / hardtanh / relu6 misread channels-last tensors (torch 2.13
# qnnpack returns a contiguous tensor filled in channels-last order): clamp a contiguous copy
CLAMP_NEEDS_CONTIGUOUS = frozenset({"qnnpack"})
IDENTITY_MODULES: tuple[type, ...] = tuple(
    t for t, tr in MODULE_TRAITS.items() if tr.identity_at_inference
)
IDENTITY_FUNCTIONS = frozenset(f for f, tr in FUNCTION_TRAITS.items() if tr.identity_at_inference)

# canonical binary op name -> (kernel, the kernel fused with relu or None)
BINARY_KERNELS = {
    "add": (torch.ops.quantized.add, torch.ops.quantized.add_relu),
    "mul": (torch.ops.quantized.mul, torch.ops.quantized.mul_relu),
    "matmul": (torch.ops.quantized.matmul, None),
}
_BINARY_BASE = {"add": "add", "mul": "mul", "matmul": "matmul", "bmm": "matmul"}


def binary_base(op_name: str) -> str | None:
    """The :data:`BINARY_KERNELS` key computing canonical op ``op_name`` (bmm: matmul)."""
    return _BINARY_BASE.get(op_name)


def is_metadata(n: fx.Node) -> bool:
    """``n`` reads only the shape of its input (the same on a quantized tensor)."""
    return reads_shape_only(n)
