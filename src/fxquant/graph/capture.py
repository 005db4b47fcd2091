"""Graph capture: symbolic tracing that never gives up on the whole model.

* Standard ``torch.nn`` modules (and fxquant's quantized modules, eager stubs, user-named leaf
  modules) are leaves.
* When tracing a submodule fails (data-dependent control flow, unsupported Python), that smallest
  enclosing submodule becomes a **float island**: a leaf call in the graph, recorded with the
  source line where tracing failed.  The rest of the model is traced as usual.
* Failure in the root ``forward`` itself raises :class:`RootTraceError`; ``prepare`` then falls
  back to eager capture (see :mod:`fxquant.graph.eager`).
"""

from __future__ import annotations

import collections
import inspect
import os
import traceback
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import DataError, FxquantError, bounded
from ..modelio import ModelInputs, call_model, eval_mode
from ..qconfig import OpKind
from .insert import place_module
from .meta import ValueInfo, set_name_override, set_value_info
from .naming import owner_of
from .patterns import TRACE_THROUGH, classify_function, is_stub
from .plan import constant_nodes

__all__ = [
    "FunctionCall",
    "Island",
    "RootTraceError",
    "capture",
    "check_inputs_fit",
    "trace_failure_site",
    "propagate_values",
    "unspecified_defaults",
    "route_opaque_functions",
]

_TORCH_DIR = os.path.dirname(torch.__file__)
_TORCH_NN_DIR = os.path.join(_TORCH_DIR, "nn")
_FXQ_DIR = os.path.dirname(os.path.dirname(__file__))


@dataclass(frozen=True, eq=False)
class Island:
    """A submodule kept in float because it could not be traced.

    Attributes:
        name: module path.
        reason: exception type and message.
        source: ``file:line: code`` of the user line where tracing failed.
    """

    name: str
    reason: str
    source: str
    example_args: Any = None


class RootTraceError(RuntimeError):
    """The model's own ``forward`` could not be traced."""

    def __init__(self, reason: str, source: str) -> None:
        super().__init__(f"{reason} (at {source})")
        self.reason = reason
        self.source = source


def trace_failure_site(exc: BaseException) -> str:
    """``file:line: code`` of the innermost user frame (not torch / fxquant) in ``exc``'s trace."""
    frames = traceback.extract_tb(exc.__traceback__)
    for fr in reversed(frames):
        fname = os.path.abspath(fr.filename)
        if not fname.startswith(_TORCH_DIR) and not fname.startswith(_FXQ_DIR):
            return f"{fr.filename}:{fr.lineno}: {(fr.line or '').strip()}"
    for fr in reversed(frames):  # a torch module's own forward (nn.TransformerEncoderLayer ...)
        if os.path.abspath(fr.filename).startswith(_TORCH_NN_DIR):
            return f"{fr.filename}:{fr.lineno}: {(fr.line or '').strip()}"
    fr = frames[-1] if frames else None
    return f"{fr.filename}:{fr.lineno}: {(fr.line or '').strip()}" if fr else "<unknown>"


def _reason(exc: BaseException) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}"


def _is_container(m: nn.Module) -> bool:
    return isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))


class _Tracer(fx.Tracer):
    def __init__(self, leaf_names: frozenset[str]) -> None:
        super().__init__()
        self.leaf_names = leaf_names
        self.islands: dict[str, Island] = {}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaf_names or qualname in self.islands:
            return True
        if is_stub(m) is not None:
            return True
        mod = type(m).__module__
        if mod.startswith("fxquant.nn"):
            return True
        return (mod.startswith("torch.nn.modules") and not _is_container(m)
                and type(m) not in TRACE_THROUGH)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        qualname = self.path_of_module(m)
        if self.is_leaf_module(m, qualname):
            return super().call_module(m, forward, args, kwargs)
        mark = next(iter(reversed(self.graph.nodes)), None)  # last node before this call
        saved_stack = collections.OrderedDict(self.module_stack)
        saved_calls = dict(self.num_calls)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            self._rollback(mark)
            self.module_stack.clear()
            self.module_stack.update(saved_stack)
            self.num_calls = saved_calls
            self.islands[qualname] = Island(qualname, _reason(exc), trace_failure_site(exc))
            return super().call_module(m, forward, args, kwargs)

    def _rollback(self, mark: fx.Node | None) -> None:
        nodes = list(self.graph.nodes)
        idx = nodes.index(mark) + 1 if mark is not None else 0
        for n in reversed(nodes[idx:]):
            for u in list(n.users):
                if u not in nodes[idx:]:
                    raise RuntimeError(f"cannot roll back partial trace at {n}")
            self.graph.erase_node(n)


