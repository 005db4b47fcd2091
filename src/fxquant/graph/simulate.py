"""The simulation a prepared model runs: the float simulation, or its runtime's integer arithmetic.

A prepared model (:func:`fxquant.prepare`) fake-quantizes in float: every quantized tensor is
``Q(op(DQ(inputs)))`` computed with float ops (:attr:`Simulation.FLOAT`).  A runtime that fuses
``DQ -> op -> Q`` into an integer kernel computes the same quantity differently -- exact int32
accumulation, an int32-rounded bias, float32 requantization, its own rounding -- and a deep
network turns those last-bit differences into different outputs.  In :attr:`Simulation.RUNTIME`
the ops the backend profile's runtime fuses (``BackendProfile.kernels``) compute exactly what
that runtime's kernels compute (:mod:`fxquant.runtime_math`), so the model *is* the deployed
model; every other op runs as in the float simulation.

**Which mode runs.**  Train mode always runs the float simulation (QAT needs its gradients).
Eval mode runs the runtime arithmetic when the profile recorded at prepare time names a runtime
(``onnxruntime``), unless :func:`simulation` chose :attr:`Simulation.FLOAT`.  Tracing for export
(``torch.export``, ``torch.onnx.export``, ``torch.jit.trace``, fx tracing) and
:func:`float_simulation` blocks always see the float simulation: exporters write plain Q/DQ.

**How.**  :func:`install` gives the prepared ``GraphModule`` a one-line prologue that asks
:func:`_runtime_forward` for the runtime result in eval mode; the runtime graph is a copy of the
prepared graph in which each fused op is a :class:`~fxquant.runtime_math.RuntimeKernel` (sharing
the model's modules and quantizers), built on first use and rebuilt when the graph or its modules
change.  A kernel falls back to the float op while its quantizers are not settled (calibration,
QAT observing) -- :func:`runtime_plan` lists what is emulated and why not.

>>> import torch, fxquant
>>> qmodel = fxquant.prepare(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)),
...                          torch.randn(1, 3, 8, 8), backend="onnxruntime")
>>> _ = fxquant.calibrate(qmodel, [torch.randn(4, 3, 8, 8)], progress=False)
>>> fxquant.runtime_plan(qmodel).kernels
{'0': 'QLinearConv'}
>>> with fxquant.simulation(qmodel, fxquant.Simulation.FLOAT):   # today's float simulation
...     y_float = qmodel.eval()(torch.randn(1, 3, 8, 8))

Size (~840 lines): the simulation switch and the runtime plan are one feature -- which kernel
the runtime runs for each op (matching a node to a kernel entry, finding its input / output
quantizers, building the integer kernel) is only meaningful under the switch that installs it;
the kernels themselves live in :mod:`fxquant.numerics`.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import weakref
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.graph import CodeGen

from .. import nn as qnn
from ..backends import RUNTIME_KERNELS, FusedKernel, KernelOp
from ..errors import ConfigError
from ..fake_quant import FakeQuantize
from ..numerics import ScaleMath
from ..qconfig import OpKind
from ..runtime_math import (
    AvgPoolKernel,
    BinaryKernel,
    FixedPointMeanKernel,
    GlobalAvgPoolKernel,
    LookupKernel,
    MeanKernel,
    RuntimeKernel,
    WeightedKernel,
)
from ..runtime_math.grids import SkipOnGrid, check_kept, one_forward
from ..runtime_math.kernels import (
    FLOAT_FUNCTIONS,
    LOOKUP_FUNCTIONS,
    BatchNormKernel,
    FloatFunctionKernel,
    LayerNormKernel,
)
from .act_fusion import NOT_FUSED, fused_forward
from .export_layout import changed_before, shared_ops
from .meta import value_info
from .naming import quantized_tensor_name
from .ops import canonical_name, clip_bounds
from .patterns import classify_function, classify_method, classify_module
from .report import REPORT_KEY, get_report

__all__ = [
    "Simulation",
    "RuntimePlan",
    "simulation",
    "float_simulation",
    "runtime_plan",
    "runtime_simulation",
    "graph_runtime_simulation",
    "hidden_quantizers",
    "install",
    "SIMULATION_KEY",
]

SIMULATION_KEY = "fxquant_simulation"
"""``GraphModule.meta`` key holding the :class:`Simulation` chosen with :func:`simulation`."""


class Simulation(enum.Enum):
    """What a prepared model computes in eval mode.

    FLOAT: the float simulation (fake quantization with float ops), as in training; what
        exporters trace.
    RUNTIME: the profile's runtime arithmetic at every op the runtime fuses (the default for
        profiles that name a runtime).
    """

    FLOAT = "float"
    RUNTIME = "runtime"


@dataclass(frozen=True)
class RuntimePlan:
    """Which ops run with the runtime's arithmetic (:func:`runtime_plan`).

    Attributes:
        runtime: the profile's runtime (``None``: the float simulation only).
        kernels: quantized tensor name (the op owning the output quantizer; for a float-output
            kernel, the op itself) -> the runtime kernel that computes it.
        skipped: op name -> why an op the runtime might fuse runs in float instead.
    """

    runtime: str | None
    kernels: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


# -- mode -----------------------------------------------------------------------------------------
_FLOAT_ONLY: contextvars.ContextVar[int] = contextvars.ContextVar("fxquant_float_only", default=0)
_FLOAT = object()  # the prologue's "run the float graph" answer


class _Switch:
    """What :func:`simulation` returns: the mode is already set; ``with`` restores the old one."""

    def __init__(self, model: nn.Module, meta: dict[str, Any], previous: Any) -> None:
        self.model, self.meta, self.previous = model, meta, previous

    def __enter__(self) -> nn.Module:
        return self.model

    def __exit__(self, *exc: Any) -> None:
        if self.previous is None:
            self.meta.pop(SIMULATION_KEY, None)
        else:
            self.meta[SIMULATION_KEY] = self.previous


def simulation(qmodel: nn.Module, mode: Simulation | str) -> _Switch:
    """Choose what ``qmodel`` computes in eval mode; usable as a context manager.

    ``simulation(qmodel, Simulation.FLOAT)`` switches to the float simulation until switched
    back; ``with simulation(qmodel, Simulation.FLOAT): ...`` switches for the block only.  Train
    mode always runs the float simulation.

    Raises:
        ConfigError: ``RUNTIME`` for a profile without a runtime, or for a model whose root
            ``forward`` was captured eagerly (no graph to compute with the runtime's kernels).
    """
    try:
        mode = Simulation(mode)
    except ValueError:
        raise ConfigError(
            f"simulation mode must be a Simulation (FLOAT or RUNTIME), got {mode!r}"
        ) from None
    report = _report(qmodel)
    if mode is Simulation.RUNTIME:
        if not report.profile.kernels:
            raise ConfigError(
                f"backend profile {report.profile.name!r} names no runtime whose arithmetic "
                "fxquant reproduces; prepare with backend='onnxruntime' for ONNX Runtime's"
            )
        if not isinstance(qmodel, fx.GraphModule):
            raise ConfigError(
                f"{type(qmodel).__name__} was captured eagerly (its root forward is not "
                "traceable): the runtime arithmetic needs an fx-captured model"
            )
    if not isinstance(qmodel, fx.GraphModule):  # eager capture: always the float simulation
        return _Switch(qmodel, {}, None)
    previous = qmodel.meta.get(SIMULATION_KEY)
    qmodel.meta[SIMULATION_KEY] = mode
    return _Switch(qmodel, qmodel.meta, previous)


@contextlib.contextmanager
def float_simulation() -> Iterator[None]:
    """Every prepared model runs the float simulation inside the block (for exporters: the
    traced graph is the plain Q/DQ one).  ``torch.export``, ``torch.onnx.export`` and fx / jit
    tracing are recognised without it."""
    token = _FLOAT_ONLY.set(_FLOAT_ONLY.get() + 1)
    try:
        yield
    finally:
        _FLOAT_ONLY.reset(token)


def _report(qmodel: nn.Module):
    try:
        return get_report(qmodel)
    except TypeError as err:
        raise ConfigError(str(err)) from None


def _tracing(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True
    return any(isinstance(a, fx.Proxy) for a in (*args, *kwargs.values()))


# -- dispatch -------------------------------------------------------------------------------------
@dataclass
class _Runtime:
    code: str
    objects: list[tuple[str, Any]]
    module: fx.GraphModule | None
    plan: RuntimePlan
    kernels: tuple[RuntimeKernel, ...] = ()

    def check_kept(self) -> bool:
        """Check every kernel's kept constants and grids at once for this pass (whether all
        held)."""
        return check_kept((fq for k in self.kernels for fq in k.current_quantizers()),
                   (kept for k in self.kernels for kept in k.kept_sources()))


_CACHE: weakref.WeakKeyDictionary[fx.GraphModule, dict[tuple, _Runtime]] = (
    weakref.WeakKeyDictionary()
)


def _runtime_forward(gm: fx.GraphModule, *args: Any, **kwargs: Any) -> Any:
    """The prologue's question: the runtime simulation's result, or ``_FLOAT``."""
    if _FLOAT_ONLY.get() or gm.meta.get(SIMULATION_KEY) is Simulation.FLOAT:
        return _FLOAT
    report = gm.meta.get(REPORT_KEY)
    if report is None or not report.profile.kernels or _tracing(args, kwargs):
        return _FLOAT
    rt = _runtime(gm, report.profile.runtime or "", report.profile.kernels, pass_through=True)
    if rt.module is None:
        return _FLOAT
    with one_forward():  # each settled quantizer's grid read once per pass
        rt.check_kept()  # the kept constants' sources, all at once
        return rt.module(*args, **kwargs)


def _fetch(root: nn.Module, target: str) -> Any:
    owner, _, attr = target.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, attr)


def _lookup(root: nn.Module, target: str) -> Any:
    """:func:`_fetch` through the modules' own tables (what ``getattr`` finds for a submodule,
    parameter or buffer; anything else by ``getattr``): the check at every forward pass."""
    obj: Any = root
    for part in target.split("."):
        if isinstance(obj, nn.Module):
            d = obj.__dict__
            for table in ("_modules", "_parameters", "_buffers"):
                found = d[table].get(part, _MISSING)
                if found is not _MISSING:
                    obj = found
                    break
            else:
                obj = getattr(obj, part)
        else:
            obj = getattr(obj, part)
    return obj


_MISSING = object()


def _runtime(gm: fx.GraphModule, runtime: str, kernels: tuple[FusedKernel, ...],
             only: frozenset[str] | None = None, pass_through: bool = False) -> _Runtime:
    """The runtime module for ``gm`` (cached until its code or a module changes).
    ``pass_through``: quantizers after self-saturating kernels pass their result through (the
    eval-mode model, :func:`_pass_through_on_grid`); off for :func:`runtime_simulation`, whose
    callers (``verify``) hook every quantizer's output."""
    per_model = _CACHE.setdefault(gm, {})
    key = (runtime, only, pass_through)
    rt = per_model.get(key)
    if rt is not None and (rt.code is gm.code or rt.code == gm.code) and all(
        _lookup(gm, t) is obj for t, obj in rt.objects
    ):
        return rt
    rt = _build(gm, runtime, kernels, only, pass_through)
    per_model[key] = rt
    return rt


