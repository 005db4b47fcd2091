"""Eager capture for modules whose own ``forward`` cannot be symbolically traced.

The untraceable ``forward`` keeps running as real Python, so control flow just works:

* each direct child module it calls is captured on its own (traced with the arguments seen in
  an example run; recursively eager if it cannot be traced) and quantized as usual;
* ops that ``forward`` itself executes (``x + y``, ``torch.cat``, ``x.mean()``) are seen through
  a ``TorchFunctionMode`` and get output quantizers keyed by call site
  (``_generated_<op>_<n>`` in first-execution order), so nothing is silently left float.

Only frames of that ``forward`` count as its own ops; ops inside children are theirs.
Call sites that the example run did not reach stay float and are listed by ``summary``.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.overrides import TorchFunctionMode

from ..backends import BackendProfile
from ..fake_quant import FakeQuantize
from ..qconfig import OpInfo, OpKind, SetterContext, resolve_qconfig, validate_setters
from .capture import RootTraceError, _Tracer, propagate_values, trace_failure_site
from .insert import OpQuantizers
from .patterns import FUNCTION_KINDS, METHOD_KINDS, function_name
from .report import OpRecord, PrepareReport

__all__ = ["prepare_eager", "EagerCapture"]

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


def _glue_kind(func: Any) -> tuple[str, OpKind]:
    name = getattr(func, "__name__", "")
    if name in _DUNDER:
        return _DUNDER[name], OpKind.COMPUTE
    if func in FUNCTION_KINDS:
        return function_name(func), FUNCTION_KINDS[func]
    kind = METHOD_KINDS.get(name)
    if kind is not None:
        return function_name(name), kind
    return function_name(name), OpKind.FLOAT


class _GlueMode(TorchFunctionMode):
    """Quantizes outputs of ops executed directly by one module's ``forward``."""

    def __init__(self, owner: nn.Module, discover: EagerCapture | None = None) -> None:
        super().__init__()
        self.owner = owner
        self.code = type(owner).__mro__[1].forward.__code__
        self.discover = discover
        self.counts: dict[tuple[tuple[str, int], str], int] = defaultdict(int)

    def _caller_site(self) -> tuple[str, int] | None:
        """(file, line) of the user code that called the op, when that code runs on behalf of
        the owner's forward (directly or through helper functions / methods) and not inside a
        child module; else None."""
        f = inspect.currentframe()
        f = f.f_back.f_back if f is not None and f.f_back is not None else None
        site: tuple[str, int] | None = None
        while f is not None:
            fname = f.f_code.co_filename
            if fname.startswith(_TORCH_DIR):
                if _MODULES_DIR in fname:
                    return None  # inside a child module's forward
            else:
                if site is None:
                    site = (fname, f.f_lineno)
                if f.f_code is self.code or f.f_locals.get("self") is self.owner:
                    return site
            f = f.f_back
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return out
        base, kind = _glue_kind(func)
        if kind not in (OpKind.COMPUTE, OpKind.ACTIVATION, OpKind.WEIGHTED):
            return out
        site = self._caller_site()
        if site is None:
            return out
        k = self.counts[(site, base)]
        self.counts[(site, base)] += 1
        key = f"{site[0]}:{site[1]}:{base}:{k}"
        if self.discover is not None:
            self.discover.glue_ops.setdefault(key, base)
        local = getattr(self.owner, "_fxq_glue_sites", {}).get(key)
        if local is None:
            return out
        return getattr(self.owner, local).output_fake_quant(out)


_TORCH_DIR = inspect.getfile(torch).rsplit("/", 1)[0]
_QUANTIZABLE = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.Embedding,
)
_MODULES_DIR = "/nn/modules/"


def _eager_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    with _GlueMode(self):
        return super(type(self), self).forward(*args, **kwargs)


class EagerCapture:
    """What one example run of an untraceable module showed."""

    def __init__(self) -> None:
        self.child_args: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] = defaultdict(list)
        self.glue_ops: dict[str, str] = {}


