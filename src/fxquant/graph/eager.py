"""Eager capture for modules whose own ``forward`` cannot be symbolically traced.

The untraceable ``forward`` keeps running as real Python, so control flow just works, and every
module keeps its identity, class and attributes (code like
``self.embeddings.patch.proj.weight.dtype`` in that ``forward`` still works):

* the *units* are the direct children it calls (looking through ``ModuleList`` /
  ``ModuleDict`` and uncalled ``Sequential`` containers);
* a leaf unit (conv, linear, norm, activation ...) is quantized in place: weight quantizer
  (``QuantConv2d`` etc.), input and output quantizers, by a class swap of that module;
* any other unit is traced with the arguments seen in one example run and prepared like a
  graph; its module then runs that graph as its ``forward`` (quantizers are transplanted into
  its own hierarchy).  A unit that cannot be traced is captured eagerly in turn;
* ops that ``forward`` (or helpers it calls) executes itself — ``x + y``, ``torch.cat``,
  ``x.mean()`` — are seen through a ``TorchFunctionMode`` and get output quantizers keyed by
  call site (``_generated_<op>_<n>`` in first-execution order).

Units not called with the example inputs (e.g. a branch not taken) stay float and are listed.
A call-site op that the example run did not reach runs in float with a warning (once per call
site); a call-site quantizer that calibration did not reach raises :class:`QuantizerError`
naming it and its call site when it is used outside calibration.

Size (~760 lines): the phases of eager capture -- discovering the units a forward calls, the
``TorchFunctionMode`` that quantizes glue ops by call site, tracing each unit, quantizing
leaves -- share the call-site keys and the per-unit state; they are one algorithm, entered
through :func:`prepare_eager` / :func:`prepare_islands`.
"""

from __future__ import annotations

import inspect
import warnings
import weakref
from collections import defaultdict
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .. import nn as qnn
from ..backends import BackendProfile
from ..fake_quant import QuantizerError
from ..qconfig import OpInfo, OpKind, QconfigSetter, resolve_qconfig, validate_setters
from .capture import (
    FunctionCall,
    Island,
    RootTraceError,
    _Tracer,
    propagate_values,
    route_opaque_functions,
    trace_failure_site,
)
from .insert import OpQuantizers
from .library_modules import (
    call_is_masked,
    is_library_module,
    quantize_library_module,
    record_float_ops,
)
from .naming import assign_names
from .patterns import (
    FUNCTION_KINDS,
    FUNCTIONAL_WEIGHT_AXIS,
    METHOD_KINDS,
    WEIGHT_ARG,
    classify_module,
    function_name,
    interpolate_kind,
    pad_kind,
)
from .report import OpRecord, PrepareReport
from .stages import GraphPass, PrepareContext, prepare_graph, set_submodule, weight_quantizer

__all__ = ["prepare_eager", "prepare_islands"]

_DUNDER = {
    "__add__": "add",
    "__radd__": "add",
    "__iadd__": "add",
    "__sub__": "sub",
    "__rsub__": "sub",
    "__mul__": "mul",
    "__rmul__": "mul",
    "__imul__": "mul",
    "__truediv__": "div",
    "__rtruediv__": "div",
    "__matmul__": "matmul",
    "__neg__": "neg",
}
_TORCH_DIR = inspect.getfile(torch).rsplit("/", 1)[0]
_MODULES_DIR = "/nn/modules/"
_QUANTIZABLE = tuple(qnn.FLOAT_TO_QUANT)  # module types that carry a quantizable weight
Call = tuple[tuple[Any, ...], dict[str, Any]]


def _glue_kind(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, OpKind]:
    name = getattr(func, "__name__", "")
    if name in _DUNDER:
        return _DUNDER[name], OpKind.COMPUTE
    if func is F.pad:
        a = dict(zip(("input", "pad", "mode", "value"), args, strict=False)) | kwargs
        return "pad", pad_kind(a.get("mode", "constant"), a.get("value"))
    if func is F.interpolate:
        return "interpolate", interpolate_kind(kwargs.get("mode", "nearest"))
    if func in FUNCTION_KINDS:
        return function_name(func), FUNCTION_KINDS[func]
    kind = METHOD_KINDS.get(name)
    if kind is not None:
        return function_name(name), kind
    return function_name(name), OpKind.FLOAT


