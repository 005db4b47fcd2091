"""Graph edits: put quantizer modules into the prepared model and calls to them into the graph."""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from ..fake_quant import FakeQuantize
from .meta import set_value_info, value_info

__all__ = ["OpQuantizers", "attach", "place_module", "insert_after", "insert_on_edge"]


class OpQuantizers(nn.Module):
    """Holds the quantizers of an op that is not itself a module (``_generated_add_0``, a 2nd
    call site ``relu_1``, a model input)."""


def _split(path: str) -> tuple[str, str]:
    return tuple(path.rsplit(".", 1)) if "." in path else ("", path)  # type: ignore[return-value]


def _container(gm: fx.GraphModule, name: str) -> tuple[nn.Module, str]:
    """The module that holds ``name``'s quantizers (created if needed) and its path."""
    try:
        return gm.get_submodule(name), name
    except AttributeError:
        pass
    parent_path, leaf = _split(name)
    parent = gm
    if parent_path:
        parent, parent_path = _container(gm, parent_path)
    existing = getattr(parent, leaf, None)
    if existing is not None and not isinstance(existing, nn.Module):
        leaf = leaf + "_fxq"  # an attribute of that name exists already
    if not isinstance(getattr(parent, leaf, None), nn.Module):
        parent.add_module(leaf, OpQuantizers())
    path = f"{parent_path}.{leaf}" if parent_path else leaf
    return getattr(parent, leaf), path


def attach(gm: fx.GraphModule, op_name: str, attr: str, fq: FakeQuantize, qname: str) -> str:
    """Store ``fq`` as ``<op container>.<attr>``, name it ``qname``; returns its module path."""
    owner, path = _container(gm, op_name)
    owner.add_module(attr, fq)
    fq.name = qname
    return f"{path}.{attr}" if path else attr


def place_module(gm: fx.GraphModule, path: str, module: nn.Module) -> str:
    """Store ``module`` at ``path`` (missing parents become :class:`OpQuantizers`); returns the
    path it got (``<leaf>_fxq`` when a non-module attribute already has that name)."""
    parent_path, leaf = _split(path)
    parent = _container(gm, parent_path)[0] if parent_path else gm
    existing = getattr(parent, leaf, None)
    if existing is not None and not isinstance(existing, nn.Module):
        leaf = leaf + "_fxq"
    parent.add_module(leaf, module)
    return f"{parent_path}.{leaf}" if parent_path else leaf


def insert_after(gm: fx.GraphModule, value: fx.Node, path: str) -> fx.Node:
    """Call module ``path`` on ``value`` and make every other user read its result."""
    with gm.graph.inserting_after(value):
        q = gm.graph.call_module(path, (value,))
    value.replace_all_uses_with(q, delete_user_cb=lambda u: u is not q)
    info = value_info(value)
    if info is not None:
        set_value_info(q, info)
    return q


def insert_on_edge(gm: fx.GraphModule, value: fx.Node, consumer: fx.Node, path: str) -> fx.Node:
    """Call module ``path`` on ``value`` for ``consumer`` only (on ``value``'s output quantizer
    when :func:`insert_after` already gave it one: ``consumer`` reads that now)."""
    if value not in consumer.all_input_nodes:
        value = next((u for u in value.users if u.op == "call_module"
                      and u in consumer.all_input_nodes and u.args[:1] == (value,)), value)
    with gm.graph.inserting_before(consumer):
        q = gm.graph.call_module(path, (value,))
    consumer.replace_input_with(value, q)
    info = value_info(value)
    if info is not None:
        set_value_info(q, info)
    return q
