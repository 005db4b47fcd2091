"""What every battery case asserts, and the small model the cases run on.

:func:`expect` runs one bad call and checks the error a user gets: exactly the given fxquant
class, a message that names the thing (module / op / quantizer / file / argument) and says what
to do, bounded in length (:data:`fxquant.errors.MAX_MESSAGE`), and -- given a folder -- that no
file was added, removed or changed there (nothing half-written).
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant.errors import MAX_MESSAGE, FxquantError


class Net(nn.Module):
    """conv -> relu -> mean -> linear: small, traceable, every quantizer kind."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3)
        self.fc = nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


def example() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))


def calibrated(model: nn.Module, backend: str = "onnxruntime") -> nn.Module:
    q = fxquant.prepare(model, example(), fxquant.default_calibration_qconfig_setter,
                        backend=backend)
    return fxquant.calibrate(q, [example(), example() * 2], progress=False)


def snapshot(folder: pathlib.Path | None) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> content)."""
    if folder is None:
        return {}
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def expect(
    cls: type[FxquantError],
    call: Callable[[], Any],
    names: Iterable[str],
    hint: str,
    folder: pathlib.Path | None = None,
) -> FxquantError:
    """Run ``call``; it must raise exactly ``cls`` whose message contains every string of
    ``names`` (what it is about) and matches the regex ``hint`` (what to do), is at most
    :data:`MAX_MESSAGE` characters, and leaves ``folder`` exactly as it was."""
    before = snapshot(folder)
    try:
        call()
    except FxquantError as err:
        msg = str(err)
        assert type(err) is cls, f"expected {cls.__name__}, got {type(err).__name__}: {msg}"
        assert len(msg) <= MAX_MESSAGE, f"{len(msg)} chars: {msg[:200]}..."
        for name in names:
            assert name in msg, f"{name!r} not named in: {msg}"
        assert re.search(hint, msg), f"no hint {hint!r} in: {msg}"
        assert snapshot(folder) == before, f"files changed in {folder}"
        return err
    raise AssertionError(f"no {cls.__name__} raised")
