"""``tinynn.converter``: ``TFLiteConverter`` arrives with fxquant's TFLite exporter (the TFLite
issue); this module is where it goes.  Until then, convert with ``quantizer.convert(model)``
(torch int8) or export ONNX with :func:`fxquant.export_onnx`.
"""

from __future__ import annotations

from typing import Any

from ....errors import MissingDependencyError

__all__ = ["TFLiteConverter"]


class TFLiteConverter:
    """Placeholder: raises until fxquant's TFLite exporter lands."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise MissingDependencyError(
            "fxquant.compat.tinynn.converter.TFLiteConverter is not available yet: it comes "
            "with fxquant's TFLite exporter. Use quantizer.convert(model) for a torch int8 "
            "model or fxquant.export_onnx(...) meanwhile"
        )