def _discover(module: nn.Module, inputs: tuple[Any, ...]) -> EagerCapture:
    cap = EagerCapture()
    handles = []
    for name, child in module.named_children():

        def hook(mod, args, kwargs, _name=name):
            cap.child_args[_name].append((args, kwargs))

        handles.append(child.register_forward_pre_hook(hook, with_kwargs=True))
    swapped = _swap_class(module)
    was_training = module.training
    module.eval()
    try:
        mode = _GlueMode(module, discover=cap)
        with torch.no_grad(), mode:
            super(type(module), module).forward(*inputs)
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
        if swapped:
            module.__class__ = type(module).__mro__[1]
    return cap


def _swap_class(module: nn.Module) -> bool:
    cls = type(module)
    if getattr(cls, "_fxq_eager", False):
        return False
    sub = type(
        f"Eager{cls.__name__}",
        (cls,),
        {"forward": _eager_forward, "_fxq_eager": True, "__module__": cls.__module__},
    )
    module.__class__ = sub
    return True


def _same_call_shape(calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> bool:
    def sig(c):
        args, kwargs = c
        return tuple(type(a) if isinstance(a, torch.Tensor) else repr(a) for a in args), sorted(
            kwargs
        )

    return all(sig(c) == sig(calls[0]) for c in calls) and not calls[0][1]


def _wrapper_for(
    name: str, child: nn.Module, args: tuple[Any, ...]
) -> tuple[nn.Module, dict[str, Any]]:
    """A root whose forward only calls ``child`` (so its ops are named relative to the parent)."""
    params = [f"{name}_in{i}" for i in range(len(args))]
    src = f"def forward(self, {', '.join(params)}):\n    return self.{name}({', '.join(params)})\n"
    ns: dict[str, Any] = {}
    exec(compile(src, f"<fxquant wrapper {name}>", "exec"), ns)
    cls = type(f"_Call_{name}", (nn.Module,), {"forward": ns["forward"]})
    root = cls()
    root.add_module(name, child)
    concrete = {p: a for p, a in zip(params, args, strict=False) if not isinstance(a, torch.Tensor)}
    return root, concrete


def prepare_eager(
    model: nn.Module,
    inputs: tuple[Any, ...],
    setters: tuple[Any, ...],
    profile: BackendProfile,
    err: RootTraceError,
    *,
    leaf_modules: Any = (),
    skip_modules: frozenset[str] = frozenset(),
    fold_bn: bool = True,
    prefix: str = "",
    report: PrepareReport | None = None,
    path_prefix: str | None = None,
) -> nn.Module:
    """Prepare ``model`` (already a private copy) whose ``forward`` failed to trace."""
    from .prepare import _prepare_graph, _prepare_islands

    top = report is None
    path_prefix = prefix if path_prefix is None else path_prefix
    if report is None:
        report = PrepareReport(profile=profile, capture_mode="eager")
        report.root_failure = (
            f"forward is not traceable at {err.source} ({err.reason}); it runs eagerly: its "
            "children are quantized separately and its own ops get call-site quantizers"
        )
        report.num_inputs = len(inputs)
    cap = _discover(model, inputs)
    leaf = frozenset(leaf_modules)
    for name, child in list(model.named_children()):
        full = f"{prefix}{name}"
        calls = cap.child_args.get(name)
        if not calls:
            if any(isinstance(m, _QUANTIZABLE) for m in child.modules()):
                report.ops[full] = OpRecord(
                    full,
                    type(child).__name__,
                    OpKind.FLOAT,
                    None,
                    {},
                    "not called with the example inputs (e.g. a branch not taken): runs in float",
                )
            continue
        if full in skip_modules:
            report.ops[full] = OpRecord(
                full,
                type(child).__name__,
                OpKind.FLOAT,
                None,
                {},
                "skipped by the user (skip_modules)",
            )
            continue
        args, _ = calls[0]
        sub_err: RootTraceError | None = None
        if _same_call_shape(calls):
            root, concrete = _wrapper_for(name, child, args)
            tracer = _Tracer(frozenset(p[len(prefix) :] for p in leaf if p.startswith(prefix)))
            try:
                graph = tracer.trace(root, concrete_args=concrete or None)
            except Exception as exc:
                sub_err = RootTraceError(
                    f"{type(exc).__name__}: {exc}".splitlines()[0], trace_failure_site(exc)
                )
        else:
            sub_err = RootTraceError("called with differing non-tensor arguments", "<calls>")
        if sub_err is not None:
            if not any(True for _ in child.children()):
                report.ops[full] = OpRecord(
                    full,
                    type(child).__name__,
                    OpKind.FLOAT,
                    None,
                    {},
                    f"not traceable and has no children ({sub_err})",
                )
                continue
            new = prepare_eager(
                child,
                tuple(args),
                setters,
                profile,
                sub_err,
                leaf_modules=leaf_modules,
                skip_modules=skip_modules,
                fold_bn=fold_bn,
                prefix=f"{full}.",
                report=report,
                path_prefix=f"{path_prefix}{name}.",
            )
            setattr(model, name, new)
            continue
        gm = fx.GraphModule(tracer.root, graph, f"{type(child).__name__}")
        island_args = propagate_values(gm, tuple(args), frozenset(tracer.islands))
        for iname, isl in tracer.islands.items():
            object.__setattr__(isl, "example_args", island_args.get(iname))
            report.islands[f"{prefix}{iname}"] = isl
        rename = _prefixed_names(gm, prefix)
        rename.update({f"{name}_in{i}": f"{full}.input_{i}" for i in range(len(args))})
        _prepare_graph(
            gm,
            setters,
            profile,
            tracer.islands,
            skip_modules,
            fold_bn,
            report,
            validate=False,
            rename=rename,
            path_prefix=f"{path_prefix}{name}.",
        )
        _prepare_islands(
            gm,
            tracer.islands,
            setters,
            profile,
            leaf_modules,
            skip_modules,
            fold_bn,
            report,
            prefix=prefix,
            path_prefix=f"{path_prefix}{name}.",
        )
        setattr(model, name, gm)
    _add_glue_quantizers(model, cap, setters, profile, prefix, path_prefix, report)
    _swap_class(model)
    if top:
        validate_setters(setters, sorted(report.ops) + [p for p, _ in model.named_modules() if p])
        model._fxquant_report = report  # type: ignore[attr-defined]
    return model


def _prefixed_names(gm: fx.GraphModule, prefix: str) -> dict[str, str]:
    from .naming import assign_names

    return {n: f"{prefix}{n}" for n in assign_names(gm).values() if prefix}


def _add_glue_quantizers(model, cap, setters, profile, prefix, path_prefix, report) -> None:
    ctx = SetterContext(profile=profile)
    counts: dict[str, int] = defaultdict(int)
    sites: dict[str, str] = {}
    for key, base in cap.glue_ops.items():
        local = f"_generated_{base}_{counts[base]}"
        counts[base] += 1
        shown = f"{prefix}{local}"
        kind = OpKind.COMPUTE
        q = resolve_qconfig(setters, OpInfo(shown, base, kind), ctx)
        rec = OpRecord(shown, base, kind, q, {})
        report.ops[shown] = rec
        if q is None or q.output is None:
            rec.float_reason = "no qconfig: no setter covers this op"
            continue
        fq: FakeQuantize = q.output()
        fq.name = shown
        holder = OpQuantizers()
        holder.add_module("output_fake_quant", fq)
        model.add_module(local, holder)
        sites[key] = f"{local}"
        rec.quantizers["output"] = f"{path_prefix}{local}.output_fake_quant"
    model._fxq_glue_sites = sites
