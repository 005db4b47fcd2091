"""Make ``import torchvision`` work when its compiled ops cannot load (for timm / transformers).

PyPI's torchvision wheel installs next to a CPU torch with ``--no-deps``, but its compiled ops
(``torchvision/_C``) are built for another torch and do not load; its import then fails in
``_meta_registrations`` on a missing ``torchvision::nms`` schema.  Defining the ``nms`` and
``qnms`` schemas with ``torch.library`` first lets the pure-Python parts (transforms, layers that
timm and transformers import) load; the detection ops themselves stay unusable.
"""

from __future__ import annotations

import importlib.util
import pathlib

import torch

__all__ = ["ensure_torchvision_importable"]

_TV_LIBRARY: torch.library.Library | None = None  # keeps the shim's schemas alive


def ensure_torchvision_importable() -> bool:
    """Make ``import torchvision`` (and so timm / transformers) work without its compiled ops.

    If the ``torchvision::nms`` schema is missing and torchvision's ``_C`` extension cannot be
    loaded (a CPU torch next to a torchvision wheel built for another torch), define the ``nms``
    and ``qnms`` schemas with ``torch.library`` so that the pure-Python modules import; the ops
    themselves stay unusable.  Returns True when the shim was installed.
    """
    global _TV_LIBRARY
    if _TV_LIBRARY is not None or hasattr(torch.ops.torchvision, "nms"):
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False  # not installed: nothing to fix
    for lib in pathlib.Path(spec.submodule_search_locations[0]).glob("_C.*"):
        try:
            torch.ops.load_library(str(lib))
        except OSError:
            continue
        if hasattr(torch.ops.torchvision, "nms"):
            return False
    _TV_LIBRARY = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _TV_LIBRARY.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return True
