"""Lowering: rebuild a prepared fx graph as a graph of torch quantized kernels.

Every value of the new graph is either float or a ``torch.quint8`` tensor with known
:class:`~fxquant.convert.qparams.ActQParams`.  The source graph is walked once, in order:

* an activation quantizer becomes ``torch.quantize_per_tensor`` of its (float) input, nothing when
  its input is already quantized with the same parameters, or a requantization;
* a weighted module / add / mul / cat / average pool whose output goes (through at most one
  relu / relu6) straight into a quantizer becomes a quantized kernel producing *that*
  quantizer's parameters: the relu is fused (``ConvReLU2d``, ``add_relu``) or becomes an exact
  quantized clamp, and the quantizer disappears;
* ops that only move values (view, permute, max pool, ...) run on the quantized tensor as is;
* anything else runs in float on dequantized inputs, as the same module / function the prepared
  model calls (so the numerics stay those of the simulation), and is recorded with the reason.

When an fxquant dtype saturates inside torch's 0..255 (x86 ``reduce_range`` keeps codes 0..127),
a quantized ``torch.clamp`` to the real bounds of those codes follows, so the integer model
saturates where the simulation does.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import ConvertError
from ..fake_quant import FakeQuantize
from ..graph.meta import op_name, value_info
from ..graph.ops import RELU, UNKNOWN, OpTraits, module_traits, node_traits
from ..graph.patterns import (
    WEIGHT_ARG,
    classify_function,
    classify_method,
    classify_module,
    function_name,
    is_stub,
)
from ..graph.report import PrepareReport
from ..qconfig import OpKind
from .modules import average_pool_builder, build_quantized_weighted, not_converted_reason
from .qparams import ActQParams, Unsupported, activation_qparams
from .tables import (
    BINARY_KERNELS,
    CLAMP_NEEDS_CONTIGUOUS,
    METHOD_REWRITES,
    binary_base,
    hashable,
    is_metadata,
)

__all__ = ["Execution", "ConvertedOp", "ConvertError", "lower", "dequantize_all"]


class Execution(enum.Enum):
    """How an op of the converted model runs.

    INTEGER: a torch quantized kernel on integer codes (conv, linear, add, cat, pooling ...).
    PASSTHROUGH: moves or selects quantized values (view, permute, max pool), fused into the
        previous kernel (relu), or removed (dropout, identity).
    FLOAT: float compute on dequantized inputs (no integer kernel); the reason says why.
    """

    INTEGER = "integer"
    PASSTHROUGH = "passthrough"
    FLOAT = "float"


@dataclass(frozen=True)
class ConvertedOp:
    """One op of the converted model: its fxquant name, type, how it runs and details."""

    name: str
    op_type: str
    execution: Execution
    detail: str


def dequantize_all(values: Any) -> Any:
    """Dequantize every quantized tensor of a list / tuple (``chunk`` / ``split`` outputs)."""
    return type(values)(v.dequantize() if v.is_quantized else v for v in values)


@dataclass(frozen=True)
class _Value:
    """A value of the new graph: ``qp`` is None for float / non-tensor values.  ``seq``: a list
    or tuple whose tensors all carry ``qp`` (``chunk`` / ``split`` outputs)."""

    node: Any
    qp: ActQParams | None = None
    seq: bool = False


class _Lowering:
    def __init__(
        self, gm: fx.GraphModule, report: PrepareReport, engine: str, keep_float: bool
    ) -> None:
        self.gm = gm
        self.engine = engine
        self.report = report
        self.keep_float = keep_float
        self.modules = dict(gm.named_modules())
        self.graph = fx.Graph()
        self.env: dict[fx.Node, _Value] = {}
        self.targets: dict[str, Any] = {}
        self.original: set[str] = set()  # registered targets that are gm's own attributes
        self.float_cache: dict[fx.Node, fx.Node] = {}
        self.ops: list[ConvertedOp] = []

    # -- driver --------------------------------------------------------------------------------
    def run(self) -> tuple[fx.GraphModule, list[ConvertedOp]]:
        for n in self.gm.graph.nodes:
            if n in self.env:
                continue  # consumed by a fused pattern
            if n.op == "placeholder":
                self.env[n] = _Value(self.graph.node_copy(n))
            elif n.op == "output":
                self.graph.output(fx.node.map_arg(n.args[0], self._float_arg))
            elif n.op == "get_attr":
                self._lower_float(n, None)
            elif self._quantizer(n) is not None and self._is_weight_quantizer(n):
                self.env[n] = _Value(self._copy_float(n))  # functional weight: float
            elif self._quantizer(n) is not None:
                self._lower_quantizer(n)
            else:
                self._lower_op(n)
        self.graph.lint()
        out = fx.GraphModule(self.targets, self.graph, class_name="ConvertedGraphModule")
        return out, self.ops

    # -- helpers -------------------------------------------------------------------------------
    def _quantizer(self, n: fx.Node) -> FakeQuantize | None:
        if n.op != "call_module":
            return None
        m = self.modules.get(n.target)
        return m if isinstance(m, FakeQuantize) else None

    def _is_weight_quantizer(self, n: fx.Node) -> bool:
        """A quantizer on the weight argument of a functional ``F.linear`` / ``F.conv2d``."""
        if self._quantizer(n).is_weight:
            return True
        return bool(n.users) and all(
            u.op == "call_function"
            and hashable(u.target)
            and u.target in WEIGHT_ARG
            and n in u.args[WEIGHT_ARG[u.target] :]
            for u in n.users
        )

    def _name(self, n: fx.Node) -> str:
        return op_name(n) or n.name

    def _op_type(self, n: fx.Node) -> str:
        rec = self.report.ops.get(self._name(n))
        if rec is not None:
            return rec.op_type
        if n.op == "call_module":
            return type(self.modules[n.target]).__name__
        return function_name(n.target)

    def _record(self, n: fx.Node, execution: Execution, detail: str) -> None:
        info = value_info(n)
        if execution is Execution.FLOAT and info is not None and not info.is_float:
            return  # ops on shapes / integer tensors are not part of the coverage
        self.ops.append(ConvertedOp(self._name(n), self._op_type(n), execution, detail))

    def _register(self, path: str, obj: Any, original: bool) -> str:
        """Make ``obj`` reachable as ``path`` in the new GraphModule; returns the path used."""

        def clash(p: str) -> bool:
            for q, o in self.targets.items():
                if q == p:
                    return o is not obj
                related = q.startswith(p + ".") or p.startswith(q + ".")
                if related and not (original and q in self.original):
                    return True
            return False

        candidate, k = path, 0
        while clash(candidate):
            k += 1
            candidate = f"{path.replace('.', '_')}_q{k}"
        self.targets[candidate] = obj
        if original and candidate == path:
            self.original.add(candidate)
        return candidate

    def _attr(self, target: str) -> Any:
        obj: Any = self.gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def _float(self, v: _Value) -> Any:
        """The float form of ``v`` (a cached ``dequantize`` for quantized values)."""
        if v.qp is None:
            return v.node
        cached = self.float_cache.get(v.node)
        if cached is None:
            if v.seq:
                cached = self.graph.call_function(dequantize_all, (v.node,))
            else:
                cached = self.graph.call_method("dequantize", (v.node,))
            self.float_cache[v.node] = cached
        return cached

    def _float_arg(self, a: fx.Node) -> Any:
        return self._float(self.env[a])

    def _quantize(self, x: Any, qp: ActQParams) -> fx.Node:
        q = self.graph.call_function(
            torch.quantize_per_tensor, (x, qp.scale, qp.zero_point, torch.quint8)
        )
        return self._saturate(q, qp, None)

    def _saturate(
        self, q: fx.Node, qp: ActQParams, act: tuple[float, float | None] | None
    ) -> fx.Node:
        """Clamp quantized ``q`` to the fxquant dtype's codes and the activation's bounds."""
        lo: float | None = None
        hi: float | None = None
        if qp.clamp is not None:
            if qp.lo > 0:
                lo = qp.clamp[0]
            if qp.hi < 255:
                hi = qp.clamp[1]
        if act is not None:
            lo = act[0] if lo is None else max(lo, act[0])
            if act[1] is not None:
                hi = act[1] if hi is None else min(hi, act[1])
        return self._clamp(q, lo, hi)

    def _clamp(self, q: fx.Node, lo: float | None, hi: float | None) -> fx.Node:
        if lo is None and hi is None:
            return q
        if self.engine in CLAMP_NEEDS_CONTIGUOUS:
            q = self.graph.call_method("contiguous", (q,))
        if lo is None or hi is None:  # qnnpack's clamp wants both bounds
            lo = -float("inf") if lo is None else lo
            hi = float("inf") if hi is None else hi
        return self.graph.call_function(torch.clamp, (q, lo, hi))

    def _traits(self, n: fx.Node) -> OpTraits:
        if n.op == "call_module":
            mod = self.modules.get(n.target)
            return UNKNOWN if mod is None else module_traits(mod)
        return node_traits(n, self.gm)

    def _activation(self, n: fx.Node) -> tuple[float, float | None] | None:
        """The static clip bounds of a relu / relu6 (fused or a quantized clamp)."""
        return self._traits(n).clip

    def _output_pattern(
        self, n: fx.Node
    ) -> tuple[list[fx.Node], ActQParams, tuple[float, float | None] | None] | None:
        """``n -> [relu] -> quantizer`` with single users: (nodes consumed, qparams, act)."""
        if len(n.users) != 1:
            return None
        u = next(iter(n.users))
        act = None
        consumed = [u]
        if self._quantizer(u) is None:
            act = self._activation(u)
            if act is None or len(u.users) != 1 or u.args[:1] != (n,):
                return None
            u = next(iter(u.users))
            consumed.append(u)
            if self._quantizer(u) is None:
                return None
        try:
            qp = activation_qparams(self._quantizer(u))
        except Unsupported:
            return None  # the quantizer itself reports it (error or float) when it is reached
        return consumed, qp, act

    def _finish_pattern(
        self,
        n: fx.Node,
        consumed: list[fx.Node],
        out: fx.Node,
        qp: ActQParams,
        detail: str,
    ) -> None:
        value = _Value(out, qp)
        self.env[n] = value
        self._record(n, Execution.INTEGER, detail)
        for c in consumed:
            self.env[c] = value
            if self._quantizer(c) is None:
                self._record(c, Execution.PASSTHROUGH, f"fused into {self._name(n)}")

    # -- quantizers ----------------------------------------------------------------------------
    def _lower_quantizer(self, n: fx.Node) -> None:
        fq = self._quantizer(n)
        v = self.env[n.args[0]]
        try:
            qp = activation_qparams(fq)
        except Unsupported as err:
            if not self.keep_float:
                raise ConvertError(
                    f"convert: op {self._producer(n)!r} (output quantizer {n.target}): "
                    f"{err.reason}. Quantize it to 8 bits, or pass keep_float=True to keep it "
                    "(and the ops around it) in float with fake quantization"
                ) from None
            new = self.graph.node_copy(n, self._float_arg)
            new.target = self._register(n.target, fq, original=True)
            self.env[n] = _Value(new)
            detail = f"kept float (fake quantization): {err.reason}"
            self.ops.append(ConvertedOp(n.target, "FakeQuantize", Execution.FLOAT, detail))
            return
        if v.qp is None:
            self.env[n] = _Value(self._quantize(v.node, qp), qp)
        elif v.qp == qp:
            self.env[n] = v
        else:  # requantize: exactly what fake-quantizing a fake-quantized value does
            self.env[n] = _Value(self._quantize(self._float(v), qp), qp)

    def _producer(self, quantizer: fx.Node) -> str:
        """Name of the op whose value ``quantizer`` quantizes (``fc2 + relu`` when fused)."""
        src = quantizer.args[0]
        if not isinstance(src, fx.Node) or src.op == "placeholder":
            return self._quantizer(quantizer).name
        inner = src.args[0] if src.args else None
        if self._activation(src) is not None and isinstance(inner, fx.Node) and len(
            inner.users
        ) == 1 and inner.op != "placeholder":
            return f"{self._name(inner)} + {self._name(src)}"
        return self._name(src)

    # -- ops -----------------------------------------------------------------------------------
    def _lower_op(self, n: fx.Node) -> None:
        mod = self.modules.get(n.target) if n.op == "call_module" else None
        if mod is not None:
            kind = classify_module(mod)
            stub = is_stub(mod)
            if stub is OpKind.QUANT_STUB or self._traits(n).identity_at_inference:
                return self._passthrough(n, "identity at inference")
            if stub is OpKind.DEQUANT_STUB:
                self.env[n] = _Value(self._float(self.env[n.args[0]]))
                self._record(n, Execution.PASSTHROUGH, "dequantize")
                return None
        elif n.op == "call_function":
            kind = classify_function(n)
            if self._traits(n).identity_at_inference:
                return self._passthrough(n, "identity at inference")
        else:
            kind = classify_method(n)
        first = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
        first_q = first is not None and self.env[first].qp is not None
        if kind is OpKind.WEIGHTED and mod is not None:
            return self._lower_weighted(n, mod)
        if kind is OpKind.WEIGHTED:
            return self._lower_float(
                n,
                f"functional {self._op_type(n)}: convert maps the module forms (nn.Linear, "
                "nn.Conv2d ...) to quantized kernels; this one runs with its fake-quantized "
                "weight in float",
            )
        if not any(self.env[a].qp is not None for a in n.all_input_nodes):
            return self._lower_float(n, None)
        if is_metadata(n):
            return self._lower_native(n, "metadata", Execution.PASSTHROUGH)
        base = binary_base(self._traits(n).name) if n.op != "call_module" else None
        if base is not None:
            return self._lower_binary(n, base)
        if n.op == "call_function" and self._traits(n).name == "cat":
            return self._lower_cat(n)
        pool = average_pool_builder(n, mod) if first_q else None
        if pool is not None:
            return self._lower_avg_pool(n, pool)
        act = self._activation(n) if first_q else None
        if act == RELU:
            return self._lower_native(n, "relu on quantized codes", Execution.INTEGER)
        if act is not None:
            x = self.env[first]
            self.env[n] = _Value(self._clamp(x.node, *act), x.qp)
            self._record(n, Execution.INTEGER, f"quantized clamp to {act}")
            return None
        if first_q and kind is OpKind.SHARE:
            if self._native(n):
                return self._lower_native(n, "on the quantized tensor", Execution.PASSTHROUGH)
            return self._lower_share_float(n)
        return self._lower_float(n, None)

    def _passthrough(self, n: fx.Node, detail: str) -> None:
        self.env[n] = self.env[n.args[0]]
        self._record(n, Execution.PASSTHROUGH, detail)

    def _native(self, n: fx.Node) -> bool:
        """A quantized kernel of this engine runs the op on the quantized tensor as it is."""
        return self.engine in self._traits(n).native

    def _quant_arg(self, a: fx.Node) -> Any:
        return self.env[a].node

    def _lower_native(self, n: fx.Node, detail: str, execution: Execution) -> None:
        new = self.graph.node_copy(n, self._quant_arg)
        if n.op == "call_method":
            new.target = METHOD_REWRITES.get(n.target, n.target)
        elif n.op == "call_module":
            new.target = self._register(n.target, self.modules[n.target], original=True)
        if is_metadata(n):
            self.env[n] = _Value(new)
            return
        first = self.env[n.args[0]]
        if first.seq and n.target in (operator.getitem, "__getitem__"):
            seq = isinstance(n.args[1], slice)  # one tensor out of a chunk / split
        else:
            seq = first.seq or self._traits(n).sequence_output
        self.env[n] = _Value(new, first.qp, seq)
        self._record(n, execution, detail)

    def _lower_share_float(self, n: fx.Node) -> None:
        """A value-moving op without a quantized kernel: float on dequantized values, then
        quantized again with the same parameters (exact: the values stay on that grid)."""
        qp = self.env[n.args[0]].qp
        new = self._copy_float(n)
        if self._traits(n).sequence_output:
            out = self.graph.call_function(_requantize_all, (new, qp.scale, qp.zero_point))
            self.env[n] = _Value(out, qp, seq=True)
        else:
            self.env[n] = _Value(self._quantize(new, qp), qp)
        self._record(
            n,
            Execution.FLOAT,
            f"torch has no quantized kernel for {self._op_type(n)!r}; runs on dequantized "
            "values, re-quantized with the same parameters (exact)",
        )

    def _copy_float(self, n: fx.Node) -> fx.Node:
        new = self.graph.node_copy(n, self._float_arg)
        if n.op in ("call_module", "get_attr"):
            obj = self.modules[n.target] if n.op == "call_module" else self._attr(n.target)
            new.target = self._register(n.target, obj, original=True)
        return new

    def _lower_float(self, n: fx.Node, reason: str | None) -> None:
        new = self._copy_float(n)
        self.env[n] = _Value(new)
        if n.op == "get_attr":
            return
        if reason is None:
            rec = self.report.ops.get(self._name(n))
            if rec is not None and rec.float_reason:
                reason = f"float in the prepared model: {rec.float_reason}"
            elif not any(self.env[a].qp is not None for a in n.all_input_nodes):
                reason = "its inputs are float (not quantized)"
            else:
                reason = f"no integer kernel for {self._op_type(n)!r} in torch's quantized engines"
        self._record(n, Execution.FLOAT, reason)

    # -- weighted ------------------------------------------------------------------------------
    def _lower_weighted(self, n: fx.Node, mod: nn.Module) -> None:
        reason = not_converted_reason(mod)
        if reason is not None:
            return self._lower_float(n, reason)
        x = self.env[n.args[0]] if n.args else None
        pattern = self._output_pattern(n)
        if x is None or x.qp is None or len(n.args) != 1 or n.kwargs:
            return self._lower_float(n, "its input is not a quantized tensor")
        if pattern is None:
            return self._lower_float(
                n, "no 8-bit output quantizer follows it (torch's kernels return quantized)"
            )
        consumed, qp, act = pattern
        fused_relu = act == RELU
        try:
            qmod = build_quantized_weighted(mod, qp, fused_relu)
        except Unsupported as err:
            if err.dtype and not self.keep_float:
                raise ConvertError(
                    f"convert: op {self._name(n)!r}: {err.reason}; pass keep_float=True to "
                    "keep it in float"
                ) from None
            return self._lower_float(n, err.reason)
        path = self._register(self._name(n), qmod, original=False)
        out = self.graph.call_module(path, (x.node,))
        out = self._saturate(out, qp, None if fused_relu else act)
        self._finish_pattern(n, consumed, out, qp, f"{type(qmod).__name__} -> {qp}")
        return None

    # -- add / mul / cat -----------------------------------------------------------------------
    def _lower_binary(self, n: fx.Node, base: str) -> None:
        args = list(n.args)
        extra = {k: v for k, v in n.kwargs.items() if not (k == "alpha" and v == 1)}
        if (
            len(args) != 2
            or extra
            or not all(isinstance(a, fx.Node) and self.env[a].qp is not None for a in args)
            or any(self.env[a].seq for a in args)
        ):
            return self._lower_float(
                n, f"quantized {base} needs two quantized tensors (a scalar or float operand)"
            )
        pattern = self._output_pattern(n)
        if pattern is None:
            return self._lower_float(n, "no 8-bit output quantizer follows it")
        consumed, qp, act = pattern
        plain, fused = BINARY_KERNELS[base]
        use_fused = act == RELU and fused is not None
        kernel = fused if use_fused else plain
        out = self.graph.call_function(
            kernel, (self.env[args[0]].node, self.env[args[1]].node, qp.scale, qp.zero_point)
        )
        out = self._saturate(out, qp, None if use_fused else act)
        name = f"{base}_relu" if use_fused else base
        self._finish_pattern(n, consumed, out, qp, f"quantized::{name} -> {qp}")
        return None

    def _lower_cat(self, n: fx.Node) -> None:
        tensors = n.args[0] if n.args else n.kwargs.get("tensors")
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        ok = isinstance(tensors, (list, tuple)) and all(
            isinstance(t, fx.Node) and self.env[t].qp is not None and not self.env[t].seq
            for t in tensors
        )
        pattern = self._output_pattern(n) if ok else None
        if pattern is None:
            reason = "no 8-bit output quantizer follows it" if ok else "an input is not quantized"
            return self._lower_float(n, reason)
        consumed, qp, act = pattern
        qs = [self.env[t].node for t in tensors]
        out = self.graph.call_function(
            torch.ops.quantized.cat, (qs, dim, qp.scale, qp.zero_point)
        )
        out = self._saturate(out, qp, act)
        self._finish_pattern(n, consumed, out, qp, f"quantized::cat -> {qp}")
        return None

    # -- average pooling -----------------------------------------------------------------------
    def _lower_avg_pool(self, n: fx.Node, build: Callable[[ActQParams], nn.Module]) -> None:
        x = self.env[n.args[0]]
        pattern = self._output_pattern(n)
        if pattern is None or x.seq:
            return self._lower_float(n, "no 8-bit output quantizer follows it")
        consumed, qp, act = pattern
        try:
            module = build(qp)
        except Unsupported as err:
            return self._lower_float(n, err.reason)
        path = self._register(self._name(n), module, original=False)
        out = self.graph.call_module(path, (x.node,))
        out = self._saturate(out, qp, act)
        self._finish_pattern(n, consumed, out, qp, f"depthwise quantized conv averaging -> {qp}")
        return None


def _requantize_all(values: Any, scale: float, zero_point: int) -> Any:
    """Quantize every tensor of a list / tuple with one set of parameters."""
    return type(values)(
        torch.quantize_per_tensor(v, scale, zero_point, torch.quint8) for v in values
    )


def lower(
    gm: fx.GraphModule, report: PrepareReport, engine: str, keep_float: bool
) -> tuple[fx.GraphModule, list[ConvertedOp]]:
    """Build the converted GraphModule of prepared ``gm`` (quantizers calibrated and frozen)
    for torch quantized ``engine`` (active while this runs: weights are packed for it)."""
    return _Lowering(gm, report, engine, keep_float).run()
