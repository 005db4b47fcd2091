"""Model specs: how a command line names a PyTorch model.

``SPEC`` is one of

* ``path/to/file.py:function`` -- the file is imported (its folder first on ``sys.path`` while
  it runs, so it can import its neighbours) and ``function()`` is called;
* ``package.module:function`` -- imported from the **current folder** first, then from the
  installed packages (``function`` may be a dotted path: ``module:Builder.build``);
* ``model.pt2`` -- a program saved with ``torch.export.save``, loaded with ``torch.export.load``
  (its example inputs come with it; its ATen graph is rewritten to torch-level calls by
  :func:`fxquant.graph.exported.from_exported_program`).

The function takes no arguments and returns a float ``nn.Module``, or ``(model,
example_inputs)``, or ``(model, example_inputs, data)`` where ``example_inputs`` is a tensor or
a tuple of positional inputs and ``data`` an iterable of batches.  Everything that goes wrong is
a :class:`~fxquant.errors.ConfigError` naming the spec and what to do.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import itertools
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, DataError, bounded
from ..graph.exported import from_exported_program
from .common import one_line, user_code_error

__all__ = ["LoadedModel", "load_model", "SPEC_HELP", "call_user_function", "check_runs"]

SPEC_HELP = ("file.py:function or package.module:function (imported from the current folder) "
             "returning a model, (model, example_inputs) or (model, example_inputs, data); or "
             "an exported program file.pt2 (torch.export.save)")


@dataclass(frozen=True)
class LoadedModel:
    """A model named by a spec.

    Attributes:
        model: the float model, in eval mode.
        example: its example inputs (positional), ``None`` when the spec gave none.
        data: batches the spec returned (at most the number asked for), ``None`` if none.
        input_names: one name per positional input (the ``forward`` argument names).
        spec: the spec as given, for messages.
        fixed_shapes: the model runs only the shapes of ``example`` (an exported program
            without dynamic shapes), so input files must match them exactly.
    """

    model: nn.Module
    example: tuple[Any, ...] | None
    data: list[Any] | None
    input_names: tuple[str, ...]
    spec: str
    fixed_shapes: bool = False


@contextlib.contextmanager
def _on_sys_path(folder: str) -> Iterator[None]:
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def _import_file(where: str, spec: str) -> Any:
    path = os.path.abspath(where)
    if not os.path.isfile(path):
        raise ConfigError(f"model spec {bounded(spec)!r}: no such file {bounded(where)!r}")
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f"_fxquant_spec_{stem.replace('-', '_')}_{abs(hash(path)) % 10**8}"
    mod_spec = importlib.util.spec_from_file_location(name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise ConfigError(f"model spec {bounded(spec)!r}: {bounded(where)!r} cannot be imported")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module  # dataclasses / pickling look the module up by name
    try:
        with _on_sys_path(os.path.dirname(path)):
            mod_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise user_code_error(f"importing {bounded(where)!r}", exc) from None
    return module


def _forget_shadowed(top: str, cwd: str) -> None:
    """A module imported earlier in this process from elsewhere, while the current folder has
    its own ``top.py`` / ``top/``: forget it (and its submodules), so that the current folder
    wins as it would in a fresh ``fxquant`` process (matters when ``main`` runs in-process)."""
    local = [os.path.join(cwd, top + ".py"), os.path.join(cwd, top, "__init__.py")]
    old = sys.modules.get(top)
    if old is None or not any(os.path.isfile(p) for p in local):
        return
    where = os.path.abspath(getattr(old, "__file__", "") or "")
    if where in local:
        return
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def _import_module(where: str, spec: str) -> Any:
    if not all(part.isidentifier() for part in where.split(".")):
        raise ConfigError(
            f"model spec {bounded(spec)!r}: {bounded(where)!r} is neither a .py file nor a "
            "module name (package.module); give file.py:function or package.module:function"
        )
    cwd = os.getcwd()
    _forget_shadowed(where.split(".")[0], cwd)
    try:
        with _on_sys_path(cwd):
            return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (where == missing or where.startswith(missing + ".")):
            raise ConfigError(
                f"model spec {bounded(spec)!r}: no module {bounded(missing)!r} in the current "
                f"folder ({bounded(cwd, 60)}) or the installed packages; run from the folder "
                "that holds it, or give the file: path/to/file.py:function"
            ) from None
        raise user_code_error(f"importing {bounded(where)!r}", exc) from None
    except Exception as exc:
        raise user_code_error(f"importing {bounded(where)!r}", exc) from None


def _attribute(module: Any, func_name: str, where: str, spec: str) -> Any:
    obj = module
    for part in func_name.split("."):
        if not part.isidentifier() or not hasattr(obj, part):
            names = sorted(n for n in dir(module) if not n.startswith("_")
                           and callable(getattr(module, n, None)))
            raise ConfigError(
                f"model spec {bounded(spec)!r}: {bounded(where)!r} has no {bounded(func_name)!r}"
                f"; callables there: {bounded(', '.join(names) or 'none', 200)}"
            )
        obj = getattr(obj, part)
    return obj


def call_user_function(spec: str, what: str) -> tuple[Any, str]:
    """Resolve ``spec`` (``file.py:function`` / ``package.module:function``) and call it with
    no arguments; returns ``(result, "function of where")`` for messages.  ``what`` names the
    option in messages (``model spec``, ``--train-spec``)."""
    if ":" not in spec:
        raise ConfigError(
            f"{what} {bounded(spec)!r} must look like file.py:function or "
            "package.module:function"
        )
    where, func_name = spec.rsplit(":", 1)
    if not where or not func_name:
        raise ConfigError(
            f"{what} {bounded(spec)!r} must look like file.py:function or "
            "package.module:function"
        )
    module = _import_file(where, spec) if where.endswith(".py") else _import_module(where, spec)
    obj = _attribute(module, func_name, where, spec)
    label = f"{func_name}() of {bounded(where)!r}"
    if isinstance(obj, nn.Module):
        return obj, label
    if not callable(obj):
        raise ConfigError(f"{what} {bounded(spec)!r}: {bounded(func_name)!r} is a "
                          f"{type(obj).__name__}, not a function")
    try:
        return obj(), label
    except Exception as exc:
        raise user_code_error(f"calling {label}", exc) from None


def _as_example(value: Any, label: str) -> tuple[Any, ...]:
    items = value if isinstance(value, (tuple, list)) else (value,)
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        raise ConfigError(
            f"{label} returned example inputs of type {type(value).__name__}; give a tensor or "
            "a tuple of tensors (one per positional input of forward)"
        )
    return tuple(items)


def _describe(value: Any) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)} ({', '.join(type(v).__name__ for v in value[:4])})"
    return f"an object of type {type(value).__name__}"


def _unpack(out: Any, label: str, max_batches: int | None) -> tuple[nn.Module, Any, Any]:
    if isinstance(out, nn.Module):
        return out, None, None
    if isinstance(out, tuple) and 1 <= len(out) <= 3 and isinstance(out[0], nn.Module):
        model, example, data = (*out, None, None)[:3]
        if example is not None:
            example = _as_example(example, label)
        if data is not None:
            if isinstance(data, (torch.Tensor, str, bytes)) or not hasattr(data, "__iter__"):
                raise ConfigError(
                    f"{label} returned data of type {type(data).__name__}; give an iterable of "
                    "batches (a list, a DataLoader)"
                )
            try:
                data = list(itertools.islice(data, max_batches))
            except Exception as exc:
                raise user_code_error(f"reading the data of {label}", exc) from None
        return model, example, data
    raise ConfigError(
        f"{label} returned {_describe(out)}; it must return a torch.nn.Module, (model, "
        "example_inputs) or (model, example_inputs, data)"
    )


def _forward_names(model: nn.Module, count: int | None) -> tuple[str, ...]:
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if count is not None and len(names) < count:
        return tuple(f"input_{i}" for i in range(count))
    return tuple(names[:count] if count is not None else names)


def _load_exported(path: str, spec: str) -> LoadedModel:
    if not os.path.isfile(path):
        raise ConfigError(f"model spec {bounded(spec)!r}: no such file {bounded(path)!r}")
    try:
        program = torch.export.load(path)
    except Exception as exc:
        raise ConfigError(
            f"model spec {bounded(spec)!r}: {bounded(path)!r} is not a program saved with "
            f"torch.export.save ({type(exc).__name__}: {bounded(str(exc), 120)})"
        ) from None
    example = None
    inputs = getattr(program, "example_inputs", None)
    if inputs is not None:
        args, kwargs = inputs
        if kwargs:
            raise ConfigError(f"model spec {bounded(spec)!r}: the exported program takes keyword "
                              "inputs; the command line feeds positional inputs only")
        example = tuple(args)
    names = tuple(s.arg.name for s in program.graph_signature.input_specs
                  if s.kind.name == "USER_INPUT")
    model = from_exported_program(program)
    count = len(example) if example is not None else len(names)
    if len(names) != count:
        names = tuple(f"input_{i}" for i in range(count))
    return LoadedModel(model.eval(), example, None, names, spec, fixed_shapes=True)


def load_model(spec: str, max_batches: int | None = None) -> LoadedModel:
    """Resolve a model spec (module docstring); ``max_batches`` caps the data it returns."""
    if ":" not in spec and spec.endswith(".pt2"):
        return _load_exported(spec, spec)
    if ":" not in spec:
        raise ConfigError(
            f"model spec {bounded(spec)!r} must look like file.py:function, "
            "package.module:function or file.pt2"
        )
    out, label = call_user_function(spec, "model spec")
    model, example, data = _unpack(out, label, max_batches)
    names = _forward_names(model, len(example) if example is not None else None)
    return LoadedModel(model.eval(), example, data, names, spec)


def _shapes(batch: tuple[Any, ...]) -> str:
    return ", ".join("x".join(map(str, t.shape)) if isinstance(t, torch.Tensor)
                     else type(t).__name__ for t in batch)


def check_runs(model: nn.Module, batch: tuple[Any, ...], source: str) -> None:
    """Run ``model`` once on ``batch``; a failure is a :class:`DataError` naming the input
    shapes and where they came from (``source``), instead of a deep torch traceback."""
    try:
        with torch.no_grad():
            model(*batch)
    except Exception as exc:
        raise DataError(
            f"the model cannot run on the inputs from {bounded(source)} (shapes "
            f"{_shapes(batch)}): {type(exc).__name__}: {bounded(one_line(str(exc)), 200)}; "
            "check --input-shape and the input files"
        ) from None