class _SimulationCodeGen(CodeGen):
    """Python code generation with the runtime-simulation prologue (see :func:`install`)."""

    def gen_fn_def(self, free_vars: list[str], maybe_return_annotation: str, *,
                   expanded_def: bool = False) -> str:
        head = super().gen_fn_def(free_vars, maybe_return_annotation, expanded_def=expanded_def)
        names = [v.split(":")[0].split("=")[0].strip() for v in free_vars if v != "self"]
        call = ", ".join(["self", *names])
        return (head + "\n    if not self.training and (_fxquant_out := "
                f"fxquant_runtime_forward({call})) is not fxquant_float: return _fxquant_out"
                "\n    if (_fxquant_out := "
                f"fxquant_fused_forward({call})) is not fxquant_not_fused: return _fxquant_out")

    def additional_globals(self) -> list[tuple[str, Any]]:
        return [("fxquant_runtime_forward", _runtime_forward), ("fxquant_float", _FLOAT),
                ("fxquant_fused_forward", fused_forward),
                ("fxquant_not_fused", NOT_FUSED)]


def install(gm: fx.GraphModule) -> fx.GraphModule:
    """Give a prepared ``GraphModule`` the eval-mode runtime-simulation prologue (its forward
    asks :func:`_runtime_forward` first; the float graph runs when that says so), whose second
    line runs that float graph with activations fused with their quantizers
    (:func:`fxquant.graph.act_fusion.fused_forward`)."""
    gm.graph.set_codegen(_SimulationCodeGen())
    gm.recompile()
    return gm


