"""From fxquant quantizers to the tensors and parameters torch's quantized engines take.

Activations: torch's quantized conv / linear / add kernels take ``torch.quint8`` tensors with one
``(scale, zero_point)``.  Every fxquant activation dtype of at most 8 bits maps onto that grid
*exactly*:

* unsigned dtypes keep their codes and zero point (``quint8``; ``QDType(7, False)``, the x86
  ``reduce_range`` grid, uses codes 0..127 of it);
* signed dtypes shift codes and zero point by +128: ``qint8`` code ``c`` with zero point ``z`` is
  ``quint8`` code ``c + 128`` with zero point ``z + 128``; the real value ``(c - z) * scale`` is
  unchanged.

When the fxquant range is narrower than 0..255 (reduce_range, 4-bit, narrow range), torch's
kernels would saturate at 0 / 255 while the simulation saturates at ``qmin`` / ``qmax``, so
:attr:`ActQParams.clamp` gives the real bounds of a (quantized, exact) ``torch.clamp`` that
restores the simulation's saturation.

Weights: ``torch.qint8`` codes, per channel (``torch.quantize_per_channel``) or per tensor; an
unsigned weight dtype shifts by -128 the same way.  The codes are taken from the weight quantizer
itself (its fake-quantized output is exactly ``(code - zp) * scale``), so the integer weights are
the ones fxquant simulated, whatever its :class:`~fxquant.numerics.ScaleMath`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..backends import PROFILES, BackendProfile, get_profile
from ..errors import ConfigError
from ..fake_quant import FakeQuantize

__all__ = [
    "ENGINES",
    "ActQParams",
    "Unsupported",
    "engine_for",
    "quantized_engine",
    "silence_deprecation",
    "activation_qparams",
    "quantized_weight",
]

ENGINES: dict[str, str] = {name: p.engine for name, p in PROFILES.items() if p.engine}
"""fxquant backend name -> ``torch.backends.quantized.engine`` it converts for (the profiles'
``engine``)."""

_QUINT8 = (0, 255)


class Unsupported(Exception):
    """Internal: this quantizer / op has no form on torch's quantized engines (``reason``)."""

    def __init__(self, reason: str, dtype: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.dtype = dtype  # True: the dtype / granularity is what torch cannot run


def engine_for(backend: str | BackendProfile) -> str:
    """The torch quantized engine for ``backend`` (its profile's ``engine``); clear errors for
    unknown / unavailable ones."""
    engine = get_profile(backend).engine
    if engine is None:
        name = backend.name if isinstance(backend, BackendProfile) else backend
        raise ConfigError(
            f"convert: backend {name!r} has no torch quantized engine; choose one of "
            f"{sorted(ENGINES)} (export the others: ONNX / TensorRT / ...)"
        )
    if engine not in torch.backends.quantized.supported_engines:
        raise ConfigError(
            f"convert: torch's quantized engine {engine!r} is not available in this build "
            f"(available: {torch.backends.quantized.supported_engines})"
        )
    return engine


@contextlib.contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """Set ``torch.backends.quantized.engine`` for the block (process-global; restored after).

    Weights are pre-packed for the engine active when a quantized module is built, and
    quantized add / pooling kernels dispatch on the engine active when they run, so both
    conversion and inference run inside this context.
    """
    previous = torch.backends.quantized.engine
    if previous == engine:
        yield
        return
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


@contextlib.contextmanager
def silence_deprecation() -> Iterator[None]:
    """Silence torch's deprecation notice for quantized tensors while converting.

    Converting *is* building quantized tensors, so ATen's warn-once "torch.quantize_per_tensor,
    torch.quantize_per_channel and other quantized tensor creation functions ... are deprecated"
    would fire on every first convert; it says nothing the user can act on here.  Only that
    message is filtered, only inside convert (being warn-once, it does not come back when the
    converted model runs afterwards).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
        # consume the warn-once here, so that a model whose first quantized tensor is made in
        # forward (no weights to pack) does not print it on its first call either
        torch.quantize_per_tensor(torch.zeros(1), 1.0, 0, torch.quint8)
        yield


@dataclass(frozen=True)
class ActQParams:
    """Per-tensor ``torch.quint8`` parameters of one activation quantizer.

    Attributes:
        scale / zero_point: torch's quantization parameters.
        lo / hi: the codes the fxquant dtype allows, as quint8 codes (``0 <= lo <= hi <= 255``).
    """

    scale: float
    zero_point: int
    lo: int = 0
    hi: int = 255

    @property
    def clamp(self) -> tuple[float, float] | None:
        """Real bounds that emulate the fxquant saturation, or None when torch's 0..255 is it."""
        if (self.lo, self.hi) == _QUINT8:
            return None
        return self.real(self.lo), self.real(self.hi)

    def real(self, code: int) -> float:
        """The real value of quint8 ``code``."""
        return (code - self.zero_point) * self.scale

    def __str__(self) -> str:
        rng = "" if (self.lo, self.hi) == _QUINT8 else f", codes {self.lo}..{self.hi}"
        return f"quint8(scale={self.scale:.6g}, zero_point={self.zero_point}{rng})"


def activation_qparams(fq: FakeQuantize) -> ActQParams:
    """:class:`ActQParams` of an activation quantizer, or :class:`Unsupported` with the reason."""
    dtype = fq.dtype
    if fq.ch_axis is not None:
        raise Unsupported(
            f"per-channel activation quantization (axis {fq.ch_axis}) has no kernel in torch's "
            "quantized engines (activations are per tensor)",
            dtype=True,
        )
    if dtype.bits > 8:
        raise Unsupported(
            f"activation dtype {dtype} has no integer kernel in torch's quantized engines "
            "(8-bit activations only)",
            dtype=True,
        )
    qp = fq.qparams()
    shift = 128 if dtype.signed else 0
    return ActQParams(
        scale=float(qp.scale),
        zero_point=int(qp.zero_point) + shift,
        lo=dtype.qmin + shift,
        hi=dtype.qmax + shift,
    )


def quantized_weight(w: torch.Tensor, fq: FakeQuantize) -> torch.Tensor:
    """The ``torch.qint8`` weight holding exactly the codes ``fq`` simulates for float ``w``.

    ``fq`` must be in ``VALIDATION`` (a weight quantizer that saw nothing yet observes ``w``
    now, as it would in the prepared model's forward).
    """
    dtype = fq.dtype
    if dtype.bits > 8:
        raise Unsupported(
            f"weight dtype {dtype} has no integer kernel in torch's quantized engines "
            "(int8 weights only)",
            dtype=True,
        )
    with torch.no_grad():
        w_hat = fq(w.detach()).float()  # exactly (code - zp) * scale
    qp = fq.qparams()
    zp = qp.zero_point - (0 if dtype.signed else 128)
    if qp.axis is None:
        return torch.quantize_per_tensor(w_hat, float(qp.scale), int(zp), torch.qint8)
    return torch.quantize_per_channel(
        w_hat, qp.scale.double(), zp, qp.axis % w_hat.dim(), torch.qint8
    )
