"""Block discovery for block reconstruction: pure analysis of a prepared model's ``fx.Graph``.

A *block* is a stretch of the graph that reads one value and hands one value on (plus side
inputs such as attention masks), the unit BRECQ / QDrop reconstruct jointly:

1. **Main path.**  Values derived from the model inputs that feed the first weighted layer;
   other values (masks, constants, parameters) are *side inputs*: they never keep a block open.
2. **Cut points.**  Walking the main path in graph order, node ``v_i`` is a cut point when no
   value computed before it is used after it: only ``v_i`` crosses.  A residual connection keeps
   its block's input alive until the add, so there is no cut inside a residual block.
   Values returned by the model do not keep anything alive (a block may have several outputs).
3. **Segments** between cut points are grouped into blocks:

   * a segment with a weighted layer (conv / linear) starts a block, together with the
     segments without weighted layers that were waiting for one (e.g. a pooling before a
     classifier);
   * segments without weighted layers join the open block before them until a segment ends
     with an activation quantizer (the block's output is then a quantized value), and join a
     closed one when they belong to its module (the norm after a post-norm residual add);
   * a residual segment whose closing add belongs to the same module (name prefix) as the
     previous block's joins it: the attention and feed-forward halves of a transformer layer
     form one block, while ``layer1.0`` and ``layer1.1`` of a ResNet stay apart.

A plain chain therefore gives one block per weighted layer (with its relu and quantizer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx
from torch import nn

from ..fake_quant import FakeQuantize
from ..graph.meta import op_name
from ..graph.ops import MODULE_TRAITS, node_traits

__all__ = ["Block", "find_blocks", "WEIGHTED_MODULES"]

WEIGHTED_MODULES: tuple[type[nn.Module], ...] = tuple(
    t for t, traits in MODULE_TRAITS.items() if traits.multiplies_weight
)
"""Module types whose calls count as weighted layers: those whose weight multiplies their input
(conv, transposed conv, linear and their quantized / ConvBn forms; not an embedding)."""



@dataclass(frozen=True)
class Block:
    """One reconstruction unit.

    Attributes:
        nodes: names of its graph nodes, in graph order.
        inputs: names of the nodes outside the block whose values it reads (no ``get_attr``).
        outputs: names of its nodes whose values are read after it (or returned).
        layers: module paths of its weighted layers, in graph order.
        prefix: module prefix of its residual add(s), or None.
    """

    nodes: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    layers: tuple[str, ...]
    prefix: str | None = None


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    try:
        return gm.get_submodule(str(node.target))
    except AttributeError:
        return None


def _is_weighted(gm: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(_module(gm, node), WEIGHTED_MODULES)


def _is_quantizer(gm: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(_module(gm, node), FakeQuantize)


def _is_add(gm: fx.GraphModule, node: fx.Node, main: set[fx.Node]) -> bool:
    if node.op not in ("call_function", "call_method") or node_traits(node, gm).name != "add":
        return False
    return sum(1 for a in node.args[:2] if isinstance(a, fx.Node) and a in main) == 2


def _main_path(nodes: list[fx.Node], gm: fx.GraphModule) -> set[fx.Node]:
    """Descendants of the placeholders that feed the first weighted layer."""
    first = next((n for n in nodes if _is_weighted(gm, n)), None)
    if first is None:
        return set()
    ancestors, stack = set(), [first]
    while stack:
        n = stack.pop()
        if n not in ancestors:
            ancestors.add(n)
            stack.extend(n.all_input_nodes)
    main = {n for n in ancestors if n.op == "placeholder"}
    for n in nodes:  # graph order is topological
        if n.op not in ("placeholder", "output", "get_attr") and any(
            a in main for a in n.all_input_nodes
        ):
            main.add(n)
    return main


def _segments(order: list[fx.Node], main: set[fx.Node]) -> list[list[fx.Node]]:
    """Split the main path at its cut points (see the module docstring)."""
    pos = {n: i for i, n in enumerate(order)}
    last_use = [
        max([i] + [pos[u] for u in n.users if u in pos])  # users outside main: none / output
        for i, n in enumerate(order)
    ]
    segments, current, before = [], [], -1
    for i, n in enumerate(order):
        current.append(n)
        if before <= i:  # nothing computed before n is needed after it
            segments.append(current)
            current = []
        before = max(before, last_use[i])
    if current:
        segments.append(current)
    return segments


def _residual_prefix(
    gm: fx.GraphModule, segment: list[fx.Node], main: set[fx.Node]
) -> str | None:
    adds = [n for n in segment if _is_add(gm, n, main)]
    if not adds:
        return None
    name = op_name(adds[-1]) or ""
    return name.rsplit(".", 1)[0] if "." in name else None


def _owned_by(segment: list[fx.Node], prefix: str | None) -> bool:
    """Some op of ``segment`` lives inside module ``prefix`` (a post-norm after the add)."""
    if not prefix:
        return False
    return any((op_name(n) or "").startswith(prefix + ".") for n in segment)


class _Group:
    def __init__(self, nodes: list[fx.Node], prefix: str | None) -> None:
        self.nodes, self.prefix, self.closed = nodes, prefix, False


def find_blocks(gm: fx.GraphModule) -> list[Block]:
    """The reconstruction blocks of a prepared (or any) ``GraphModule``, in graph order.

    Weighted layers off the main path become one-layer blocks of their own.
    """
    nodes = list(gm.graph.nodes)
    main = _main_path(nodes, gm)
    order = [n for n in nodes if n in main and n.op != "placeholder"]
    groups: list[_Group] = []
    pending: list[fx.Node] = []
    for seg in _segments(order, main):
        if any(_is_weighted(gm, n) for n in seg):
            prefix = _residual_prefix(gm, seg, main)
            last = groups[-1] if groups else None
            if last is not None and prefix is not None and last.prefix == prefix:
                last.nodes += pending + seg
                last.closed = False
            else:
                groups.append(_Group(pending + seg, prefix))
            pending = []
        elif groups and (not groups[-1].closed or _owned_by(seg, groups[-1].prefix)):
            groups[-1].nodes += seg
            groups[-1].closed = False
        else:
            pending += seg
            continue
        if _is_quantizer(gm, seg[-1]):
            groups[-1].closed = True
    if pending and groups:
        groups[-1].nodes += pending
    index = {n: i for i, n in enumerate(nodes)}
    units = [g.nodes for g in groups]
    prefixes = [g.prefix for g in groups]
    for n in nodes:  # weighted layers off the main path: one block each
        if n not in main and _is_weighted(gm, n):
            units.append([n])
            prefixes.append(None)
    blocks = [_block(gm, u, p) for u, p in zip(units, prefixes, strict=True)]
    return sorted(blocks, key=lambda b: index[_node(gm, b.nodes[0])])


def _node(gm: fx.GraphModule, name: str) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.name == name)


def _block(gm: fx.GraphModule, nodes: list[fx.Node], prefix: str | None) -> Block:
    inside = set(nodes)
    inputs: list[str] = []
    outputs: list[str] = []
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in inside and a.op != "get_attr" and a.name not in inputs:
                inputs.append(a.name)
        if any(u not in inside for u in n.users):
            outputs.append(n.name)
    layers = tuple(str(n.target) for n in nodes if _is_weighted(gm, n))
    return Block(tuple(n.name for n in nodes), tuple(inputs), tuple(outputs), layers, prefix)
