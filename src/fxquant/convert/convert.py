"""``convert``: a calibrated prepared model -> a real int8 model on torch's quantized engines.

::

    from fxquant.convert import convert

    qmodel = fxquant.prepare(model, example, fxquant.default_calibration_qconfig_setter,
                             backend="x86")
    fxquant.calibrate(qmodel, data)
    int8 = convert(qmodel, backend="x86")
    print(int8.report())        # which ops run as integer kernels, which stayed float and why
    y = int8(x)                 # float in, float out; quantized tensors inside
    # deploy: TorchScript (deprecated in torch 2.13 but working); select the same engine
    torch.backends.quantized.engine = int8.engine
    torch.jit.save(torch.jit.trace(int8.module, x), "int8.pt")

Conversion keeps the numerics of the simulation: the integer weights are the codes fxquant's
weight quantizers produce, every activation is quantized with its quantizer's scale and zero
point (and saturates at its dtype's codes), and ops without an integer kernel run the prepared
model's own float module on dequantized values.  Remaining differences come from the kernels'
requantization (float multipliers; qnnpack: fixed-point) and are at most about one quantization
step on a small fraction of elements; ``tests/convert`` measures them.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..backends import BackendProfile, get_profile
from ..fake_quant import FakeQuantize, FakeQuantState
from ..graph.report import get_report
from .lowering import ConvertedOp, ConvertError, Execution, lower
from .qparams import engine_for, quantized_engine, silence_deprecation

__all__ = ["convert", "ConvertedModel", "ConvertError", "summary"]

_DEFAULT_BACKEND = "x86"


class ConvertedModel(nn.Module):
    """The integer model returned by :func:`convert`.

    Attributes:
        module: the converted ``torch.fx.GraphModule`` (quantized torch modules and kernels;
            ``print(model.module.code)`` shows it).
        backend: the fxquant backend it was converted for (``x86``, ``fbgemm``, ``qnnpack``).
        engine: the ``torch.backends.quantized.engine`` its kernels run on; :meth:`forward`
            selects it for the duration of the call and restores the previous one (a
            process-global setting: do not run models for different engines concurrently).
        ops: one :class:`ConvertedOp` per op of the prepared model, in graph order.

    Inference only: BatchNorm is folded with its running statistics and dropout is removed.
    ``copy.deepcopy`` and ``torch.jit.trace(model.module, x)`` (+ ``torch.jit.save``, under
    the same engine) work;
    pickling the whole module with ``torch.save`` does not (torch's fx unpickler cannot rebuild
    quantized modules): save the prepared model's ``state_dict`` and convert again, or trace.
    """

    def __init__(
        self, module: fx.GraphModule, backend: str, engine: str, ops: list[ConvertedOp]
    ) -> None:
        super().__init__()
        self.module = module
        self.backend = backend
        self.engine = engine
        self.ops: tuple[ConvertedOp, ...] = tuple(ops)
        self.eval()

    @property
    def float_ops(self) -> list[tuple[str, str]]:
        """``(op name, reason)`` of every op that computes in float."""
        return [(o.name, o.detail) for o in self.ops if o.execution is Execution.FLOAT]

    @property
    def code(self) -> str:
        """Python code of the converted graph."""
        return self.module.code

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with quantized_engine(self.engine):
            return self.module(*args, **kwargs)

    def boundaries(self) -> dict[str, int]:
        """How often the graph enters / leaves the quantized domain (counts of nodes)."""
        counts: Counter[str] = Counter()
        for n in self.module.graph.nodes:
            if n.op == "call_function" and n.target is torch.quantize_per_tensor:
                counts["quantize"] += 1
            elif n.op == "call_method" and n.target == "dequantize":
                counts["dequantize"] += 1
            elif n.op == "call_function" and n.target is torch.clamp:
                counts["saturate"] += 1
        return {k: counts.get(k, 0) for k in ("quantize", "dequantize", "saturate")}

    def report(self) -> str:
        """A table of every op (how it runs, kernel / parameters or the float reason)."""
        by_kind = Counter(o.execution for o in self.ops)
        b = self.boundaries()
        head = ("name", "op_type", "runs_as", "detail")
        rows = [head] + [(o.name, o.op_type, o.execution.value, o.detail) for o in self.ops]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [
            f"fxquant converted model (backend={self.backend}, engine={self.engine}): "
            f"{by_kind[Execution.INTEGER]} integer, {by_kind[Execution.PASSTHROUGH]} passthrough, "
            f"{by_kind[Execution.FLOAT]} float op(s); {b['quantize']} quantize, "
            f"{b['dequantize']} dequantize, {b['saturate']} saturating clamp(s)"
        ]
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) +
                         "  " + r[3])
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
        floats = self.float_ops
        lines.append("")
        lines.append(f"float ops: {len(floats)}")
        lines.extend(f"  {name}: {reason}" for name, reason in floats)
        return "\n".join(lines)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, engine={self.engine!r}"


def summary(model: ConvertedModel) -> str:
    """The :meth:`ConvertedModel.report` table of a converted model."""
    if not isinstance(model, ConvertedModel):
        raise TypeError(
            f"summary expects a model returned by fxquant.convert, got {type(model).__name__} "
            "(use fxquant.summary for prepared models)"
        )
    return model.report()


def _freeze_quantizers(model: nn.Module) -> None:
    """VALIDATION everywhere; error listing the quantizers that have no scale."""
    missing = []
    for path, m in model.named_modules():
        if not isinstance(m, FakeQuantize):
            continue
        m.set_state(FakeQuantState.VALIDATION)  # computes pending scales (mid-calibration)
        if not bool(m.calibrated) and not m.is_weight:
            missing.append(f"{m.name or path!r} ({path})")
    if missing:
        raise ConvertError(
            f"convert: {len(missing)} quantizer(s) have no scale yet: {', '.join(missing)}; run "
            "fxquant.calibrate(qmodel, data) (or train in FakeQuantState.QAT) before converting"
        )


def convert(
    qmodel: nn.Module,
    backend: str | BackendProfile | None = None,
    *,
    inplace: bool = False,
    keep_float: bool = False,
) -> ConvertedModel:
    """Convert a calibrated prepared model into an integer model on torch's quantized engines.

    Args:
        qmodel: a model returned by :func:`fxquant.prepare` (fx capture), calibrated or trained.
        backend: ``"x86"``, ``"fbgemm"`` or ``"qnnpack"`` (the torch engine), or their
            :class:`BackendProfile`.  Default: the backend ``qmodel`` was prepared for (its
            profile's ``engine``; ``"x86"`` when that profile has none).  Converting for
            another profile than the prepare-time one warns: the simulated numerics
            (reduce_range, per-channel weights, reciprocal scale) are then not the engine's.
        inplace: reuse ``qmodel``'s modules instead of converting a deep copy (saves memory;
            ``qmodel`` must not be used afterwards: its quantizers are frozen in VALIDATION and
            the converted model may share its float modules).
        keep_float: ops whose dtypes torch's engines cannot run (activations above 8 bits or
            per channel, weights above 8 bits) stay in float with fake quantization instead of
            raising :class:`ConvertError`.

    Returns:
        :class:`ConvertedModel`: float in, float out; ``.float_ops`` lists what stayed float.

    Ops without an integer kernel in torch (sigmoid, layer_norm, softmax, transposed conv ...)
    run in float between a dequantize and the next quantize; each is listed with the reason.
    Bias stays float: torch's x86 / fbgemm kernels add it in float, qnnpack quantizes it to int32
    with scale ``input_scale * weight_scale`` itself, so no int32 overflow check is needed here.
    """
    report = get_report(qmodel)
    profile = _target_profile(report.profile, backend)
    engine = engine_for(profile)
    if report.capture_mode != "fx" or not isinstance(qmodel, fx.GraphModule):
        raise ConvertError(
            "convert: this model was captured eagerly (its forward could not be traced: "
            f"{report.root_failure}); convert needs an fx graph. Make the untraceable code a "
            "leaf (prepare(..., leaf_modules=[...])) or a submodule so that the root traces"
        )
    model = qmodel if inplace else copy.deepcopy(qmodel)
    model.eval()
    _freeze_quantizers(model)
    with quantized_engine(engine), silence_deprecation(), torch.no_grad():
        gm, ops = lower(model, report, engine, keep_float)
    return ConvertedModel(gm, profile.name, engine, ops)


def _target_profile(recorded: BackendProfile, backend: str | BackendProfile | None
                    ) -> BackendProfile:
    """The profile to convert for: ``backend``, else the prepare-time one (x86 when it has no
    torch engine); warns when its numerics differ from what the model was prepared with."""
    if backend is None:
        target = recorded if recorded.engine is not None else get_profile(_DEFAULT_BACKEND)
    else:
        target = get_profile(backend)
    if target.engine is None:
        return target  # engine_for raises the clear error
    differ = recorded.numerics_differ(target)
    if differ:
        warnings.warn(
            f"convert: the model was prepared for backend {recorded.name!r} but is converted "
            f"for {target.name!r}, whose numerics differ ({', '.join(differ)}); the integer "
            f"model then differs from the simulation: prepare with backend={target.name!r}",
            UserWarning,
            stacklevel=3,
        )
    return target
