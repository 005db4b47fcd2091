"""``aimet_torch.v2`` import paths (:mod:`.quantsim`, :mod:`.auto_quant`): the same classes."""