# -- the runtime graph -------------------------------------------------------------------------
_CONVS = (qnn.QuantConv1d, qnn.QuantConv2d, qnn.QuantConv3d, qnn.ConvBn1d, qnn.ConvBn2d,
          qnn.ConvBn3d)
_GAP_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_AVG_POOL_MODULES = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}
_AVG_POOL_FUNCTIONS = {F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3}
_GAP_FUNCTIONS = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
_CONV_FUNCTIONS = (F.conv1d, F.conv2d, F.conv3d)
_BINARY = {"add": KernelOp.ADD, "mul": KernelOp.MUL, "matmul": KernelOp.MATMUL,
           "bmm": KernelOp.MATMUL}


def _all_ones(size: Any) -> bool:
    sizes = size if isinstance(size, (tuple, list)) else (size,)
    return all(s == 1 for s in sizes)


def _kernel_op(gm: fx.GraphModule, n: fx.Node) -> KernelOp | None:
    if n.op == "call_module":
        m = gm.get_submodule(str(n.target))
        if isinstance(m, _CONVS):
            return KernelOp.CONV
        if isinstance(m, qnn.QuantLinear):
            return KernelOp.LINEAR
        if isinstance(m, _GAP_MODULES):
            return KernelOp.GLOBAL_AVG_POOL if _all_ones(m.output_size) else None
        if type(m) in _AVG_POOL_MODULES:
            return KernelOp.AVG_POOL
        if isinstance(m, nn.Sigmoid):
            return KernelOp.SIGMOID
        if isinstance(m, nn.SiLU):
            return KernelOp.SILU
        if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            return KernelOp.BATCH_NORM
        if type(m) is nn.LayerNorm:
            return KernelOp.LAYER_NORM
        return None
    if n.op == "call_function" and n.target is F.layer_norm:
        return KernelOp.LAYER_NORM
    if n.op == "call_function" and n.target in _GAP_FUNCTIONS:
        size = n.args[1] if len(n.args) > 1 else n.kwargs.get("output_size")
        return KernelOp.GLOBAL_AVG_POOL if _all_ones(size) else None
    if n.op == "call_function" and n.target in _AVG_POOL_FUNCTIONS:
        return KernelOp.AVG_POOL
    if n.op == "call_function" and n.target is F.linear:
        return KernelOp.LINEAR
    if n.op == "call_function" and n.target in _CONV_FUNCTIONS:
        return KernelOp.CONV
    if n.op in ("call_function", "call_method"):
        name = canonical_name(n.target)
        if name in _BINARY:
            return _BINARY[name]
        if name == "sigmoid":
            return KernelOp.SIGMOID
        if name == "silu":
            return KernelOp.SILU
        if name == "mean":
            return KernelOp.MEAN
    return None