class _GlueMode(TorchFunctionMode):
    """Quantizes outputs of ops executed on behalf of one module's own ``forward``."""

    def __init__(self, owner: nn.Module, code: Any, discover: _Discovery | None = None) -> None:
        super().__init__()
        self.owner = owner
        self.code = code
        self.discover = discover
        self.counts: dict[tuple[tuple[str, int], str], int] = defaultdict(int)

    def _caller_site(self) -> tuple[str, int] | None:
        """(file, line) of the user code that called the op when it runs for the owner's
        forward (directly or through helpers) and not inside a child module; else None."""
        f = inspect.currentframe()
        f = f.f_back.f_back if f is not None and f.f_back is not None else None
        site: tuple[str, int] | None = None
        while f is not None:
            fname = f.f_code.co_filename
            if fname.startswith(_TORCH_DIR):
                if _MODULES_DIR in fname:
                    return None  # inside a child module's forward
            elif fname.startswith("<eval_with_key>"):
                return None  # inside a traced child
            else:
                if site is None:
                    site = (fname, f.f_lineno)
                if f.f_code is self.code or f.f_locals.get("self") is self.owner:
                    return site
            f = f.f_back
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        base, kind = _glue_kind(func, args, kwargs)
        disc = self.discover
        if disc is not None and args:
            disc.consumed_by(args[0], base)
        if disc is not None and disc.constant_inputs(base, args, kwargs):
            out = func(*args, **kwargs)  # computed from parameters / shapes only: a constant
            disc.mark_constant(out)
            if kind in (OpKind.COMPUTE, OpKind.ACTIVATION, OpKind.WEIGHTED):
                site = self._caller_site()
                if site is not None:
                    k = self.counts[(site, base)]
                    self.counts[(site, base)] += 1
                    disc.constant_ops.add(f"{site[0]}:{site[1]}:{base}:{k}")
            return out
        if kind not in (OpKind.COMPUTE, OpKind.ACTIVATION, OpKind.WEIGHTED):
            if kind is OpKind.SHARE and disc is not None and args:
                out = func(*args, **kwargs)
                disc.moved(args[0], out)  # a reader after a view reads the producer's values
                return out
            if kind is not OpKind.FLOAT or self.discover is None:
                return func(*args, **kwargs)
            out = func(*args, **kwargs)
            if _computes_float(args, kwargs, out):  # an op without a pattern: reported
                site = self._caller_site()
                if site is not None:
                    k = self.counts[(site, base)]
                    self.counts[(site, base)] += 1
                    self.discover.float_ops.setdefault(f"{site[0]}:{site[1]}:{base}:{k}", base)
            return out
        site = self._caller_site()
        if site is None:
            return func(*args, **kwargs)
        k = self.counts[(site, base)]
        self.counts[(site, base)] += 1
        key = f"{site[0]}:{site[1]}:{base}:{k}"
        local = self.owner.__dict__.get("_fxq_glue_sites", {}).get(key)
        holder = getattr(self.owner, local) if local is not None else None
        widx = WEIGHT_ARG.get(func)
        if holder is not None and widx is not None and "weight_fake_quant" in holder._modules:
            args = (*args[:widx], holder.weight_fake_quant(args[widx]), *args[widx + 1:])
        if isinstance(holder, qnn.ScaledDotProductAttention):
            out = holder(*args, **kwargs)  # quantized inside
        else:
            out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return out
        if self.discover is not None:
            if not bool(torch.isfinite(out).all()):
                self.discover.nonfinite.add(key)
            weight = args[widx] if widx is not None and len(args) > widx else None
            is_param = isinstance(weight, nn.Parameter)
            self.discover.glue_ops.setdefault(key, (base, func if is_param else None))
            self.discover.produced(out, key)
            if func is F.scaled_dot_product_attention and call_is_masked(
                    qnn.ScaledDotProductAttention(), args, kwargs):
                self.discover.masked.add(key)
        if holder is None:
            if self.discover is None:
                _warn_unseen(self.owner, key, base, site)
            return out
        fq = holder.output_fake_quant
        try:
            return fq(out)
        except QuantizerError as err:
            if bool(fq.calibrated):
                raise
            raise QuantizerError(
                f"call-site quantizer {fq.name!r} ({base} at {site[0]}:{site[1]}) has no scale: "
                "calibration never reached this op; run fxquant.calibrate with data that "
                "reaches it"
            ) from err


