"""``aimet_common``: :mod:`.defs` (``QuantScheme``, ``QuantizationDataType``)."""