def _is_share(gm: fx.GraphModule, n: fx.Node) -> bool:
    """An op that only moves its input's values: SHARE as prepare classifies it, arguments
    included (``F.interpolate`` / ``nn.Upsample`` in mode "nearest", ``F.pad`` with zeros --
    the FPN top-down path's upsampling feeds a residual add)."""
    if n.op == "call_module":
        return classify_module(gm.get_submodule(str(n.target))) is OpKind.SHARE
    if n.op == "call_function":
        return classify_function(n) is OpKind.SHARE
    if n.op == "call_method":
        return classify_method(n) is OpKind.SHARE
    return False


def _quantizer(gm: fx.GraphModule, n: fx.Node) -> FakeQuantize | None:
    if n.op != "call_module":
        return None
    m = gm.get_submodule(str(n.target))
    return m if isinstance(m, FakeQuantize) else None


def _per_tensor(fq: FakeQuantize, bits: int) -> str | None:
    if fq.ch_axis is not None:
        return f"quantizer {fq.name!r} is per channel"
    if fq.dtype.bits > bits:
        return f"quantizer {fq.name!r} is {fq.dtype.bits}-bit (the kernel takes <= {bits})"
    if fq.scale_math is not ScaleMath.DIVIDE:
        return f"quantizer {fq.name!r} multiplies by the reciprocal scale"
    return None


def _input_quantizer(gm: fx.GraphModule, reader: fx.Node, v: Any,
                     bits: int) -> tuple[FakeQuantize | None, str]:
    """The per-tensor quantizer whose grid ``v`` (an argument of ``reader``) lies on, through
    pure data movement."""
    while isinstance(v, fx.Node):
        if changed_before(v, reader):
            return None, "an in-place op changes an input before the op reads it"
        fq = _quantizer(gm, v)
        if fq is not None:
            # movement after a quantized constant is folded into its initializer or requantized
            # by the exporter (``export.onnx_passes.requantize_moves``), as after an activation
            why = _per_tensor(fq, bits)
            return (None, why) if why else (fq, "")
        if not _is_share(gm, v) or not v.args:
            break
        v = v.args[0]
    return None, "an input does not come straight from a quantizer"


def _clip(gm: fx.GraphModule, n: fx.Node) -> tuple[float | None, float | None] | None:
    """The bounds of a clipping activation node (None: not one): the op-trait table's clip-like
    ops, and ``clamp`` with constant bounds (exported as Clip)."""
    if n.op not in ("call_module", "call_function", "call_method"):
        return None
    bounds = clip_bounds(n, gm)
    if bounds is not None:
        return bounds
    if n.op != "call_module" and canonical_name(n.target) == "clamp":
        lo = n.args[1] if len(n.args) > 1 else n.kwargs.get("min")
        hi = n.args[2] if len(n.args) > 2 else n.kwargs.get("max")
        if all(b is None or isinstance(b, (int, float)) for b in (lo, hi)):
            return (lo, hi)
    return None


_Q_PROPAGATING = frozenset({"reshape", "view", "flatten", "transpose", "permute", "t",
                            "squeeze", "unsqueeze", "contiguous"})
