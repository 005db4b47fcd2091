"""Finding layer patterns (conv -> BN, conv -> relu -> conv) in a model, for BN folding and CLE.

The model is seen through one or more *scopes*, each an ``fx.Graph`` over module calls:

* a ``GraphModule`` (a prepared model, a user-traced model) is its own graph;
* any other module is traced with fxquant's capture tracer (``torch.nn`` leaves, untraceable
  submodules become leaf calls), and each such leaf call is scoped in turn;
* when a module's own ``forward`` cannot be traced, an ``nn.Sequential`` becomes a synthetic
  chain graph (child 0 -> child 1 -> ...: the only module-order heuristic used), and every other
  module is searched child by child.

A pattern is a pair of module calls ``first -> [pass-through ops] -> second`` in which every
value on the path has exactly one user and both modules are called exactly once in the model
(a reused module cannot change for one call site only).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch.fx as fx
from torch import nn

from ..graph.capture import _Tracer

__all__ = [
    "ScopeKind",
    "Scope",
    "Step",
    "PairMatch",
    "trace_scopes",
    "call_counts",
    "find_pairs",
    "join_path",
]


class ScopeKind(enum.Enum):
    """How a scope's graph was obtained.

    GRAPH_MODULE: the module is an ``fx.GraphModule``; its graph is used as is.
    TRACED: symbolic trace of the module's ``forward``.
    SEQUENTIAL: the ``forward`` could not be traced; the ``nn.Sequential`` children in order.
    """

    GRAPH_MODULE = "graph module"
    TRACED = "fx trace"
    SEQUENTIAL = "nn.Sequential order"


@dataclass(frozen=True, eq=False)
class Scope:
    """One graph over module calls; ``call_module`` targets are relative to ``prefix``."""

    prefix: str
    graph: fx.Graph
    kind: ScopeKind

    def path(self, node: fx.Node) -> str:
        """Full module path (from the model root) of a ``call_module`` node."""
        return f"{self.prefix}.{node.target}" if self.prefix else str(node.target)


class Step(enum.Enum):
    """What a node between the two modules of a pattern does (decided by the caller).

    PASS: a pass-through op the pattern may cross.
    BLOCK: the op may be crossed only under a condition the caller reports (e.g. ReLU6).
    STOP: the pattern ends here (no match).
    """

    PASS = "pass"
    BLOCK = "block"
    STOP = "stop"


@dataclass(frozen=True, eq=False)
class PairMatch:
    """``first -> through... -> second``; ``blocked`` lists the BLOCK nodes on the path."""

    first: str
    second: str
    through: tuple[fx.Node, ...]
    blocked: tuple[fx.Node, ...]
    scope: Scope


def _is_leaf(m: nn.Module) -> bool:
    """Modules never searched inside: torch layers, fxquant modules, childless modules."""
    mod = type(m).__module__
    if mod.startswith("fxquant."):
        return True
    if mod.startswith("torch.nn.modules") and not isinstance(
        m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    ):
        return True
    return next(m.children(), None) is None


def join_path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _sequential_graph(seq: nn.Sequential) -> fx.Graph:
    graph = fx.Graph()
    x = graph.placeholder("x")
    for name, _ in seq.named_children():
        x = graph.call_module(name, (x,))
    graph.output(x)
    return graph


def trace_scopes(model: nn.Module, prefix: str = "") -> list[Scope]:
    """All scopes of ``model`` (see the module docstring), outermost first."""
    if isinstance(model, fx.GraphModule):
        scopes = [Scope(prefix, model.graph, ScopeKind.GRAPH_MODULE)]
        inner = [n.target for n in model.graph.nodes if n.op == "call_module"]
    else:
        tracer = _Tracer(frozenset())
        try:
            graph = tracer.trace(model)
        except Exception:  # the root forward is untraceable: fall back below
            graph = None
        if graph is not None:
            scopes = [Scope(prefix, graph, ScopeKind.TRACED)]
            inner = [n.target for n in graph.nodes if n.op == "call_module"]
        else:
            scopes = []
            if isinstance(model, nn.Sequential):
                scopes.append(Scope(prefix, _sequential_graph(model), ScopeKind.SEQUENTIAL))
            inner = [name for name, _ in model.named_children()]
    for name in dict.fromkeys(inner):  # unique, in order
        try:
            sub = model.get_submodule(str(name))
        except AttributeError:
            continue
        if not _is_leaf(sub):
            scopes.extend(trace_scopes(sub, join_path(prefix, str(name))))
    return scopes


def call_counts(scopes: list[Scope]) -> Counter[str]:
    """How many ``call_module`` nodes call each module path, over all scopes."""
    counts: Counter[str] = Counter()
    for scope in scopes:
        for n in scope.graph.nodes:
            if n.op == "call_module":
                counts[scope.path(n)] += 1
    return counts


def find_pairs(
    model: nn.Module,
    scopes: list[Scope],
    is_first: Callable[[nn.Module], bool],
    is_second: Callable[[nn.Module, nn.Module], bool],
    step: Callable[[fx.Node, Scope], Step] | None = None,
) -> list[PairMatch]:
    """Every ``first -> ... -> second`` path in the scopes, in graph order.

    Args:
        model: the root module (module paths are looked up in it).
        scopes: from :func:`trace_scopes`.
        is_first: whether a module can start a pattern.
        is_second: whether ``(first, candidate)`` completes one.
        step: classifies the nodes in between; ``None``: the second module must consume the
            first's output directly.

    Each value on the path must have exactly one user and each node must pass its value on as
    its first argument; both modules must be called exactly once in the model.
    """
    counts = call_counts(scopes)
    out: list[PairMatch] = []
    for scope in scopes:
        for node in scope.graph.nodes:
            if node.op != "call_module" or counts[scope.path(node)] != 1:
                continue
            first = model.get_submodule(scope.path(node))
            if not is_first(first):
                continue
            match = _walk(model, scope, node, first, is_second, step, counts)
            if match is not None:
                out.append(match)
    return out


def _walk(model, scope, start, first, is_second, step, counts) -> PairMatch | None:
    through: list[fx.Node] = []
    blocked: list[fx.Node] = []
    cur = start
    while True:
        if len(cur.users) != 1:
            return None
        user = next(iter(cur.users))
        if not user.args or user.args[0] is not cur or cur in _other_inputs(user):
            return None
        if user.op == "call_module":
            path = scope.path(user)
            mod = model.get_submodule(path)
            if is_second(first, mod):
                if counts[path] != 1:
                    return None
                return PairMatch(scope.path(start), path, tuple(through), tuple(blocked), scope)
        kind = Step.STOP if step is None else step(user, scope)
        if kind is Step.STOP:
            return None
        if kind is Step.BLOCK:
            blocked.append(user)
        through.append(user)
        cur = user


def _other_inputs(node: fx.Node) -> list[fx.Node]:
    """Nodes ``node`` reads besides its first argument."""
    first = node.args[0]
    return [n for n in node.all_input_nodes if n is not first]
