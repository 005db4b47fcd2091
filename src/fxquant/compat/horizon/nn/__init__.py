"""``horizon_plugin_pytorch.nn``: :mod:`.quantized` (``FloatFunctional``)."""
