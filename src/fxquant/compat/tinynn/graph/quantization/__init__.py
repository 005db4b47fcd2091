"""``tinynn.graph.quantization``: :mod:`.quantizer` (``QATQuantizer``, ``PostQuantizer``)."""
