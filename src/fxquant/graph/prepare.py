"""``prepare``: capture the model, decide qconfigs, fold BN, insert quantizers.

The pipeline::

    deepcopy -> capture (fx, float islands) -> the stages of fxquant.graph.stages (names ->
             attention call sites -> kinds -> qconfigs -> fold conv+BN -> plan placement ->
             swap weighted modules -> library modules -> insert activation quantizers) ->
             float islands prepared eagerly

If the model's own ``forward`` cannot be traced, :func:`fxquant.graph.eager.prepare_eager`
takes over (eager capture of everything around the failing lines).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable
from typing import Any

from torch import nn

from ..backends import BackendProfile, get_profile
from ..errors import (
    CaptureError,
    ConfigError,
    FxquantError,
    UnknownOpNameError,
    bounded,
    bounded_list,
)
from ..fake_quant import FakeQuantize
from ..modelio import as_inputs
from ..qconfig import SetterArg, as_setter_tuple, default_qat_qconfig_setter, validate_setters
from .capture import RootTraceError, capture, check_inputs_fit, unspecified_defaults
from .eager import prepare_eager, prepare_islands
from .report import REPORT_KEY, PrepareOptions, PrepareReport, get_report
from .simulate import install as install_simulation
from .stages import GraphPass, PrepareContext, prepare_graph

__all__ = ["prepare", "as_input_tuple"]


def as_input_tuple(example_inputs: Any) -> tuple[Any, ...]:
    """The positional inputs of one batch (:func:`fxquant.modelio.as_inputs`); a thin alias
    kept for callers of the earlier API (keyword inputs are not positional: use
    :func:`~fxquant.modelio.as_inputs`)."""
    return as_inputs(example_inputs).args


def prepare(
    model: nn.Module,
    example_inputs: Any,
    qconfig_setter: SetterArg = default_qat_qconfig_setter,
    backend: str | BackendProfile = "generic",
    *,
    leaf_modules: Iterable[str] = (),
    skip_modules: Iterable[str] = (),
    fold_bn: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """Return a copy of ``model`` with fake quantizers inserted (``model`` is untouched).

    Args:
        model: any ``nn.Module``; no edits needed (functional ops, ``+``, ``torch.cat``,
            reused modules, eager-style QuantStub / FloatFunctional models all work).
        example_inputs: one batch (:mod:`fxquant.modelio`): a tensor, a tuple of positional
            inputs or a dict of keyword inputs (used to trace and to learn which values are
            float tensors).
        qconfig_setter: a setter, a :class:`QConfig`, a ``{name: QConfig}`` dict or a tuple of
            them (earlier wins; see :mod:`fxquant.qconfig.setters`).
        backend: profile name (``generic``, ``x86``, ``fbgemm``, ``qnnpack``, ``onnxruntime``,
            ``tensorrt``) or a :class:`BackendProfile`.
        leaf_modules: module paths not to trace into (quantized at their boundary).
        skip_modules: module paths kept entirely in float.
        fold_bn: fold BatchNorm into the preceding conv (fold-aware in QAT).
        inplace: build the prepared model from ``model``'s own modules instead of a deep copy:
            it shares ``model``'s parameters and buffers (an optimizer built on
            ``model.parameters()`` trains the prepared model), and ``model``'s leaf modules may
            gain quantizer children.  Use ``model`` itself for nothing else afterwards.

    The prepared model is in ``FakeQuantState.QAT``; use :func:`fxquant.calibrate` for PTQ.

    Raises:
        ConfigError: ``model`` is not an ``nn.Module``, a bad setter, backend or option.
        CaptureError: ``model`` was prepared already (pass the float model).
        DataError: the model cannot run on ``example_inputs`` (names the failing module).
        UnknownOpNameError: a ``leaf_modules`` / ``skip_modules`` / setter name matches no
            module or op of the model.

    Its report records the options and a copy of ``example_inputs`` (what :func:`fxquant.save`
    stores to re-prepare the model).
    """
    _check_float_model(model)
    profile = get_profile(backend)
    setters = as_setter_tuple(qconfig_setter)
    inputs = as_inputs(example_inputs)
    leaf = _module_paths(model, leaf_modules, "leaf_modules")
    skip = _module_paths(model, skip_modules, "skip_modules")
    options = PrepareOptions(tuple(sorted(leaf)), tuple(sorted(skip)), bool(fold_bn))
    recorded = inputs.detached_copy()  # before the model runs: nothing can change it
    original = model
    if not inplace:
        model = copy.deepcopy(model)
    try:
        try:
            gm, islands = capture(model, inputs, leaf | skip)
        except RootTraceError as err:
            qmodel = prepare_eager(
                model,
                inputs.args,
                setters,
                profile,
                err,
                leaf_modules=leaf,
                skip_modules=skip,
                fold_bn=fold_bn,
                kwargs=inputs.kwargs,
            )
            report = get_report(qmodel)
            report.options, report.example_inputs = options, recorded
            return qmodel
    except FxquantError:
        raise
    except Exception:
        check_inputs_fit(original if inplace else model, inputs, "prepare")
        raise
    report = PrepareReport(profile=profile, islands=dict(islands), options=options,
                           example_inputs=recorded)
    report.num_inputs = sum(1 for n in gm.graph.nodes if n.op == "placeholder") - len(
        unspecified_defaults(model, inputs))  # arguments fixed to their defaults are no inputs
    ctx = PrepareContext(setters, profile, leaf, skip, fold_bn, report)
    prepare_graph(GraphPass(gm, ctx, dict(islands)))
    prepare_islands(gm, islands, ctx)
    validate_setters(setters, sorted(report.ops) + [p for p, _ in gm.named_modules() if p])
    gm.meta[REPORT_KEY] = report
    return install_simulation(gm)


def _check_float_model(model: Any) -> None:
    """``model`` is an ``nn.Module`` that fxquant has not prepared yet."""
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"prepare: model must be a torch.nn.Module, got {type(model).__name__}; wrap a "
            "function in an nn.Module whose forward calls it"
        )
    meta = getattr(model, "meta", None)
    prepared = (isinstance(meta, dict) and isinstance(meta.get(REPORT_KEY), PrepareReport)) \
        or isinstance(getattr(model, "_fxquant_report", None), PrepareReport)
    quantizer = next((n for n, m in model.named_modules() if isinstance(m, FakeQuantize)), None)
    if prepared or quantizer is not None:
        where = "" if quantizer is None else f" (it holds quantizer {bounded(quantizer)!r})"
        raise CaptureError(
            f"prepare: {type(model).__name__} is already prepared{where}: pass the float model "
            "(prepare returns a new model and leaves its argument untouched)"
        )


def _module_paths(model: nn.Module, paths: Iterable[str], what: str) -> frozenset[str]:
    """``paths`` as a set of module paths of ``model``; errors name the argument."""
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Iterable):
        raise ConfigError(
            f"prepare: {what} must be a list of module paths (e.g. [{bounded(paths, 40)!r}]), "
            f"got {type(paths).__name__}"
        )
    out = frozenset(paths)
    bad = [p for p in out if not isinstance(p, str)]
    if bad:
        raise ConfigError(f"prepare: {what} entries are module paths (str), got "
                          f"{bounded(repr(bad[0]))}")
    known = [n for n, _ in model.named_modules() if n]
    unknown = sorted(out - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=3, cutoff=0.4)
        hint = f"; did you mean {bounded_list(close)}?" if close else \
            f"; its modules include {bounded_list(known)}"
        raise UnknownOpNameError(
            f"prepare: {what} {bounded_list(unknown)} is not a module path of "
            f"{type(model).__name__}{hint}"
        )
    return out
