"""Versioned save / load of a prepared model: :func:`save` and :func:`load`.

A checkpoint keeps what :func:`fxquant.prepare` needs to rebuild the model plus every tensor of
its state, so a new process restores it bit-exactly from the float model alone, without the
code that chose its qconfigs (templates, setters, a sensitivity search):

* the backend profile (as data), the prepare options (``leaf_modules``, ``skip_modules``,
  ``fold_bn``) and the example inputs prepare traced with (an eagerly captured ``forward``
  takes the branches their values take);
* every op's resolved :class:`~fxquant.QConfig` by op name, and every quantizer's
  :class:`~fxquant.QuantizerSpec` by module path (both as data);
* the state dict (weights, scales, zero points, observer statistics, quantizer states), the
  train / eval flags, which parameters are frozen (``requires_grad=False``) and which
  quantizers hold statistics not yet turned into a scale.

:func:`load` re-prepares the user's float model with a setter that gives every op its saved
QConfig, checks that the ops and quantizers are the saved ones (a
:class:`~fxquant.CheckpointError` names the first missing / extra one when the model's code
changed), loads the state strictly and checks each rebuilt quantizer's spec against the saved
one.  The file is ``torch.save`` of plain values and tensors, read back with
``torch.load(weights_only=True)``; its keys and version policy are in ``docs/design.md``.

>>> import os, tempfile, torch, fxquant
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
>>> x = torch.randn(8, 4)
>>> qmodel = fxquant.prepare(model, x, fxquant.default_calibration_qconfig_setter)
>>> _ = fxquant.calibrate(qmodel, [x], progress=False)
>>> path = fxquant.save(qmodel, os.path.join(tempfile.mkdtemp(), "q.fxq"))
>>> loaded = fxquant.load(path, torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()))
>>> torch.equal(loaded(x), qmodel(x))
True
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from .backends import BackendProfile
from .errors import CheckpointError, ConfigError, bounded, bounded_list
from .export.atomic import atomic_path
from .fake_quant import FakeQuantize, QuantizerSpec
from .graph import PrepareReport, get_report, prepare
from .modelio import ModelInputs, model_device
from .qconfig import OpInfo, QConfig, SetterContext
from .version import __version__

__all__ = ["save", "load", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION"]

CHECKPOINT_FORMAT = "fxquant.checkpoint"
"""The ``format`` entry of every checkpoint file."""
CHECKPOINT_VERSION = 1
"""The checkpoint format version this fxquant writes; it reads every version up to it."""

_TOP_KEYS = ("format", "version", "config", "example_inputs", "state_dict")
_CONFIG_KEYS = ("fxquant_version", "profile", "prepare", "capture_mode", "qconfigs", "ops",
                "specs", "quantizers", "training", "no_grad", "pending")


# -- save --------------------------------------------------------------------------------------
def save(qmodel: nn.Module, path: str | os.PathLike[str]) -> str:
    """Write ``qmodel`` (a model from :func:`fxquant.prepare`) to ``path``; returns its absolute
    path.

    Everything :func:`load` needs is in the file: the profile, prepare's options and example
    inputs, every op's QConfig and every quantizer's spec (as data), the state dict and the
    train / eval flags.  A ``DistributedDataParallel`` (or ``DataParallel``) wrapper is looked
    through: its ``.module`` is saved; under DDP save on one rank (``dist.get_rank() == 0``),
    after calibration has ended (statistics are merged across ranks when it ends).  The file is
    written atomically (a temp file, then renamed): nothing half-written is ever at ``path``.
    The same model state gives the same bytes.

    Raises:
        ConfigError: ``qmodel`` is not a prepared model, or holds something that cannot be
            saved as data (a quantizer class or observer fxquant does not know, a non-tensor
            state-dict entry, example inputs other than tensors / numbers / strings in
            tuples, lists and dicts).
        CheckpointError: ``path`` cannot be written (the message names it).

    >>> import os, tempfile, torch, fxquant
    >>> q = fxquant.prepare(torch.nn.Linear(4, 2), torch.randn(1, 4))
    >>> os.path.basename(fxquant.save(q, os.path.join(tempfile.mkdtemp(), "q.fxq")))
    'q.fxq'
    """
    model = _unwrap(qmodel)
    report = _report_of(model, "fxquant.save")
    if report.example_inputs is None:
        raise ConfigError(
            "fxquant.save: the model's prepare report holds no example inputs (prepared by an "
            "older fxquant?); prepare it again with this fxquant, then save"
        )
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": json.dumps(_config(model, report), separators=(",", ":"), allow_nan=False),
        "example_inputs": {
            "args": [_plain_input(v, f"args[{i}]")
                     for i, v in enumerate(report.example_inputs.args)],
            "kwargs": {k: _plain_input(v, f"kwargs[{k!r}]")
                       for k, v in report.example_inputs.kwargs.items()},
        },
        "state_dict": _state_dict(model),
    }
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:  # a file object: torch names the zip records "archive/"
                torch.save(payload, f)  # (a path would put the temp file's random name there)
                f.flush()
                os.fsync(f.fileno())
    except OSError as err:
        raise CheckpointError(f"fxquant.save: cannot write {bounded(os.fspath(path))}: "
                              f"{bounded(err, 200)}") from err
    return os.path.abspath(os.fspath(path))


def _config(model: nn.Module, report: PrepareReport) -> dict[str, Any]:
    """The JSON part of a checkpoint (see ``docs/design.md``)."""
    qconfigs: list[dict[str, Any]] = []
    ops: dict[str, Any] = {}
    for name, rec in report.ops.items():
        index = None
        if rec.qconfig is not None:
            try:
                index = _intern(qconfigs, rec.qconfig.to_dict())
            except ConfigError as exc:
                raise ConfigError(f"fxquant.save: op {bounded(name)!r}: {exc}") from None
        ops[name] = {"type": rec.op_type, "qconfig": index, "quantizers": dict(rec.quantizers),
                     "folded": rec.folded}
    specs: list[dict[str, Any]] = []
    quantizers: dict[str, int] = {}
    pending: list[str] = []
    for path, fq in _quantizers(model).items():
        try:
            quantizers[path] = _intern(specs, fq.spec().to_dict())
        except ConfigError as exc:
            raise ConfigError(f"fxquant.save: quantizer {bounded(path)!r}: {exc}") from None
        if fq._dirty:  # observed in CALIBRATION, scale not computed yet: load keeps it so
            pending.append(path)
    opts = report.options
    return {
        "fxquant_version": __version__,
        "profile": report.profile.to_dict(),
        "prepare": {"leaf_modules": list(opts.leaf_modules),
                    "skip_modules": list(opts.skip_modules), "fold_bn": opts.fold_bn},
        "capture_mode": report.capture_mode,
        "qconfigs": qconfigs,
        "ops": ops,
        "specs": specs,
        "quantizers": quantizers,
        "training": {"mode": model.training,
                     "flipped": [p for p, m in model.named_modules()
                                 if m.training != model.training]},
        "no_grad": [p for p, t in model.named_parameters() if not t.requires_grad],
        "pending": pending,
    }


def _intern(table: list[dict[str, Any]], item: dict[str, Any]) -> int:
    """Index of ``item`` in ``table`` (appended when new): equal qconfigs / specs are stored
    once."""
    try:
        return table.index(item)
    except ValueError:
        table.append(item)
        return len(table) - 1


def _plain_input(value: Any, where: str) -> Any:
    """An example input as what ``torch.load(weights_only=True)`` reads back."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        items = [_plain_input(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain_input(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise ConfigError(
        f"fxquant.save: example input {bounded(where)} is a {type(value).__name__}; a checkpoint "
        "holds tensors, numbers, strings and None in tuples, lists and str-keyed dicts: prepare "
        "with example inputs made of those"
    )


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise ConfigError(f"fxquant.save: state-dict entry {bounded(key)!r} is a "
                              f"{type(value).__name__}, not a tensor: it cannot be saved")
        out[key] = value.detach().cpu()
    return out


