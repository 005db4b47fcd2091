"""Model size: float parameters, and what a prepared model takes once deployed."""

from __future__ import annotations

from torch import nn

from ..fake_quant import FakeQuantize
from .summary import summary

__all__ = ["float_size_bytes", "quantized_size_bytes"]


def float_size_bytes(model: nn.Module) -> float:
    """Every parameter as float32."""
    return sum(p.numel() for p in model.parameters()) * 4.0


def quantized_size_bytes(qmodel: nn.Module) -> float:
    """Deployed size of a prepared model, counted from :func:`fxquant.summary`.

    A weight with a ``weight`` quantizer takes ``dtype.bits`` per element plus a 32-bit scale
    and a 32-bit zero point per channel (one for a per-tensor scale); every other parameter
    (biases -- int32 once deployed --, norms) counts 32 bits.  Parameters of the quantizers
    themselves (learnable scales) are the scales already counted.  Only module weights
    (``<module>.weight`` next to its ``weight_fake_quant``) are recognised: a parameter fed to a
    functional op (``F.linear(x, self.w)``) counts 32 bits.
    """
    bits = 0.0
    counted: set[int] = set()
    for row in summary(qmodel).quantizers:
        if row.role != "weight":
            continue
        fq = qmodel.get_submodule(row.path)
        owner_path = row.path.rpartition(".")[0]
        weight = getattr(qmodel.get_submodule(owner_path), "weight", None)
        if not isinstance(weight, nn.Parameter) or id(weight) in counted:
            continue
        counted.add(id(weight))
        bits += weight.numel() * fq.dtype.bits + max(1, fq.scale.numel()) * (32 + 32)
    for m in qmodel.modules():
        if isinstance(m, FakeQuantize):
            counted.update(id(p) for p in m.parameters())
    bits += sum(p.numel() * 32 for p in qmodel.parameters() if id(p) not in counted)
    return bits / 8.0
