"""``tinynn.graph``: :mod:`.quantization.quantizer`."""