# -- load --------------------------------------------------------------------------------------
def load(path: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """The prepared model saved in ``path``, rebuilt from ``model`` (the float model, e.g. a
    fresh instance of its class; left untouched) and restored bit-exactly.

    ``model`` is prepared again with the saved profile, options, example inputs and per-op
    QConfigs (no setter code needed), then the saved state is loaded strictly: weights, scales,
    observer statistics, quantizer states and train / eval flags are the saved ones, so outputs
    and every quantizer's qparams equal the saved model's, and QAT resumes where it stopped
    (the optimizer's state is yours to save: see the README).  The example inputs are moved to
    ``model``'s device.  Reading uses ``torch.load(weights_only=True)`` only.

    Raises:
        CheckpointError: ``path`` is missing, truncated, corrupt, not an fxquant checkpoint or
            from a newer fxquant (the message names the file, its version and the supported
            one); or ``model`` does not match the saved one (names the first missing / extra
            op, quantizer or state-dict entry, or the quantizer whose spec differs).
        ConfigError: ``model`` is already prepared.

    >>> import os, tempfile, torch, fxquant
    >>> net = lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    >>> q = fxquant.prepare(net().eval(), torch.randn(2, 3, 8, 8))   # conv + BN folded, QAT
    >>> path = fxquant.save(q, os.path.join(tempfile.mkdtemp(), "q.fxq"))
    >>> restored = fxquant.load(path, net())                 # no setter, other initial weights
    >>> x = torch.randn(2, 3, 8, 8)
    >>> torch.equal(restored.eval()(x), q.eval()(x))
    True
    """
    name = bounded(os.fspath(path), 120)
    payload = _read(os.fspath(path), name)
    cfg = _parse_config(payload["config"], name)
    try:
        profile = BackendProfile.from_dict(cfg["profile"])
        qconfigs = [QConfig.from_dict(d) for d in cfg["qconfigs"]]
        specs = [QuantizerSpec.from_dict(d) for d in cfg["specs"]]
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {name}: {exc}") from None
    saved_qconfigs = {op: _entry(qconfigs, rec["qconfig"], name, f"op {op!r}")
                      for op, rec in cfg["ops"].items()}
    saved_specs = {p: _entry(specs, i, name, f"quantizer {p!r}")
                   for p, i in cfg["quantizers"].items()}
    try:
        get_report(model)
    except TypeError:
        pass
    else:
        raise ConfigError("fxquant.load: pass the float model (e.g. a fresh instance of its "
                          "class), not a prepared one")
    qmodel = _prepare_again(model, payload, cfg, _SavedQconfigs(saved_qconfigs), profile, name)
    _check_ops(get_report(qmodel), cfg, name)
    quantizers = _quantizers(qmodel)
    _check_names(name, "quantizer", list(saved_specs), list(quantizers))
    _load_state(qmodel, payload["state_dict"], name)
    for p, fq in quantizers.items():  # after loading: fixed_in_qat lives in a buffer
        spec = fq.spec()
        if spec != saved_specs[p]:
            diff = [f.name for f in dataclasses.fields(spec)
                    if getattr(spec, f.name) != getattr(saved_specs[p], f.name)]
            raise _mismatch(name, f"quantizer {p!r} is rebuilt with other settings than saved "
                                  f"(differing: {bounded_list(diff)})")
    for p in cfg["pending"]:
        quantizers[p]._dirty = True
    _restore_flags(qmodel, cfg["training"], cfg["no_grad"])
    return qmodel


def _prepare_again(model: nn.Module, payload: dict[str, Any], cfg: dict[str, Any],
                   setter: _SavedQconfigs, profile: BackendProfile, name: str) -> nn.Module:
    """``prepare`` a copy of ``model`` holding the saved float weights as it was prepared."""
    inputs = _inputs(payload["example_inputs"], name).to(model_device(model))
    model = copy.deepcopy(model)  # prepared in place below: the caller's model is untouched
    model.load_state_dict(_float_state(cfg["ops"], payload["state_dict"], model), strict=False)
    opts = cfg["prepare"]
    try:
        return prepare(model, inputs, setter, profile, leaf_modules=opts["leaf_modules"],
                       skip_modules=opts["skip_modules"], fold_bn=opts["fold_bn"], inplace=True)
    except Exception as exc:  # the model's code no longer runs the way it did when saved
        raise CheckpointError(
            f"checkpoint {name}: the model given to load cannot be prepared with the saved "
            f"example inputs ({type(exc).__name__}: {_first_line(exc)}); pass the float model "
            "the checkpoint was saved from"
        ) from exc


def _check_ops(report: PrepareReport, cfg: dict[str, Any], name: str) -> None:
    """The rebuilt model's ops are the saved ones: names, types, quantizers, folds."""
    if report.capture_mode != cfg["capture_mode"]:
        raise _mismatch(name, f"it was captured {cfg['capture_mode']!r} when saved, "
                              f"{report.capture_mode!r} now")
    _check_names(name, "op", list(cfg["ops"]), list(report.ops))
    for op, rec in report.ops.items():
        saved = cfg["ops"][op]
        if rec.op_type != saved["type"]:
            raise _mismatch(name, f"op {op!r} was a {saved['type']} when saved and is a "
                                  f"{rec.op_type} now")
        if rec.quantizers != saved["quantizers"] or rec.folded != saved["folded"]:
            raise _mismatch(name, f"op {op!r} is quantized differently than when saved "
                                  f"(quantizers {bounded(saved['quantizers'])}, folded "
                                  f"{saved['folded']!r} then; {bounded(rec.quantizers)}, "
                                  f"{rec.folded!r} now)")


class _SavedQconfigs:
    """The setter a checkpoint is re-prepared with: each op gets exactly the QConfig it had
    when saved, by exact op name (no prefixes); an op it does not know gets none (load then
    names it as an extra op)."""

    def __init__(self, qconfigs: Mapping[str, QConfig | None]) -> None:
        self.qconfigs = dict(qconfigs)

    def __call__(self, op: OpInfo, ctx: SetterContext) -> QConfig | None:
        return self.qconfigs.get(op.name)

    def __repr__(self) -> str:
        return f"SavedQconfigs({len(self.qconfigs)} ops)"


def _float_state(ops: dict[str, Any], state: dict[str, torch.Tensor],
                 model: nn.Module) -> dict[str, torch.Tensor]:
    """The saved tensors that belong to the float ``model`` (same name and shape), a folded
    BatchNorm's (``conv.bn.*`` in the prepared model) under the BatchNorm's own name.

    :func:`load` puts them into the float model before preparing it again, so what prepare
    computes from the weights (the branches an eagerly run ``forward`` takes, which values are
    finite) follows the saved weights, not the float model's initial ones.
    """
    rename = {}
    for rec in ops.values():
        wq = rec["quantizers"].get("weight", "")
        if rec["folded"] and wq.endswith(".weight_fake_quant"):
            rename[wq[: -len("weight_fake_quant")] + "bn."] = rec["folded"] + "."
    own = model.state_dict()
    out = {}
    for key, value in state.items():
        for src, dst in rename.items():
            if key.startswith(src):
                key = dst + key[len(src):]
                break
        if key in own and own[key].shape == value.shape:
            out[key] = value
    return out


def _read(path: str, name: str) -> dict[str, Any]:
    """The checkpoint's top-level dict, its format and version checked."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {name} does not exist or is not a file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip / pickle / weights-only errors all mean the same here
        raise CheckpointError(
            f"checkpoint {name} cannot be read: it is truncated, corrupt or not written by "
            f"fxquant.save ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        hint = ""
        if isinstance(payload, dict) and payload and all(
            isinstance(v, torch.Tensor) for v in payload.values()
        ):
            hint = ("; it looks like a plain state dict: prepare the model as it was prepared "
                    "and call load_state_dict, or write checkpoints with fxquant.save")
        raise CheckpointError(f"{name} is not an fxquant checkpoint (no format "
                              f"{CHECKPOINT_FORMAT!r}){hint}")
    version = payload.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"checkpoint {name}: bad format version {bounded(repr(version))}")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {name} has format version {version}, written by a newer fxquant; this "
            f"fxquant ({__version__}) reads versions up to {CHECKPOINT_VERSION}: upgrade fxquant "
            "to load it"
        )
    _expect_keys(payload, _TOP_KEYS, name, "the file")
    if not isinstance(payload["config"], str):
        raise _corrupt(name, "'config' is not a string")
    sd = payload["state_dict"]
    if not isinstance(sd, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()
    ):
        raise _corrupt(name, "'state_dict' is not a dict of tensors")
    return payload


def _parse_config(text: str, name: str) -> dict[str, Any]:
    try:
        cfg = json.loads(text)
    except ValueError as exc:
        raise _corrupt(name, f"'config' is not JSON ({bounded(exc, 100)})") from None
    if not isinstance(cfg, dict):
        raise _corrupt(name, "'config' is not a JSON object")
    _expect_keys(cfg, _CONFIG_KEYS, name, "'config'")
    kinds = {"profile": dict, "prepare": dict, "capture_mode": str, "qconfigs": list,
             "ops": dict, "specs": list, "quantizers": dict, "training": dict, "no_grad": list,
             "pending": list}
    for key, kind in kinds.items():
        if not isinstance(cfg[key], kind):
            raise _corrupt(name, f"config entry {key!r} is not a {kind.__name__}")
    opts = cfg["prepare"]
    _expect_keys(opts, ("leaf_modules", "skip_modules", "fold_bn"), name, "'prepare'")
    if not (_str_list(opts["leaf_modules"]) and _str_list(opts["skip_modules"])
            and isinstance(opts["fold_bn"], bool)):
        raise _corrupt(name, "bad prepare options")
    if not all(isinstance(r, dict) and set(r) == {"type", "qconfig", "quantizers", "folded"}
               and isinstance(r["type"], str) and isinstance(r["quantizers"], dict)
               and all(isinstance(v, str) for v in r["quantizers"].values())
               and (r["folded"] is None or isinstance(r["folded"], str))
               for r in cfg["ops"].values()):
        raise _corrupt(name, "bad op records")
    training = cfg["training"]
    _expect_keys(training, ("mode", "flipped"), name, "'training'")
    if not (isinstance(training["mode"], bool) and _str_list(training["flipped"])):
        raise _corrupt(name, "bad train / eval flags")
    if not _str_list(cfg["no_grad"]):
        raise _corrupt(name, "bad list of parameters without gradients")
    if not _str_list(cfg["pending"]) or not set(cfg["pending"]) <= set(cfg["quantizers"]):
        raise _corrupt(name, "bad pending-quantizer list")
    return cfg


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return bounded(text.splitlines()[0] if text else "", 160)


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _expect_keys(data: dict[str, Any], keys: tuple[str, ...], name: str, what: str) -> None:
    missing = [k for k in keys if k not in data]
    extra = sorted(str(k) for k in data if k not in keys)
    if missing or extra:
        parts = ([f"missing {bounded_list(missing)}"] if missing else []) + (
            [f"unknown {bounded_list(extra)}"] if extra else [])
        raise _corrupt(name, f"{what} has {' and '.join(parts)} keys")


def _entry(table: list[Any], index: Any, name: str, what: str) -> Any:
    if index is None:
        return None
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(table):
        raise _corrupt(name, f"{bounded(what)} refers to entry {bounded(repr(index))}")
    return table[index]


def _inputs(data: Any, name: str) -> ModelInputs:
    if not (isinstance(data, dict) and set(data) == {"args", "kwargs"}
            and isinstance(data["args"], (list, tuple)) and isinstance(data["kwargs"], dict)):
        raise _corrupt(name, "bad example inputs")
    return ModelInputs(tuple(data["args"]), dict(data["kwargs"]))


def _load_state(qmodel: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Load ``state`` strictly; a parameter that an algorithm added after prepare (a bias
    :func:`fxquant.bias_correction` created) is created first."""
    own = qmodel.state_dict()
    for key in state.keys() - own.keys():
        owner, _, attr = key.rpartition(".")
        try:
            mod = qmodel.get_submodule(owner)
        except AttributeError:
            continue
        if attr in mod._parameters and mod._parameters[attr] is None:
            weight = mod._parameters.get("weight")
            grad = weight.requires_grad if weight is not None else True
            dev = weight.device if weight is not None else model_device(qmodel)
            mod._parameters[attr] = nn.Parameter(torch.empty_like(state[key], device=dev),
                                                 requires_grad=grad)
    _check_names(name, "state-dict entry", list(state), list(qmodel.state_dict()))
    try:
        qmodel.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shapes: the model's layers have other sizes than saved
        lines = [ln.strip().rstrip(".") for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else str(exc))
        more = f" (+{len(lines) - 2} more)" if len(lines) > 2 else ""
        raise _mismatch(name, bounded(detail, 240) + more) from None


def _restore_flags(qmodel: nn.Module, training: dict[str, Any], no_grad: list[str]) -> None:
    """Every module's train / eval flag and every parameter's ``requires_grad`` as saved."""
    mode, flipped = training["mode"], set(training["flipped"])
    for p, m in qmodel.named_modules():
        m.training = mode != (p in flipped)
    frozen = set(no_grad)
    for p, t in qmodel.named_parameters():
        t.requires_grad_(p not in frozen)


def _check_names(name: str, what: str, saved: list[str], now: list[str]) -> None:
    saved_set, now_set = set(saved), set(now)
    missing = [n for n in saved if n not in now_set]
    extra = [n for n in now if n not in saved_set]
    if not (missing or extra):
        return
    parts = []
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        parts.append(f"the saved {what} {bounded(missing[0])!r} is missing{more}")
    if extra:
        more = f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""
        parts.append(f"{what} {bounded(extra[0])!r} is not in the checkpoint{more}")
    raise _mismatch(name, "; ".join(parts))


def _mismatch(name: str, detail: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {name} does not match the model given to load: {detail}. Pass the float "
        "model the checkpoint was saved from (the same code and layer sizes; its weights are "
        "replaced), and do not change the structure after prepare (e.g. fold_bn of a prepared "
        "model) before saving"
    )


def _corrupt(name: str, detail: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {name} is corrupt: {detail}")


# -- shared ------------------------------------------------------------------------------------
def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model


def _report_of(model: nn.Module, who: str) -> PrepareReport:
    try:
        return get_report(model)
    except TypeError:
        raise ConfigError(f"{who}: {type(model).__name__} is not a model returned by "
                          "fxquant.prepare(); save prepared models") from None


def _quantizers(model: nn.Module) -> dict[str, FakeQuantize]:
    return {p: m for p, m in model.named_modules() if isinstance(m, FakeQuantize)}