_FACTORIES = frozenset({
    "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "zeros_like", "ones_like",
    "full_like", "empty_like",
})  # fmt: skip


def _tensors(values: Any) -> list[torch.Tensor]:
    out, stack = [], [values]
    while stack:
        v = stack.pop()
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (tuple, list)):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
    return out


def _holds_float(values: Any) -> bool:
    stack = [values]
    while stack:
        v = stack.pop()
        if isinstance(v, torch.Tensor):
            if v.is_floating_point():
                return True
        elif isinstance(v, (tuple, list)):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
    return False


def _computes_float(args: Any, kwargs: dict[str, Any], out: Any) -> bool:
    """Float tensors computed from at least one float tensor (not a factory or a cast)."""
    return _holds_float(out) and _holds_float((args, kwargs))


def _warn_unseen(owner: nn.Module, key: str, base: str, site: tuple[str, int]) -> None:
    """An op the example run of ``prepare`` did not reach: it has no quantizer (once per site)."""
    seen = owner.__dict__.get("_fxq_glue_seen")
    warned = owner.__dict__.setdefault("_fxq_glue_warned", set())
    if seen is None or key in seen or key in warned:
        return
    warned.add(key)
    warnings.warn(
        f"fxquant: {base} at {site[0]}:{site[1]} did not run with the example inputs given to "
        "prepare, so it has no quantizer and runs in float; prepare with example inputs that "
        "reach it",
        UserWarning,
        stacklevel=4,
    )


def _forward_code(forward: Any) -> Any:
    """The code object of ``forward`` itself: decorators (transformers wraps every ``forward``
    in one shared ``wrapped_func``) are looked through, so frames of another module's forward
    are not mistaken for this one."""
    return inspect.unwrap(forward).__code__


def _original(self: nn.Module, swapped: Any) -> type:
    """The class whose ``forward`` the swapped-in ``forward`` wraps: the one after the class
    :func:`_swap_forward` made, wherever that is in the MRO (``torch.export`` puts a proxy class
    of its own in front while it traces)."""
    mro = type(self).__mro__
    for i, cls in enumerate(mro[:-1]):
        if cls.__dict__.get("forward") is swapped:
            return mro[i + 1]
    return mro[1]


def _eager_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    base = _original(self, _eager_forward)
    with _GlueMode(self, _forward_code(base.forward)):
        return base.forward(self, *args, **kwargs)


def _swap_forward(module: nn.Module, prefix: str, forward: Any) -> None:
    cls = type(module)
    module.__class__ = type(
        f"{prefix}{cls.__name__}", (cls,), {"forward": forward, "__module__": cls.__module__}
    )


class _Discovery:
    """What one example run of an untraceable module showed."""

    def __init__(self) -> None:
        self.calls: dict[str, list[Call]] = defaultdict(list)
        self.glue_ops: dict[str, tuple[str, Any]] = {}  # key -> (op, weighted function)
        self.nonfinite: set[str] = set()
        self.masked: set[str] = set()  # attention call sites given a mask
        self.float_ops: dict[str, str] = {}  # key -> op without a quantization pattern
        self.constant_ops: set[str] = set()  # call sites computing from constants only
        self._constants: dict[int, weakref.ref] = {}  # by identity (tensors compare by value)
        self.consumers: dict[str, set[str]] = defaultdict(set)  # key -> ops reading its output
        self._outputs: dict[int, tuple[str, weakref.ref]] = {}

    def produced(self, out: torch.Tensor, key: str) -> None:
        """``out`` is the output of call site ``key``."""
        self._outputs[id(out)] = (key, weakref.ref(out))

    def moved(self, value: Any, out: Any) -> None:
        """``out`` only moves ``value``'s numbers (a view, reshape, transpose ...): ops reading it
        count as readers of the call site that produced ``value``."""
        if isinstance(value, torch.Tensor) and isinstance(out, torch.Tensor):
            hit = self._outputs.get(id(value))
            if hit is not None and hit[1]() is value:
                self.produced(out, hit[0])

    def consumed_by(self, value: Any, base: str) -> None:
        """Op ``base`` reads ``value`` (its first argument): recorded for the call site that
        produced it, if any (softmax reading attention scores: :func:`_add_glue_quantizers`)."""
        if isinstance(value, torch.Tensor):
            hit = self._outputs.get(id(value))
            if hit is not None and hit[1]() is value:
                self.consumers[hit[0]].add(base)

    def constant_inputs(self, base: str, args: Any, kwargs: dict[str, Any]) -> bool:
        """An op whose tensors are all parameters, buffers or other constants (or a factory:
        ``torch.arange``, ``x.new_zeros``): its result depends on no activation."""
        if base in _FACTORIES:
            return True
        return all(self._is_constant(t) for t in _tensors((args, kwargs)))

    def _is_constant(self, t: torch.Tensor) -> bool:
        ref = self._constants.get(id(t))
        return ref is not None and ref() is t

    def mark_constant(self, out: Any) -> None:
        for t in _tensors(out):
            self._constants[id(t)] = weakref.ref(t)


