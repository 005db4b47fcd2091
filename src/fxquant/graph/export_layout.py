"""What the exported ONNX graph looks like around an op of a prepared model, where it differs from
the prepared graph in a way that decides what a runtime fuses.

:func:`fxquant.export_onnx` lowers the model through ``torch.onnx`` (whose optimizer merges
common subexpressions and drops no-op data movement) and post-passes (a Transpose on a quantized
constant moves into its integer initializer).  The runtime simulation (:mod:`.simulate`) asks
two questions here (movement after a quantized constant needs
none: the exporter folds it into the initializer or requantizes it, as after an activation):

* :func:`shared_ops` -- which ops the exported graph computes once for several consumers: two
  identical calls on the same inputs (``torch.sigmoid(y)`` and the ``Sigmoid(y)`` inside
  ``F.silu(y)``, exported as ``y * Sigmoid(y)``) become one node whose output feeds both
  consumers, so no single QuantizeLinear follows it and ONNX Runtime fuses no kernel there;
* :func:`changed_before` -- whether an in-place op changes a quantized tensor before an op
  reads it (``x.mul_(2)`` on a quantizer's output): the exported op then reads the changed,
  unquantized value.

>>> import torch, fxquant
>>> from fxquant.graph.export_layout import shared_ops
>>> class M(torch.nn.Module):
...     def forward(self, x):
...         return torch.sigmoid(x) + torch.nn.functional.silu(x)
>>> qmodel = fxquant.prepare(M(), torch.randn(2, 4), backend="onnxruntime")
>>> sorted(n.name for n in shared_ops(qmodel))
['sigmoid']
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Hashable
from typing import Any

import torch.fx as fx
from torch import nn

from .ops import canonical_name

__all__ = ["shared_ops", "mutates", "changed_before"]

_IN_PLACE = frozenset({operator.iadd, operator.isub, operator.imul, operator.itruediv})
_MODULE_OPS = {nn.Sigmoid: "sigmoid", nn.SiLU: "silu"}


def _freeze(v: Any) -> Hashable:
    """A hashable stand-in for a node argument (nodes by identity)."""
    if isinstance(v, fx.Node):
        return ("node", id(v))
    if isinstance(v, (tuple, list)):
        return (type(v).__name__, *(_freeze(x) for x in v))
    if isinstance(v, dict):
        return ("dict", *sorted((str(k), _freeze(x)) for k, x in v.items()))
    if isinstance(v, slice):
        return ("slice", _freeze(v.start), _freeze(v.stop), _freeze(v.step))
    try:
        hash(v)
    except TypeError:
        return ("repr", repr(v))
    return (type(v).__name__, v)


def mutates(n: fx.Node) -> bool:
    """Whether ``n`` is an in-place op (``x.mul_(2)``, ``x += y``): it changes its first
    argument."""
    if n.op not in ("call_function", "call_method"):
        return False
    raw = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
    return n.target in _IN_PLACE or (raw.endswith("_") and not raw.endswith("__"))


def changed_before(v: fx.Node, reader: fx.Node) -> bool:
    """Whether an in-place op other than ``reader`` changes ``v`` before ``reader`` runs (the
    exported graph then feeds ``reader`` the changed value: what was quantized is not what it
    reads)."""
    for u in v.users:
        if u is reader or not mutates(u) or not u.args or u.args[0] is not v:
            continue
        node = u.next
        while node.op != "root":
            if node is reader:
                return True
            node = node.next
    return False


def _keys(gm: fx.GraphModule, n: fx.Node) -> list[Hashable]:
    """The exported computations of ``n`` that a common-subexpression pass can merge: the first
    one produces ``n``'s output, the others are inside it."""
    if n.op == "call_module":
        m = gm.get_submodule(str(n.target))
        name: Any = _MODULE_OPS.get(type(m), ("module", str(n.target)))
    elif n.op in ("call_function", "call_method"):
        if mutates(n):
            return []  # changes its input: never merged
        name = canonical_name(n.target)
    else:
        return []
    if name == "sigmoid" and n.args:
        return [("sigmoid", _freeze(n.args[0]))]
    if name == "silu" and n.args:  # exported as x * Sigmoid(x): merges with sigmoid(x)
        return [("silu", _freeze(n.args[0])), ("sigmoid", _freeze(n.args[0]))]
    return [(_freeze(name), _freeze(n.args), _freeze(dict(n.kwargs)))]


def shared_ops(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose exported output is also another node's computation (see the module
    docstring): it has the consumers of both."""
    keys = {n: _keys(gm, n) for n in gm.graph.nodes}
    counts = Counter(k for ks in keys.values() for k in ks)
    return {n for n, ks in keys.items() if ks and counts[ks[0]] > 1}
