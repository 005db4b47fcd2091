"""The modes a fake quantizer can be in (switch them with :mod:`.control`)."""

from __future__ import annotations

import enum

__all__ = ["FakeQuantState"]


class FakeQuantState(enum.Enum):
    """What a fake quantizer does in ``forward``.

    QAT: observe (update statistics and scale) and fake-quantize; for training.
    CALIBRATION: observe only; outputs stay float.
    VALIDATION: fake-quantize with frozen scale / zero point; nothing is observed.
    FLOAT: pass-through; the quantizer is off.
    """

    QAT = 0
    CALIBRATION = 1
    VALIDATION = 2
    FLOAT = 3
