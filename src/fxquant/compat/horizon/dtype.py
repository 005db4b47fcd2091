"""Horizon's dtypes (``horizon_plugin_pytorch.dtype``): fxquant :class:`~fxquant.QDType` values."""

from ...numerics import qint4, qint8, qint16, qint32, quint4, quint8

__all__ = ["qint4", "quint4", "qint8", "quint8", "qint16", "qint32"]