def _candidates(module: nn.Module, path: str = "") -> list[tuple[str, nn.Module]]:
    """Children, looking through containers that may never be called themselves."""
    out = []
    for name, child in module.named_children():
        p = f"{path}{name}"
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            out.extend(_candidates(child, p + "."))
        else:
            out.append((p, child))
            if isinstance(child, nn.Sequential):
                out.extend(_candidates(child, p + "."))
    return out


def _discover(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Discovery:
    cap = _Discovery()
    handles = []
    for path, child in _candidates(module):

        def hook(mod, a, kw, _p=path):
            cap.calls[_p].append((a, kw))

        handles.append(child.register_forward_pre_hook(hook, with_kwargs=True))
    for t in (*module.parameters(), *module.buffers()):
        cap.mark_constant(t)
    was_training = module.training
    module.eval()
    fwd = type(module).forward
    try:
        with torch.no_grad(), _GlueMode(module, _forward_code(fwd), discover=cap):
            fwd(module, *args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return cap


def _units(cands: list[tuple[str, nn.Module]], cap: _Discovery) -> list[tuple[str, nn.Module]]:
    """Called candidates that are not inside another called candidate."""
    called = [p for p, _ in cands if cap.calls.get(p)]
    return [
        (p, m)
        for p, m in cands
        if p in called and not any(p.startswith(c + ".") for c in called if c != p)
    ]


def _same_call_shape(calls: list[Call]) -> bool:
    def sig(c: Call):
        a, kw = c
        norm = lambda v: "<tensor>" if isinstance(v, torch.Tensor) else repr(v)  # noqa: E731
        return tuple(norm(v) for v in a), tuple(sorted((k, norm(v)) for k, v in kw.items()))

    return all(sig(c) == sig(calls[0]) for c in calls)


def _get(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set(root: nn.Module, path: str, value: Any) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = root
    for part in parent_path.split(".") if parent_path else []:
        nxt = getattr(parent, part, None)
        if not isinstance(nxt, nn.Module):
            nxt = OpQuantizers()
            parent.add_module(part, nxt)
        parent = nxt
    if isinstance(value, nn.Module):
        if getattr(parent, leaf, None) is not value:
            if isinstance(parent, nn.Module) and leaf in parent._modules:
                parent._modules[leaf] = value
            else:
                parent.add_module(leaf, value)
    else:
        setattr(parent, leaf, value)


def prepare_eager(
    model: nn.Module,
    inputs: tuple[Any, ...],
    setters: tuple[QconfigSetter, ...],
    profile: BackendProfile,
    err: RootTraceError,
    *,
    leaf_modules: Any = (),
    skip_modules: frozenset[str] = frozenset(),
    fold_bn: bool = True,
    kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Prepare ``model`` (already a private copy) whose ``forward`` failed to trace, in place."""
    report = PrepareReport(profile=profile, capture_mode="eager")
    report.root_failure = (
        f"forward is not traceable at {err.source} ({err.reason}); it runs eagerly: its "
        "children are quantized separately and its own ops get call-site quantizers"
    )
    report.num_inputs = len(inputs)
    ctx = PrepareContext(tuple(setters), profile, frozenset(leaf_modules),
                         frozenset(skip_modules), fold_bn, report)
    _prepare_eager(model, tuple(inputs), dict(kwargs or {}), ctx, "", "")
    validate_setters(setters, sorted(report.ops) + [p for p, _ in model.named_modules() if p])
    model._fxquant_report = report  # type: ignore[attr-defined]
    return model


def prepare_islands(
    gm: fx.GraphModule,
    islands: dict[str, Island],
    ctx: PrepareContext,
    prefix: str = "",
    path_prefix: str = "",
) -> None:
    """Quantize inside float islands too: their forward runs eagerly, children are captured."""
    for name, isl in islands.items():
        mod = gm.get_submodule(name)
        opaque_call = isinstance(mod, FunctionCall)
        if isl.example_args is None or not (opaque_call or any(True for _ in mod.children())):
            continue
        isl_args, isl_kwargs = isl.example_args
        _prepare_eager(mod, tuple(isl_args), dict(isl_kwargs or {}), ctx, f"{prefix}{name}.",
                       f"{path_prefix}{name}.")
        set_submodule(gm, name, mod)
        rec = ctx.report.ops.get(f"{prefix}{name}")
        if rec is not None:
            rec.float_reason = None  # its ops are quantized or listed on their own
            ctx.report.notes[rec.name] = (
                f"tracing failed at {isl.source} ({isl.reason}); its forward runs eagerly: "
                "children and its own ops are quantized (or listed as float ops)"
            )


def _prepare_eager(
    model, args, kwargs, ctx: PrepareContext, prefix: str, path_prefix: str
) -> None:
    cands = _candidates(model)
    cap = _discover(model, args, kwargs)
    units = _units(cands, cap)
    unit_paths = {p for p, _ in units}
    used = {id(t) for _, u in units for t in u.parameters()}
    for path, child in cands:
        if path in unit_paths or any(path.startswith(u + ".") for u in unit_paths):
            continue
        if any(p.startswith(path + ".") for p in unit_paths):
            continue  # a container whose children are units
        params = list(child.parameters())
        if params and all(id(t) in used for t in params):
            continue  # its weights are tied to a called module's (e.g. T5's ``shared``)
        if any(isinstance(m, _QUANTIZABLE) for m in child.modules()):
            full = f"{prefix}{path}"
            ctx.report.ops[full] = OpRecord(
                full,
                type(child).__name__,
                OpKind.FLOAT,
                None,
                {},
                "not called with the example inputs (e.g. a branch not taken): runs in float",
            )
    for path, child in units:
        full = f"{prefix}{path}"
        if full in ctx.skip:
            ctx.report.ops[full] = OpRecord(
                full,
                type(child).__name__,
                OpKind.FLOAT,
                None,
                {},
                "skipped by the user (skip_modules)",
            )
            continue
        if _is_leaf(child, full, ctx):
            _set(model, path, _quantize_leaf(child, full, f"{path_prefix}{path}", ctx,
                                             cap.calls[path][0]))
            continue
        calls = cap.calls[path]
        a, kw = calls[0]
        gm, _ = _trace_unit(child, a, kw, calls, ctx, prefix=f"{full}.")
        if gm is None:
            _prepare_eager(child, a, kw, ctx, f"{full}.", f"{path_prefix}{path}.")
            continue
        _graph_unit(child, gm, a, kw, ctx, full, f"{path_prefix}{path}.")
    _add_glue_quantizers(model, cap, ctx, prefix, path_prefix)
    _swap_forward(model, "Eager", _eager_forward)


def _is_leaf(m: nn.Module, full: str, ctx: PrepareContext) -> bool:
    return _Tracer(ctx.leaf_modules).is_leaf_module(m, full)


def _trace_unit(child, a, kw, calls, ctx, prefix):
    """Trace ``child`` with the non-tensor arguments of its example call fixed."""
    if not _same_call_shape(calls):
        return None, RootTraceError("called with differing non-tensor arguments", "<calls>")
    try:
        sig = inspect.signature(child.forward)
        bound = sig.bind_partial(*a, **kw)
    except (TypeError, ValueError) as exc:
        return None, RootTraceError(str(exc), "<signature>")
    concrete: dict[str, Any] = {}
    for name, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            if name in bound.arguments:
                return None, RootTraceError("variadic arguments in the call", "<signature>")
            continue
        if name in bound.arguments:
            v = bound.arguments[name]
            if not isinstance(v, torch.Tensor):
                concrete[name] = v
        elif p.default is not p.empty:
            concrete[name] = p.default
    tracer = _Tracer(frozenset(p[len(prefix) :] for p in ctx.leaf_modules if p.startswith(prefix)))
    try:
        graph = tracer.trace(child, concrete_args=concrete or None)
    except Exception as exc:  # anything untraceable is captured eagerly
        return None, RootTraceError(
            f"{type(exc).__name__}: {exc}".splitlines()[0], trace_failure_site(exc)
        )
    params = [n for n, p in sig.parameters.items()]
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for node, pname in zip(placeholders, params, strict=False):
        if not str(node.target).startswith("*"):
            node.target = pname  # keep the signature's names so keyword calls still work
    gm = fx.GraphModule(child, graph, type(child).__name__)
    route_opaque_functions(gm, tracer.islands)
    gm._fxq_islands = tracer.islands  # type: ignore[attr-defined]
    return gm, None


def _graph_unit(child, gm, a, kw, ctx: PrepareContext, full: str, path_prefix: str) -> None:
    """Prepare the traced ``gm`` of ``child`` and make ``child`` run it, quantizers included."""
    islands = gm._fxq_islands
    sig = inspect.signature(child.forward)
    bound = sig.bind_partial(*a, **kw)
    bound.apply_defaults()
    flat = tuple(
        bound.arguments[n]
        for n, p in sig.parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )
    island_args = propagate_values(gm, flat, frozenset(islands))
    for iname, isl in islands.items():
        object.__setattr__(isl, "example_args", island_args.get(iname))
        ctx.report.islands[f"{full}.{iname}"] = isl
    rename = {n: f"{full}.{n}" for n in assign_names(gm).values()}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, node in enumerate(placeholders):
        rename[str(node.target)] = f"{full}.input_{i}"
    prepare_graph(GraphPass(gm, ctx, islands, rename, path_prefix))
    prepare_islands(gm, islands, ctx, prefix=f"{full}.", path_prefix=path_prefix)
    for node in gm.graph.nodes:
        if node.op in ("call_module", "get_attr"):
            _set(child, node.target, _get(gm, node.target))
    child.__dict__["_fxq_spec"] = (sig, _specialized(sig, bound))
    child.__dict__["_fxq_graph_forward"] = type(gm).forward
    _swap_forward(child, "Traced", _traced_forward)


def _specialized(sig: inspect.Signature, bound: inspect.BoundArguments) -> dict[str, Any]:
    """The non-tensor argument values the trace was specialized on."""
    return {n: v for n, v in bound.arguments.items()
            if sig.parameters[n].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                              inspect.Parameter.VAR_KEYWORD)
            and not isinstance(v, torch.Tensor)}


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # values without a usable == are treated as different
        return False


def _traced_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """Run the prepared graph when the call matches the example call's non-tensor arguments
    (``None`` masks, flags); otherwise the original forward (weights stay quantized)."""
    sig, spec = self.__dict__["_fxq_spec"]
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    if all(_same(bound.arguments.get(k), v) for k, v in spec.items()):
        return self.__dict__["_fxq_graph_forward"](self, *args, **kwargs)
    if not self.__dict__.get("_fxq_warned"):
        self.__dict__["_fxq_warned"] = True
        diff = [k for k, v in spec.items() if not _same(bound.arguments.get(k), v)]
        warnings.warn(
            f"fxquant: {_original(self, _traced_forward).__name__} was captured with {diff} = "
            f"{[spec[k] for k in diff]} but is now called with other values; this call runs "
            "its original forward (weights quantized, activations inside it float). Prepare "
            "with example inputs that use these arguments as in deployment.",
            stacklevel=2,
        )
    return _original(self, _traced_forward).forward(self, *args, **kwargs)


def _quantize_leaf(m: nn.Module, full: str, path: str, ctx: PrepareContext,
                   call: Call) -> nn.Module:
    """Quantize a leaf module in place: weight, first input and output quantizers (a library
    module: inside, all its tensor inputs and its first output; ``call``: its example call)."""
    kind = classify_module(m)
    if kind is OpKind.FLOAT and full in ctx.leaf_modules:
        kind = OpKind.COMPUTE
    info = OpInfo(full, type(m).__name__, kind, m)
    q = resolve_qconfig(ctx.setters, info, ctx.setter_context) if kind is not OpKind.FLOAT else None
    rec = OpRecord(full, type(m).__name__, kind, q, {})
    ctx.report.ops[full] = rec
    if kind is OpKind.FLOAT:
        rec.float_reason = f"no quantization pattern for {type(m).__name__!r}"
        return m
    if q is None or q.is_float:
        rec.float_reason = (
            "no qconfig: no setter covers this op" if q is None else "kept float by its qconfig"
        )
        return m
    if kind in (OpKind.SHARE, OpKind.DEQUANT_STUB):
        return m
    if is_library_module(m):
        m, roles = quantize_library_module(m, q, ctx.profile, full, path, io=True)
        rec.quantizers.update(roles)
        record_float_ops(ctx.report, full, m, call_is_masked(m, *call))
        return m
    if kind is OpKind.WEIGHTED and q.weight is not None and type(m) in qnn.FLOAT_TO_QUANT:
        m = qnn.FLOAT_TO_QUANT[type(m)].from_float(m, weight_quantizer(q.weight, m, full))
        rec.quantizers["weight"] = f"{path}.weight_fake_quant"
    inq = q.input or (q.output if kind is not OpKind.QUANT_STUB else None)
    if inq is not None:
        fq = inq()
        fq.name = f"{full}.input_0"
        m.add_module("input_fake_quant_0", fq)
        rec.quantizers["input_0"] = f"{path}.input_fake_quant_0"
    if q.output is not None:
        fq = q.output()
        fq.name = full
        m.add_module("output_fake_quant", fq)
        rec.quantizers["output"] = f"{path}.output_fake_quant"
    _swap_forward(m, "Quantized", _leaf_forward)
    return m


def _leaf_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    base = _original(self, _leaf_forward)
    inq = self._modules.get("input_fake_quant_0")
    if inq is not None and args and isinstance(args[0], torch.Tensor):
        args = (inq(args[0]), *args[1:])
    out = base.forward(self, *args, **kwargs)
    outq = self._modules.get("output_fake_quant")
    if outq is not None and isinstance(out, torch.Tensor):
        out = outq(out)
    return out


def _add_glue_quantizers(
    model, cap: _Discovery, ctx: PrepareContext, prefix: str, path_prefix: str
) -> None:
    counts: dict[str, int] = defaultdict(int)
    sites: dict[str, str] = {}

    for key, (base, weighted) in cap.glue_ops.items():
        local = f"_generated_{base}_{counts[base]}"
        counts[base] += 1
        shown = f"{prefix}{local}"
        kind = OpKind.WEIGHTED if weighted is not None else OpKind.COMPUTE
        q = resolve_qconfig(ctx.setters, OpInfo(shown, base, kind), ctx.setter_context)
        rec = OpRecord(shown, base, kind, q, {})
        ctx.report.ops[shown] = rec
        if key in cap.nonfinite:
            rec.float_reason = "produces Inf / NaN in the float model (e.g. a mask): kept float"
            continue
        if q is None or q.output is None:
            rec.float_reason = "no qconfig: no setter covers this op"
            continue
        float_readers = cap.consumers.get(key, set()) & ctx.profile.float_input_ops
        if float_readers and weighted is None and base != qnn.ScaledDotProductAttention.op_type:
            # as plan_placement does for a graph: the runtime then runs the reader in float
            # (ONNX Runtime: softmax, not QLinearSoftmax) and this op with a float output
            rec.float_reason = (f"its output feeds {sorted(float_readers)[0]}, whose input the "
                                "profile keeps float (float_input_ops)")
            continue
        fq = q.output()
        fq.name = shown
        holder = OpQuantizers()
        if base == qnn.ScaledDotProductAttention.op_type:
            holder, roles = quantize_library_module(
                qnn.ScaledDotProductAttention(), q, ctx.profile, shown, f"{path_prefix}{local}"
            )
            rec.quantizers.update(roles)
            record_float_ops(ctx.report, shown, holder, key in cap.masked)
        holder.add_module("output_fake_quant", fq)
        rec.quantizers["output"] = f"{path_prefix}{local}.output_fake_quant"
        if weighted is not None and q.weight is not None:
            wfq = weight_quantizer(q.weight, None, shown, FUNCTIONAL_WEIGHT_AXIS.get(weighted, 0))
            holder.add_module("weight_fake_quant", wfq)
            rec.quantizers["weight"] = f"{path_prefix}{local}.weight_fake_quant"
        model.add_module(local, holder)
        sites[key] = local
    for base in cap.float_ops.values():
        shown = f"{prefix}_generated_{base}_{counts[base]}"
        counts[base] += 1
        ctx.report.ops[shown] = OpRecord(shown, base, OpKind.FLOAT, None, {},
                                         f"no quantization pattern for {base!r}")
    model.__dict__["_fxq_glue_sites"] = sites
    model.__dict__["_fxq_glue_seen"] = frozenset(cap.glue_ops) | frozenset(cap.constant_ops)
