"""``tinynn.converter``: ``TFLiteConverter`` (:mod:`.base`) on :func:`fxquant.export_tflite`."""

from .base import TFLiteConverter

__all__ = ["TFLiteConverter"]