"""Ops ONNX Runtime moves a QuantizeLinear backward over (its QDQ propagation: Reshape,
Transpose, Squeeze, Unsqueeze), so an op followed by them and then a quantizer is fused as if
the quantizer came first."""


def _propagates_q(gm: fx.GraphModule, u: fx.Node, v: fx.Node) -> bool:
    """``u`` only reshapes / transposes ``v`` (its first argument): a quantizer after ``u``
    moves before it in the runtime's graph."""
    if u.op not in ("call_function", "call_method") or not u.args or u.args[0] is not v:
        return False
    return canonical_name(u.target) in _Q_PROPAGATING and _is_share(gm, u)


def _output_quantizer(gm: fx.GraphModule, n: fx.Node, bits: int):
    """``(quantizer, clip bounds, why not)`` for the output of op ``n``."""
    lo: float | None = None
    hi: float | None = None
    clipped = False
    v = n
    while True:
        users = list(v.users)
        if len(users) != 1:
            return None, None, "the op's output has several consumers"
        u = users[0]
        fq = _quantizer(gm, u)
        if fq is not None:
            why = _per_tensor(fq, bits)
            return (None, None, why) if why else (fq, (lo, hi) if clipped else None, "")
        if _propagates_q(gm, u, v):
            v = u
            continue
        bounds = _clip(gm, u)
        if bounds is None:
            return None, None, "the op's output is not quantized"
        clipped = True
        lo = bounds[0] if lo is None else (lo if bounds[0] is None else max(lo, bounds[0]))
        hi = bounds[1] if hi is None else (hi if bounds[1] is None else min(hi, bounds[1]))
        v = u


def _first_ndim(n: fx.Node) -> int | None:
    arg = n.args[0] if n.args else None
    info = value_info(arg) if isinstance(arg, fx.Node) else None
    return None if info is None or info.shape is None else len(info.shape)


def _entries(kernels: tuple[FusedKernel, ...], op: KernelOp, n: fx.Node) -> list[FusedKernel]:
    """The table's entries for ``op`` at node ``n``, in priority order."""
    return [k for k in kernels
            if k.op is op and (k.input_ndims is None or _first_ndim(n) in k.input_ndims)]


def _global_mean(n: fx.Node) -> bool:
    """A ``mean`` over every axis from 2 on, keeping them, of a tensor of rank >= 3: the exporter
    writes it as ``GlobalAveragePool`` (``export.onnx_passes.global_pools``)."""
    dims = _mean_dims(n)
    ndim = _first_ndim(n)
    if dims is None or not dims[1] or ndim is None or ndim < 3:
        return False
    return sorted(d % ndim for d in dims[0]) == list(range(2, ndim))


def _mean_dims(n: fx.Node) -> tuple[tuple[int, ...], bool] | None:
    """``(dims, keepdim)`` of a ``mean`` node with explicit dimensions (None: other forms)."""
    dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    keep = n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False)
    if dim is None or "dtype" in n.kwargs:
        return None
    dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
    if not all(isinstance(d, int) for d in dims) or not isinstance(keep, bool):
        return None
    return dims, keep


def _has_bias(gm: fx.GraphModule, n: fx.Node) -> bool:
    """Whether the conv / linear at ``n`` adds a bias (a module's, or a functional call's
    ``bias`` argument)."""
    if n.op == "call_module":
        return getattr(gm.get_submodule(str(n.target)), "bias", None) is not None
    bias = n.args[2] if len(n.args) > 2 else n.kwargs.get("bias")
    return bias is not None


