"""The float simulation of a prepared model with each ``relu`` / ``relu6`` (function or module)
whose only reader is its output quantizer run together with that quantizer, as one native pass.

A prepared model spends a memory pass on an activation and another on its quantizer, and in
training the same again in backward.  The prologue of a prepared ``GraphModule``
(:func:`fxquant.graph.simulate.install`) asks :func:`fused_forward` whenever the float
simulation runs (train mode; eval mode where no runtime simulation answers): it runs a copy of
the prepared graph in which ``act(x)`` followed by its quantizer ``fq`` is
``fq.forward_activated(x, act)`` (:meth:`fxquant.FakeQuantize.forward_activated`: fused in QAT
and CALIBRATION -- the same bits, gradients included --, the two calls themselves in every
other case).  The copy reads the model's modules through ``self`` like the prepared code, so it
follows every module the model holds; it is rebuilt when the prepared graph is recompiled.
Tracing, scripting, exporting and ``torch.compile`` see the prepared graph itself, and so does
everything inside :func:`unfused`.

>>> import torch, fxquant
>>> from fxquant.graph.act_fusion import fused_activations, unfused
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3))
>>> qat = fxquant.prepare(model, torch.randn(2, 3, 8, 8))
>>> fused_activations(qat)
['_1']
>>> x = torch.randn(2, 3, 8, 8)
>>> with unfused():                  # the prepared graph, op by op: the same bits
...     y = qat(x)
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .._utils import has_hooks
from ..fake_quant import FakeQuantize
from ..fake_quant.activation import RELU, RELU6, ClampActivation

__all__ = ["fused_activations", "fused_forward", "unfused", "NOT_FUSED"]

NOT_FUSED = object()
""":func:`fused_forward`'s answer where the prepared graph itself must run."""

_UNFUSED = contextvars.ContextVar("fxquant_unfused", default=0)


@contextlib.contextmanager
def unfused() -> Iterator[None]:
    """Inside the block, prepared models run their prepared graph op by op (debugging, or a
    reference for the fused pass)."""
    token = _UNFUSED.set(_UNFUSED.get() + 1)
    try:
        yield
    finally:
        _UNFUSED.reset(token)

_FUNCTIONS: dict[Any, ClampActivation] = {F.relu: RELU, torch.relu: RELU, F.relu6: RELU6}
_MODULES: dict[type[nn.Module], ClampActivation] = {nn.ReLU: RELU, nn.ReLU6: RELU6}


def _relu_fake_quant(fq: FakeQuantize, x: torch.Tensor) -> torch.Tensor:
    return fq.forward_activated(x, RELU)


def _relu6_fake_quant(fq: FakeQuantize, x: torch.Tensor) -> torch.Tensor:
    return fq.forward_activated(x, RELU6)


def _module_fake_quant(act: nn.Module, fq: FakeQuantize, x: torch.Tensor) -> torch.Tensor:
    """``fq(act(x))`` for an activation module, fused while it is still a plain relu / relu6
    without hooks (checked at each call: the model may have changed it since)."""
    kind = _MODULES.get(type(act))
    if kind is None or has_hooks(act) or (
            kind is RELU6 and (act.min_val, act.max_val) != kind.bounds):  # type: ignore[union-attr]
        return fq(act(x))
    return fq.forward_activated(x, kind)


_FUSED = {RELU: _relu_fake_quant, RELU6: _relu6_fake_quant}


@dataclass
class _Fused:
    code: str  # the prepared code it was built from
    forward: Callable[..., Any] | None  # None: nothing to fuse
    fused: list[str]  # the activation nodes fused


_CACHE: weakref.WeakKeyDictionary[fx.GraphModule, _Fused] = weakref.WeakKeyDictionary()


def _fusible(gm: fx.GraphModule, n: fx.Node) -> bool:
    """Whether ``n`` is a relu / relu6 read only by its quantizer, on a tensor that nothing
    else reads if it works in place."""
    if n.op == "call_function":
        if n.target not in _FUNCTIONS or set(n.kwargs) - {"inplace"}:
            return False
        inplace = n.kwargs.get("inplace", False)
    elif n.op == "call_module":
        if type(_submodule(gm, n)) not in _MODULES or n.kwargs:
            return False
        inplace = True  # the module's `inplace` may be switched on later: as if it were
    else:
        return False
    if len(n.args) != 1 or not isinstance(n.args[0], fx.Node) or len(n.users) != 1:
        return False
    if inplace and len(n.args[0].users) != 1:
        return False
    (user,) = n.users
    return (user.op == "call_module" and user.args == (n,) and not user.kwargs
            and isinstance(_submodule(gm, user), FakeQuantize))


def _submodule(gm: fx.GraphModule, n: fx.Node) -> nn.Module | None:
    try:
        return gm.get_submodule(str(n.target))
    except AttributeError:
        return None


def _build(gm: fx.GraphModule) -> _Fused:
    graph = fx.Graph()
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    fused = []
    for n in list(graph.nodes):
        if not _fusible(gm, n):
            continue
        (user,) = n.users
        with graph.inserting_before(user):
            fq = graph.get_attr(str(user.target))
            if n.op == "call_module":
                act = graph.get_attr(str(n.target))
                new = graph.call_function(_module_fake_quant, (act, fq, n.args[0]))
            else:
                new = graph.call_function(_FUSED[_FUNCTIONS[n.target]], (fq, n.args[0]))
        user.replace_all_uses_with(new)
        graph.erase_node(user)
        graph.erase_node(n)
        fused.append(n.name)
    if not fused:
        return _Fused(gm.code, None, [])
    code = graph.python_code(root_module="self")
    scope = dict(code.globals)
    exec(compile(code.src, f"<fxquant fused forward of {type(gm).__name__}>", "exec"), scope)
    return _Fused(gm.code, scope["forward"], fused)


def _fused(gm: fx.GraphModule) -> _Fused:
    entry = _CACHE.get(gm)
    if entry is None or entry.code is not gm.code:
        entry = _build(gm)
        _CACHE[gm] = entry
    return entry


def fused_forward(gm: fx.GraphModule, *args: Any, **kwargs: Any) -> Any:
    """The prologue's question: the fused graph's result, or :data:`NOT_FUSED`."""
    if (_UNFUSED.get() or torch.compiler.is_compiling() or torch.compiler.is_exporting()
            or torch.jit.is_tracing() or torch.jit.is_scripting()
            or torch.onnx.is_in_onnx_export()
            or any(isinstance(a, fx.Proxy) for a in (*args, *kwargs.values()))):
        return NOT_FUSED
    forward = _fused(gm).forward
    return NOT_FUSED if forward is None else forward(gm, *args, **kwargs)


def fused_activations(gm: fx.GraphModule) -> list[str]:
    """The names of the prepared graph's activation nodes run fused with their quantizers."""
    return list(_fused(gm).fused)