class FunctionCall(nn.Module):
    """One call site of a Python function that torch.fx keeps opaque (``torch.fx.wrap``, e.g.
    torchvision's ``shifted_window_attention``): a float island whose ``forward`` calls the
    function, so eager capture quantizes the ops inside it like any untraceable forward's."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.fn.__module__}.{self.fn.__qualname__}"


_NOT_OPAQUE = ("torch", "_operator", "operator", "builtins", "math", "fxquant")


def _opaque_function(node: fx.Node) -> bool:
    fn = node.target
    if node.op != "call_function" or not inspect.isfunction(fn):
        return False
    module = (getattr(fn, "__module__", None) or "").split(".")[0]
    return module not in _NOT_OPAQUE and classify_function(node) is OpKind.FLOAT


def route_opaque_functions(gm: fx.GraphModule, islands: dict[str, Island]) -> None:
    """Replace each call of an opaque function (:func:`_opaque_function`) that depends on the
    model's inputs by a call of a :class:`FunctionCall` island at
    ``<owner>.<function name>[_<k>]`` (recorded in ``islands``).  A call on parameters only
    (e.g. computing a bias table) stays: it is a weight computation."""
    const = constant_nodes(gm)
    for node in list(gm.graph.nodes):
        if node in const or not _opaque_function(node):
            continue
        owner = owner_of(node)
        base = f"{owner}.{node.target.__name__}" if owner else node.target.__name__
        path, k = base, 0
        while path in islands or _has_attr_path(gm, path):
            k += 1
            path = f"{base}_{k}"
        path = place_module(gm, path, FunctionCall(node.target))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(path, node.args, dict(node.kwargs))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        fn = node.target
        try:
            src = f"{inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]}: def {fn.__name__}"
        except (OSError, TypeError):
            src = f"{fn.__module__}.{fn.__qualname__}"
        islands[path] = Island(path, f"{fn.__module__}.{fn.__qualname__} is a function torch.fx "
                               "does not trace into (torch.fx.wrap)", src)
    gm.recompile()


def _has_attr_path(gm: fx.GraphModule, path: str) -> bool:
    obj: Any = gm
    for part in path.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _absorb_float_functional(gm: fx.GraphModule, root: nn.Module) -> None:
    """``ff.add(x, y)`` traces to ``torch.add`` + ``ff.activation_post_process``: name the op
    after the FloatFunctional module and drop the identity."""
    calls: dict[str, int] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not node.target.endswith(".activation_post_process"):
            continue
        owner = node.target.rsplit(".", 1)[0]
        try:
            owner_mod = root.get_submodule(owner)  # gm only holds a stand-in container
        except AttributeError:
            continue
        if type(owner_mod).__name__ not in ("FloatFunctional", "QFunctional"):
            continue
        src = node.args[0]
        k = calls.get(owner, 0)
        calls[owner] = k + 1
        if isinstance(src, fx.Node):
            set_name_override(src, owner if k == 0 else f"{owner}_{k}")
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.lint()


def _drop_identities(gm: fx.GraphModule) -> None:
    """``nn.Identity`` calls are no-ops (e.g. a BatchNorm that ``fold_bn`` folded away): they
    are removed so that patterns see through them (conv -> Identity -> relu fuses like
    conv -> relu, with no quantizer in between)."""
    for node in list(gm.graph.nodes):
        if (node.op == "call_module" and len(node.args) == 1 and not node.kwargs
                and type(gm.get_submodule(node.target)) is nn.Identity):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.lint()


def propagate_values(
    gm: fx.GraphModule, example_inputs: tuple[Any, ...], keep_args: frozenset[str] = frozenset()
) -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """Run the example inputs through ``gm`` and record a :class:`ValueInfo` on every node.

    Returns ``(args, kwargs)`` of the first call of each module path in ``keep_args``.
    """
    kept: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    class _Recorder(fx.Interpreter):
        def call_module(self, target, args, kwargs):  # type: ignore[override]
            if target in keep_args and target not in kept:
                kept[target] = (tuple(args), dict(kwargs))
            return super().call_module(target, args, kwargs)

        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            set_value_info(n, ValueInfo.of(out))
            return out

    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            _Recorder(gm).run(*example_inputs)
    finally:
        gm.train(was_training)
    return kept


def unspecified_defaults(module: nn.Module, inputs: ModelInputs) -> dict[str, Any]:
    """The non-tensor defaults of the parameters of ``module.forward`` that ``inputs`` leaves
    out (``mask=None``, ``scale=1.0``, keyword-only flags): traced as constants.

    Traced as placeholders instead, ``if mask is not None:`` would take the branch for a value
    the example inputs never pass.  The traced graph asserts the value it was specialised on.
    """
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    out: dict[str, Any] = {}
    for i, p in enumerate(params):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
            continue
        given = i < len(inputs.args) or p.name in inputs.kwargs
        if not given and not isinstance(p.default, torch.Tensor):
            out[p.name] = p.default
    return out


def _positional(model: nn.Module, inputs: ModelInputs) -> tuple[Any, ...]:
    """``inputs`` as the positional arguments of the traced graph: one per parameter of
    ``model.forward`` (keyword inputs bound by name, defaults filled in)."""
    if not inputs.kwargs:
        return inputs.args
    sig = inspect.signature(model.forward)
    try:
        bound = sig.bind(*inputs.args, **inputs.kwargs)
    except TypeError as exc:
        raise DataError(
            f"the example inputs do not match {type(model).__name__}.forward"
            f"{bounded(sig, 160)}: {bounded(exc, 120)}; pass keyword inputs by the names of "
            "forward's parameters"
        ) from None
    bound.apply_defaults()
    return tuple(bound.arguments[name] for name, p in sig.parameters.items()
                 if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def check_inputs_fit(model: nn.Module, inputs: ModelInputs, what: str) -> None:
    """Run ``model`` (eval mode, no gradients) on a copy of ``inputs`` (a model that changes
    its input in place leaves the caller's alone): :class:`DataError` naming the innermost
    module that raised, the inputs' shapes and the failing source line when it cannot run on
    them (fxquant's own errors pass through); returns otherwise."""
    stack: list[str] = []
    hooks = []
    for name, mod in model.named_modules():
        def enter(_m: nn.Module, _a: Any, _name: str = name) -> None:
            stack.append(_name)

        def leave(_m: nn.Module, _a: Any, _o: Any) -> None:
            stack.pop()

        hooks += [mod.register_forward_pre_hook(enter), mod.register_forward_hook(leave)]
    try:
        with torch.no_grad(), eval_mode(model):
            call_model(model, inputs.detached_copy())
    except FxquantError:
        raise
    except Exception as own:
        inner = stack[-1] if stack else ""
        first = str(own).strip().splitlines()[0] if str(own).strip() else ""
        where = f"module {bounded(inner)!r} ({type(model.get_submodule(inner)).__name__})" \
            if inner else f"{type(model).__name__}.forward"
        raise DataError(
            f"{what}: {type(model).__name__} cannot run on the example inputs "
            f"({inputs.describe()}): {where} raised {type(own).__name__}: {bounded(first, 200)} "
            f"(at {bounded(trace_failure_site(own), 120)}); pass one batch the model accepts"
        ) from own
    finally:
        for h in hooks:
            h.remove()


def capture(
    model: nn.Module, example_inputs: ModelInputs | tuple[Any, ...],
    leaf_names: frozenset[str] = frozenset(),
) -> tuple[fx.GraphModule, dict[str, Island]]:
    """Trace ``model`` (islands for untraceable submodules) and annotate values.

    ``example_inputs``: one call's inputs (:class:`~fxquant.modelio.ModelInputs`, or a tuple of
    positional inputs).  Parameters of ``forward`` it leaves out are fixed to their defaults
    (:func:`unspecified_defaults`).  Raises :class:`RootTraceError` when the root ``forward``
    cannot be traced.
    """
    if not isinstance(example_inputs, ModelInputs):
        example_inputs = ModelInputs(tuple(example_inputs))
    tracer = _Tracer(leaf_names)
    concrete = unspecified_defaults(model, example_inputs)
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
    except Exception as exc:
        raise RootTraceError(_reason(exc), trace_failure_site(exc)) from exc
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    _absorb_float_functional(gm, model)
    _drop_identities(gm)
    route_opaque_functions(gm, tracer.islands)
    gm.recompile()
    island_args = propagate_values(gm, _positional(model, example_inputs),
                                   frozenset(tracer.islands))
    for name, isl in tracer.islands.items():
        object.__setattr__(isl, "example_args", island_args.get(name))
    return gm, tracer.islands