def _make_kernel(gm: fx.GraphModule, n: fx.Node, entry: FusedKernel, shared: set[fx.Node]):
    """``(kernel module, why not)`` for op node ``n`` (``shared``: :func:`shared_ops`)."""
    op, bits = entry.op, entry.max_bits
    out_fq, clip = None, None
    if entry.quantized_output:
        if n in shared:
            return None, "the export computes the op once for several consumers"
        out_fq, clip, why = _output_quantizer(gm, n, bits)
        if out_fq is None:
            return None, why
    if entry.without_bias and _has_bias(gm, n):
        return None, "a bias (the kernel takes a bare MatMul)"
    if op in (KernelOp.LINEAR, KernelOp.CONV) and n.op == "call_function":
        # F.linear / F.convNd(x, fq(weight), bias, ...)
        w = n.args[1] if len(n.args) > 1 else n.kwargs.get("weight")
        wfq = _quantizer(gm, w) if isinstance(w, fx.Node) else None
        if wfq is None or wfq.dtype.bits > 8 or wfq.ch_axis not in (None, 0):
            return None, "the weight is not an 8-bit grid per output channel"
        if op is KernelOp.CONV and bits > 8:
            return None, "a functional conv (the 16x8 kernels are emulated for modules)"
        in_fq, why = _input_quantizer(gm, n, n.args[0] if n.args else None, bits)
        if in_fq is None:
            return None, why
        return WeightedKernel(entry.kernel, None, in_fq, out_fq, clip,
                              float_output=not entry.quantized_output, weight_fq=wfq,
                              conv=n.target if op is KernelOp.CONV else None), ""
    if entry.kernel == FixedPointMeanKernel.NAME:  # LiteRT's 16-bit MEAN (mean / global pool)
        in_fq, why = _input_quantizer(gm, n, n.args[0] if n.args else None, bits)
        if in_fq is None or out_fq is None:
            return None, why or "the output is not quantized"
        if in_fq.dtype.bits <= 8:
            return None, "an 8-bit input (the kernel takes 16-bit activations)"
        dims = None if op is KernelOp.GLOBAL_AVG_POOL else _mean_dims(n)
        if op is KernelOp.MEAN and dims is None:
            return None, "not a mean over given dimensions"
        return FixedPointMeanKernel(_fallback(gm, n), in_fq, out_fq, dims), ""
    if op is KernelOp.MEAN:
        in_fq, why = _input_quantizer(gm, n, n.args[0] if n.args else None, bits)
        if in_fq is None:
            return None, why
        return MeanKernel(_fallback(gm, n), in_fq), ""
    if op is KernelOp.BATCH_NORM:
        in_fq, why = _input_quantizer(gm, n, n.args[0] if n.args else None, bits)
        if in_fq is None:
            return None, why
        bn = gm.get_submodule(str(n.target))
        return BatchNormKernel(bn, bn, in_fq), ""
    if op is KernelOp.LAYER_NORM:
        in_fq, why = _input_quantizer(gm, n, n.args[0] if n.args else None, bits)
        if in_fq is None:
            return None, why
        layer = gm.get_submodule(str(n.target)) if n.op == "call_module" else None
        return LayerNormKernel(_fallback(gm, n), layer, in_fq), ""
    if not entry.integer:  # a float op computed with the runtime's own float function
        fn = FLOAT_FUNCTIONS.get(entry.kernel)
        in_fq, why = _input_quantizer(gm, n, n.args[0] if n.args else None, bits)
        if fn is None or in_fq is None:
            return None, why or f"no arithmetic for {entry.kernel}"
        return FloatFunctionKernel(entry.kernel, _fallback(gm, n), fn, in_fq), ""
    if op in (KernelOp.CONV, KernelOp.LINEAR):
        layer = gm.get_submodule(str(n.target))
        wfq = layer.weight_fake_quant
        if not isinstance(wfq, FakeQuantize):
            return None, "the weight is not quantized"
        if wfq.dtype.bits > bits or wfq.ch_axis not in (None, 0):
            return None, "the weight is not an 8-bit grid per output channel"
        if len(n.args) != 1 or n.kwargs:
            return None, "not a one-input call"
        in_fq, why = _input_quantizer(gm, n, n.args[0], bits)
        if in_fq is None:
            return None, why
        if bits > 8 and in_fq.dtype.bits <= 8:
            return None, "an 8-bit input (the kernel takes 16-bit activations)"
        return WeightedKernel(entry.kernel, layer, in_fq, out_fq, clip,
                              float_output=not entry.quantized_output), ""
    assert out_fq is not None or op is KernelOp.MATMUL
    fallback = _fallback(gm, n)
    if op in (KernelOp.ADD, KernelOp.MUL, KernelOp.MATMUL):
        if len(n.args) < 2 or not all(isinstance(a, fx.Node) for a in n.args[:2]):
            return None, "not an op of two tensors"
        a_fq, why_a = _input_quantizer(gm, n, n.args[0], bits)
        b_fq, why_b = _input_quantizer(gm, n, n.args[1], bits)
        if a_fq is None or b_fq is None:
            return None, why_a or why_b
        return BinaryKernel(entry.kernel, fallback, a_fq, b_fq, out_fq, clip), ""
    if not n.args:
        return None, "no input"
    in_fq, why = _input_quantizer(gm, n, n.args[0], bits)
    if in_fq is None:
        return None, why
    if clip is not None:
        return None, "a clip after the op"
    if op is KernelOp.GLOBAL_AVG_POOL:
        return GlobalAvgPoolKernel(fallback, in_fq, out_fq), ""
    if op is KernelOp.AVG_POOL:
        spatial = (_AVG_POOL_MODULES.get(type(gm.get_submodule(str(n.target))))
                   if n.op == "call_module" else _AVG_POOL_FUNCTIONS[n.target])
        return AvgPoolKernel(fallback, in_fq, out_fq, spatial), ""
    fn = LOOKUP_FUNCTIONS.get(entry.kernel)
    if fn is None:
        return None, f"no arithmetic for {entry.kernel}"
    return LookupKernel(entry.kernel, fallback, fn, in_fq, out_fq), ""


