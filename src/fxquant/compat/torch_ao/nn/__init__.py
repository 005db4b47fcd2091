"""``torch.ao.nn`` names fxquant provides: :mod:`.quantized` (``FloatFunctional``)."""