class _Method:
    """Calls ``args[0].<name>(*args[1:], **kwargs)`` (the float fallback of a method node)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, obj: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(obj, self.name)(*args, **kwargs)


def _fallback(gm: fx.GraphModule, n: fx.Node):
    if n.op == "call_module":
        return gm.get_submodule(str(n.target))
    if n.op == "call_method":
        return _Method(str(n.target))
    return n.target


def _quantizer_ops(report) -> dict[str, str]:
    """Quantizer module path -> the tensor it quantizes, as the exporters name it (a weight
    quantizer: the name of its op, which names a float-output kernel)."""
    names: dict[str, str] = {}
    for path, op, role in report.quantizers():
        names.setdefault(path, op if role == "weight" else quantized_tensor_name(op, role))
    return names


def _build(gm: fx.GraphModule, runtime: str, table: tuple[FusedKernel, ...],
           only: frozenset[str] | None = None, pass_through: bool = False) -> _Runtime:
    report = get_report(gm)
    code = gm.code
    plan = RuntimePlan(runtime or None)
    if not table:
        return _Runtime(code, [], None, plan)
    paths = {id(m): p for p, m in gm.named_modules()}
    names = _quantizer_ops(report)
    graph = fx.Graph()
    val_map: dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(gm.graph, val_map))
    kernels: dict[str, nn.Module] = {}  # kernels and SkipOnGrid stand-ins
    shared = shared_ops(gm)
    for n in list(gm.graph.nodes):
        op = _kernel_op(gm, n)
        entries = [] if op is None else _entries(table, op, n)
        if op is KernelOp.MEAN and _global_mean(n):  # exported as GlobalAveragePool
            entries = _entries(table, KernelOp.GLOBAL_AVG_POOL, n) + entries
        kernel, whys = None, []
        for entry in entries:  # the first entry whose pattern matches
            kernel, why = _make_kernel(gm, n, entry, shared)
            if kernel is not None:
                break
            whys.append(f"{entry.kernel}: {why}")
        if kernel is None:
            if whys:
                plan.skipped[_op_name(gm, n, names, paths)] = "; ".join(whys)
            continue
        # the tensor the kernel produces: its output quantizer's, or (float output) the op's
        if entry.quantized_output:
            tensor = names.get(paths.get(id(kernel.quantizers[-1]), ""), n.name)
        elif isinstance(kernel, WeightedKernel):
            tensor = names.get(paths.get(id(kernel.wfq), ""), n.name)
        else:
            tensor = _op_name(gm, n, names, paths)
        if only is not None and entry.integer and tensor not in only:
            plan.skipped[tensor] = f"{entry.kernel}: the runtime did not fuse it"
            continue
        target = f"_fxquant_kernel_{len(kernels)}"
        kernels[target] = kernel
        plan.kernels[tensor] = entry.kernel
        new = val_map[n]
        with graph.inserting_before(new):
            call = graph.call_module(target, new.args, dict(new.kwargs))
        new.replace_all_uses_with(call)
        graph.erase_node(new)
        if pass_through:
            _pass_through_on_grid(gm, call, kernel, kernels)
    if not kernels:
        objects = [(str(n.target), _fetch(gm, str(n.target))) for n in gm.graph.nodes
                   if n.op in ("call_module", "get_attr")]
        return _Runtime(code, objects, None, plan)
    # every module / attribute the model's graph reads: a replaced one invalidates the build
    objects = [(str(n.target), _fetch(gm, str(n.target))) for n in gm.graph.nodes
               if n.op in ("call_module", "get_attr")]
    root: dict[str, Any] = dict(kernels)
    for n in graph.nodes:
        if n.op in ("call_module", "get_attr") and n.target not in kernels:
            root[str(n.target)] = _fetch(gm, str(n.target))
    graph.lint()
    module = fx.GraphModule(root, graph, "RuntimeSimulation")
    module.eval()
    return _Runtime(code, objects, module, plan,
                    tuple(k for k in kernels.values() if isinstance(k, RuntimeKernel)))


def _pass_through_on_grid(gm: fx.GraphModule, call: fx.Node, kernel: RuntimeKernel,
                          modules: dict[str, nn.Module]) -> None:
    """After a kernel that saturates onto its output quantizer's grid itself, that quantizer --
    and clip modules between them, which the grid implies whenever the kernel computes -- pass
    its result through (:class:`SkipOnGrid`): one memory pass less each.  Clip functions stay
    (an in-place one returns the kernel's tensor, which the quantizer then passes through).
    Only plain :class:`FakeQuantize` outputs: their fake quantization of a grid value is that
    value bit for bit."""
    out_fq = getattr(kernel, "out_fq", None)
    if type(out_fq) is not FakeQuantize:
        return
    chain, v = [], call
    while True:
        users = list(v.users)
        if len(users) != 1:
            return
        u = users[0]
        if u.op == "call_module" and _fetch(gm, str(u.target)) is out_fq:
            chain.append(u)
            break
        if _clip(gm, u) is None or u.args[:1] != (v,):
            return
        if u.op == "call_module":
            chain.append(u)
        v = u
    for u in chain:
        target = f"_fxquant_on_grid_{len(modules)}"
        modules[target] = SkipOnGrid(_fetch(gm, str(u.target)), out_fq)
        u.target = target


def _op_name(gm: fx.GraphModule, n: fx.Node, names: dict[str, str],
             paths: dict[int, str]) -> str:
    for u in n.users:
        fq = _quantizer(gm, u)
        if fq is not None:
            return names.get(paths.get(id(fq), ""), n.name)
    if n.op == "call_module":
        return str(n.target)
    return n.name


def hidden_quantizers(qmodel: nn.Module) -> list[str]:
    """Paths of the quantizers of ``qmodel`` that its fx graph does not show: inside an eager
    capture, a float island or a library module (``nn.MultiheadAttention`` ...) that the graph
    calls as a whole.  The runtime arithmetic of their ops needs the captured program
    (:func:`fxquant.export.captured_simulation.captured_runtime_simulation`); weight quantizers of
    the conv / linear modules the graph calls are seen through their module."""
    quantizers = [p for p, m in qmodel.named_modules() if isinstance(m, FakeQuantize)]
    if not isinstance(qmodel, fx.GraphModule):
        return quantizers
    seen: set[str] = set()
    for n in qmodel.graph.nodes:
        if n.op != "call_module":
            continue
        target = str(n.target)
        m = qmodel.get_submodule(target)
        if isinstance(m, FakeQuantize) or isinstance(m, (*_CONVS, qnn.QuantLinear)):
            seen.update(p for p in quantizers if p == target or p.startswith(target + "."))
    return [p for p in quantizers if p not in seen]


def graph_runtime_simulation(
    gm: fx.GraphModule, runtime: str, fused: Collection[str] | None = None
) -> tuple[nn.Module | None, RuntimePlan]:
    """:func:`runtime_simulation` of a graph that is not the prepared model's own: one whose
    ``meta`` carries the model's prepare report and whose quantizer nodes call the model's
    quantizer modules at their paths (the captured program of
    :mod:`fxquant.export.captured_simulation`).  Built anew on every call."""
    table = RUNTIME_KERNELS.get(runtime, ())
    rt = _build(gm, runtime, table, None if fused is None else frozenset(fused))
    return rt.module, rt.plan


def runtime_plan(qmodel: nn.Module) -> RuntimePlan:
    """Which ops of ``qmodel`` run with its runtime's arithmetic in eval mode, and why others
    do not (ops the runtime might fuse whose pattern does not match: a float input, a 16-bit
    grid, a second consumer ...).  Per call, a kernel may still fall back while its quantizers
    are not settled (calibration, QAT still observing)."""
    return runtime_simulation(qmodel)[1]


def runtime_simulation(
    qmodel: nn.Module, runtime: str | None = None, fused: Collection[str] | None = None
) -> tuple[nn.Module | None, RuntimePlan]:
    """A module computing ``qmodel`` with ``runtime``'s arithmetic, and its plan.

    ``runtime``: default the profile's; another runtime's fused-kernel table
    (:data:`fxquant.backends.RUNTIME_KERNELS`) serves to compare a model prepared for one target
    with another runtime (what :func:`fxquant.verify` does).  ``fused``: only the integer kernels
    producing these tensors (the ones the runtime was seen to fuse; ``None``: the table decides).
    The module shares ``qmodel``'s modules and quantizers (it is not a copy: do not train it); it
    is ``None`` when nothing would run differently from the float simulation (no runtime, an
    eager capture, no fused op).
    """
    report = _report(qmodel)
    if runtime is None or runtime == report.profile.runtime:
        name, table = report.profile.runtime, report.profile.kernels
    else:
        name, table = runtime, RUNTIME_KERNELS.get(runtime, ())
    if not isinstance(qmodel, fx.GraphModule):
        return None, RuntimePlan(name, {}, {
            "<model>": "captured eagerly: the float simulation runs"} if table else {})
    only = None if fused is None else frozenset(fused)
    rt = _runtime(qmodel, name or "", table, only)
    return rt.module, rt.plan
