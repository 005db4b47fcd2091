"""Native CPU kernels (C++ through ``torch.library``), bit-identical to the pure-torch paths.

The pure-torch fake quantization makes five or six passes over memory (divide, round, clamp,
mask, multiply, add) and the histogram observers' ``torch.bincount`` runs on one thread; the
kernels of ``kernels.cpp`` make one pass each:

* ``fake_quant``: fake quantization of a contiguous float32 / float64 tensor (per tensor or per
  channel), optionally with the straight-through estimator's mask as a 1-byte bool tensor;
* ``masked_grad``: ``grad * mask`` for the backward;
* ``histogram``: the exact fixed-bin histogram of :mod:`fxquant.observers.histogram`, counted
  in per-thread sub-histograms; ``histogram_observe``: a per-tensor histogram observer's whole
  observation (counts, minimum, maximum) in that one pass once its range holds the data;
* ``div_channel_backward``: both element-wise parts of the gradient of ``y / d`` (``d`` per
  channel), the BN-fold division of :class:`fxquant.nn.ConvBn2d` in training;
* ``observe_qparams``: a min-max / moving-average observer's statistics update and
  :func:`fxquant.numerics.choose_qparams` of the new range in one call (the same ATen
  operations and float64 arithmetic as the Python observers and qparams; a whole float32
  tensor's extremes in one threaded AVX2 pass, a weight's per-channel ones in plain loops);
* ``scale_round``, ``grid_lookup``, ``qlinear_add``, ``mlas_logistic`` and
  ``ort_layer_norm``: the runtime simulation's element-wise arithmetic
  (:mod:`fxquant.runtime_math`): codes recovered from a tensor on a grid
  (``round(x / s) + zp``), an accumulator requantized and dequantized
  (``round(acc * m) * s_out``), a function of a quantized input looked up per code, ONNX
  Runtime's QLinearAdd, its Sigmoid / SiLU with true fused multiply-adds and its float
  LayerNormalization -- one pass instead of three to ten (LayerNorm: instead of a Python loop);
* ``same_bytes``: whether tensors still hold the bytes of their copies, all in one call (the
  runtime simulation's kept constants);
* ``fake_quant_ste`` and ``channel_divide`` (``channel_divide_``: written over its input): the
  straight-through fake quantization and that division as autograd operators whose backward
  runs in C++ (no Python call per quantizer in the backward pass);
* ``observe_clamped`` and ``act_fake_quant_ste``: a quantizer of a relu / relu6 output observing
  and fake-quantizing it from the activation's input (the clamped range; the clamp, the fake
  quantization and both backward rules in one pass:
  :meth:`fxquant.FakeQuantize.forward_activated`);
* ``bn_fold_scale``: a fold-aware conv's scaled weight ``w * gamma / sqrt(var + eps)`` as one
  autograd operator (its ATen operations and one C++ backward).

Every kernel evaluates the same IEEE operations in the same order as the pure-torch formula
(no ``-ffast-math``, no floating-point contraction), so results are identical bit for bit; the
test suite checks that on exhaustive sweeps, and each process checks it once on tricky inputs
(ties, +-0, +-inf, NaN, saturation) before the kernels are used (:func:`available`).

**Build.**  The kernels are compiled with ``torch.utils.cpp_extension`` (g++ and ninja) the
first time they are needed, or ahead of time with ``python -m fxquant.numerics.native``
(``make venv`` does it), into a folder keyed by the source, torch version, compiler flags and
CPU (under ``sys.prefix``, else ``~/.cache/fxquant``).  A failed build is remembered there and
not retried; everything then takes the pure-torch path (one warning is logged).  They are on by
default; :func:`enable_native_kernels` / :func:`native_kernels` turn them off (e.g. to compare).
Only plain CPU tensors use them: subclasses (fake tensors of ``torch.export`` / ``torch.compile``)
and ``torch.jit`` tracing take the pure-torch path, which traces into ordinary operators.

Size (~740 lines): the build, the load with its self-check and one thin wrapper per kernel (the
conditions under which it applies, else ``None`` for the pure-torch path) are one contract
around one compiled library; the kernels themselves are in ``kernels.cpp``, the self-check's
references in ``selfcheck.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from typing import ClassVar

import torch

from ..dtypes import QDType
from . import selfcheck

__all__ = [
    "available",
    "enable_native_kernels",
    "native_kernels",
    "native_enabled",
    "build",
    "why_unavailable",
    "fake_quant",
    "masked_grad",
    "histogram",
    "histogram_observe",
    "div_channel_backward",
    "fake_quant_ste",
    "channel_divide",
    "channel_divide_",
    "observe_qparams",
    "observe_clamped",
    "act_fake_quant_ste",
    "bn_fold_scale",
    "act_observe",
    "scale_round",
    "grid_lookup",
    "qlinear_add",
    "same_bytes",
    "mlas_logistic",
    "ort_layer_norm",
]

_log = logging.getLogger(__name__)

SOURCE = pathlib.Path(__file__).with_name("kernels.cpp")
LIB_NAME = "fxquant_native"
CFLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math",
          "-fopenmp")
"""``-ffp-contract=off``: no fused multiply-adds (torch rounds each product); ``-fno-trapping-math``
only lets ``floor`` vectorise (no value changes: it assumes no floating-point traps)."""
LDFLAGS = ("-fopenmp",)


class _State:
    enabled: bool = True
    loaded: bool | None = None  # None: not tried yet
    reason: str | None = None  # why the kernels are unavailable
    sum_lanes: int = 0  # the division's backward sums in at::sum's order (_enable_sum_order)
    ops: ClassVar[list] = []


def native_enabled() -> bool:
    """True if native kernels are switched on (they may still be unavailable)."""
    return _State.enabled


def enable_native_kernels(enabled: bool = True) -> bool:
    """Switch the native kernels on or off for this process; returns whether they are in use."""
    _State.enabled = bool(enabled)
    return available() if enabled else False


@contextlib.contextmanager
def native_kernels(enabled: bool = True) -> Iterator[bool]:
    """Context manager: native kernels on (or off) inside the block; yields whether in use."""
    previous = _State.enabled
    _State.enabled = bool(enabled)
    try:
        yield available() if enabled else False
    finally:
        _State.enabled = previous


def available() -> bool:
    """True if the native kernels are switched on, built, loaded and self-checked.

    The first call builds (once per environment, about a minute) and loads them.
    """
    if not _State.enabled:
        return False
    if _State.loaded is None:
        _load()
    return bool(_State.loaded)


def why_unavailable() -> str | None:
    """Why the kernels could not be used (None when they can, or were not tried yet)."""
    return _State.reason


# -- building ----------------------------------------------------------------------------------
def _cpu_signature() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_key() -> str:
    """Hash of everything the compiled library depends on."""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), " ".join(CFLAGS).encode(),
                 sys.version.encode(), _cpu_signature().encode(), platform.machine().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def build_dir() -> pathlib.Path:
    """Where the library for this environment is (or will be) built."""
    key = build_key()
    for root in (pathlib.Path(sys.prefix) / "fxquant-native",
                 pathlib.Path.home() / ".cache" / "fxquant" / "native"):
        try:
            root.mkdir(parents=True, exist_ok=True)
            if os.access(root, os.W_OK):
                return root / key
        except OSError:
            continue
    raise OSError("no writable folder for fxquant's native kernels (sys.prefix, ~/.cache)")


def _library_path(folder: pathlib.Path) -> pathlib.Path:
    return folder / f"{LIB_NAME}.so"


def build(verbose: bool = False, force: bool = False) -> pathlib.Path:
    """Compile the kernels for this environment (if not done yet); returns the library path.

    Raises whatever the compiler raised; a compiler failure is also recorded so that later
    processes do not try again (``force=True``, or ``python -m fxquant.numerics.native
    --force``, tries again).  A missing ``ninja`` is not recorded: installing it is enough.
    """
    # imported here: cpp_extension imports setuptools, needed only to build
    from torch.utils import cpp_extension

    folder = build_dir()
    lib = _library_path(folder)
    failed = folder / "FAILED"
    if force:
        failed.unlink(missing_ok=True)
    if _built(folder):
        return lib
    cpp_extension.verify_ninja_availability()  # RuntimeError, not recorded
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / "lock"  # torch's build lock: left behind by a killed build, it would hang
    with contextlib.suppress(OSError):
        if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink()
    try:
        cpp_extension.load(
            name=LIB_NAME,
            sources=[str(SOURCE)],
            extra_cflags=list(CFLAGS),
            extra_ldflags=list(LDFLAGS),
            build_directory=str(folder),
            is_python_module=False,
            verbose=verbose,
        )
    except Exception as exc:
        failed.write_text(f"{type(exc).__name__}: {exc}")
        raise
    failed.unlink(missing_ok=True)
    (folder / "OK").write_text(torch.__version__)  # the library is complete
    return lib


STALE_LOCK_SECONDS = 900
"""A build lock older than this is left over from a killed build (a build takes ~1 minute)."""


def _built(folder: pathlib.Path) -> bool:
    return (folder / "OK").exists() and _library_path(folder).exists()


def _load() -> None:
    _State.loaded = False
    try:
        folder = build_dir()
        failed = folder / "FAILED"
        if failed.exists():
            raise RuntimeError(f"an earlier build failed ({failed}): "
                               + failed.read_text().strip().splitlines()[0][:200])
        lib = _library_path(folder)
        if not hasattr(torch.ops, LIB_NAME) or not hasattr(torch.ops.fxquant_native, "qlinear_add"):
            if not _built(folder):
                _log.warning("fxquant: building native CPU kernels once for this environment "
                             "(about a minute) in %s", folder)
                build()
            if not hasattr(torch.ops.fxquant_native, "qlinear_add"):
                torch.ops.load_library(str(lib))
        with torch.inference_mode(False):  # the first use may come inside inference_mode
            problem = selfcheck.run(_ops())
        if problem:
            raise RuntimeError(f"self-check failed: {problem}")
        _State.sum_lanes = _enable_sum_order()
    except Exception as exc:  # no compiler, read-only file system, ...: pure torch
        _State.reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        _log.warning("fxquant native kernels unavailable, using pure torch: %s", _State.reason)
        return
    _State.loaded = True
    _State.reason = None


SUM_LANES = (8, 16)
"""Float32 vector widths of torch's CPU sum that the reduction kernel reproduces (x86: 8 lanes
with AVX2 and, as measured with torch 2.13, also where torch reports AVX512)."""


def _enable_sum_order() -> int:
    """Let the channel division's backward sum in at::sum's order without a product tensor
    where that order is reproduced on this machine (:func:`selfcheck.sum_lanes_match`, each
    width of :data:`SUM_LANES` in turn); the width in use, 0 where none matched."""
    ns = torch.ops.fxquant_native
    try:
        lanes = next((n for n in SUM_LANES
                      if selfcheck.sum_lanes_match(ns.div_channel_backward_sum.default, n)), 0)
    except RuntimeError as exc:  # the other kernels stay usable without this one
        _log.info("fxquant: the division's summed backward is off: %s", exc)
        lanes = 0
    if not lanes:
        _log.info("fxquant: torch.sum's order is not one reproduced here; the channel "
                  "division's backward keeps its product tensor")
    ns.set_sum_lanes.default(lanes)
    return lanes


# -- the kernels -------------------------------------------------------------------------------
MAX_BITS = 16
"""Grids up to this many bits: ``qmin - zp`` / ``qmax - zp`` are exact in float32 (as for the
pure-torch in-place path)."""

_FLOATS = (torch.float32, torch.float64)


def _ops():
    ns = torch.ops.fxquant_native
    return (ns.fake_quant.default, ns.masked_grad.default, ns.histogram.default,
            ns.div_channel_backward.default, ns.fake_quant_ste.default,
            ns.channel_divide.default, ns.observe_qparams.default, ns.scale_round.default,
            ns.grid_lookup.default, ns.qlinear_add.default, ns.same_bytes.default,
            ns.mlas_logistic.default, ns.histogram_observe.default, ns.channel_divide_.default,
            ns.ort_layer_norm.default, ns.observe_clamped.default, ns.act_fake_quant_ste.default,
            ns.bn_fold_scale.default, ns.act_observe.default)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _plain(*ts: torch.Tensor) -> bool:
    """Ordinary CPU tensors, outside tracing: what the kernels may see."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    for t in ts:
        if type(t) not in _PLAIN or not t.is_cpu:
            return False
    return True


def _ready() -> bool:
    if not _State.enabled:
        return False
    if _State.loaded is None:
        _load()
    if _State.loaded and not _State.ops:
        _State.ops[:] = _ops()
    return bool(_State.loaded)


def fake_quant(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: QDType,
    axis: int | None,
    reciprocal: bool,
    with_mask: bool,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Fake quantization (and the STE mask, bool) in one pass, or None where it does not apply.

    Applies to contiguous float32 / float64 CPU tensors on grids of at most :data:`MAX_BITS`
    bits, per tensor (0-d ``scale``; also any dense layout, e.g. a transposed view: ``out`` and
    ``mask`` keep it) or per channel (1-d ``scale`` with one entry per index of
    ``x.shape[axis]``).  ``out`` equals :func:`fxquant.numerics.fake_quantize` bit for bit;
    ``mask`` is True where the unclamped code lies in ``[qmin, qmax]``.  Records no autograd
    graph.
    """
    inner = _fq_inner(x, scale, zero_point, dtype, axis)
    if inner is None:
        return None
    out, mask = _State.ops[0](x, scale, zero_point, dtype.qmin, dtype.qmax, inner,
                              bool(reciprocal), bool(with_mask))
    return out, (mask if with_mask else None)


def fake_quant_ste(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: QDType,
    axis: int | None,
    reciprocal: bool,
) -> torch.Tensor | None:
    """:func:`fake_quant` as an autograd operator (straight-through estimator: the gradient is
    ``grad * mask``, computed in C++), or None where it does not apply."""
    inner = _fq_inner(x, scale, zero_point, dtype, axis)
    if inner is None:
        return None
    return _State.ops[4](x, scale, zero_point, dtype.qmin, dtype.qmax, inner, bool(reciprocal))


def _fq_inner(x, scale, zero_point, dtype: QDType, axis: int | None) -> int | None:
    """The ``inner`` size of the ``[outer, C, inner]`` view, or None if the kernel declines."""
    if not _ready() or x.dtype not in _FLOATS or dtype.bits > MAX_BITS:
        return None
    if not _plain(x, scale, zero_point):
        return None
    if scale.dim() == 0:
        if zero_point.dim() != 0 or not (x.is_contiguous() or _dense(x)):
            return None
        inner = 1
    else:
        if axis is None or scale.dim() != 1 or x.dim() == 0 or not x.is_contiguous():
            return None
        ax = axis % x.dim()
        if scale.shape[0] != x.shape[ax] or zero_point.shape != scale.shape:
            return None
        inner = 1
        for d in x.shape[ax + 1:]:
            inner *= d
        if inner == 0:
            return None
    return inner


def _dense(x: torch.Tensor) -> bool:
    """``x`` fills a block of memory without gaps or overlaps (a permuted contiguous tensor,
    e.g. a transposed view): what the per-tensor kernel processes in storage order."""
    if x.numel() == 0:
        return False
    expected = 1
    for size, stride in sorted((d for d in zip(x.shape, x.stride(), strict=True) if d[0] != 1),
                               key=lambda d: d[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def masked_grad(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``grad * mask`` (``mask`` bool, same shape), in one pass where the kernel applies."""
    if (_ready() and grad.dtype in _FLOATS and _plain(grad, mask)
            and grad.is_contiguous() and mask.is_contiguous() and grad.shape == mask.shape):
        return _State.ops[1](grad, mask)
    return grad * mask


def histogram(x: torch.Tensor, shift: int, bins: int) -> torch.Tensor | None:
    """int64 ``[bins]`` counts of ``floor(x * 2**shift) + bins / 2`` (see
    :mod:`fxquant.observers.histogram`), or None where the kernel does not apply.

    Every value must fall inside ``[0, bins)`` (finite ``x`` with ``|x| < 2**-shift * bins/2``).
    """
    if not _ready() or x.dtype not in _FLOATS or not _plain(x):
        return None
    if not x.is_contiguous() or bins > 1 << 30:
        return None
    return _State.ops[2](x, int(shift), int(bins))


def histogram_observe(x: torch.Tensor, hist: torch.Tensor, range_exp: torch.Tensor,
                      min_val: torch.Tensor, max_val: torch.Tensor) -> bool:
    """A per-tensor :class:`~fxquant.observers.HistogramObserver`'s observation of ``x`` in one
    pass: the counts of ``x`` added to ``hist`` at the current range ``2**range_exp`` and
    ``min_val`` / ``max_val`` updated as ``torch.minimum`` / ``torch.maximum`` with
    ``torch.aminmax(x)``, in place.  True if done; False (nothing touched) where the observer's
    own path must run: the range must grow, NaN / Inf / -0.0 in ``x``, not a contiguous
    float32 CPU tensor, no native kernels."""
    if (not _ready() or x.dtype != torch.float32 or not x.is_contiguous()
            or not _plain(x, hist, range_exp, min_val, max_val)):
        return False
    return _State.ops[12](x, hist, range_exp, min_val, max_val) == 0


def div_channel_backward(
    grad: torch.Tensor, out: torch.Tensor, d: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(grad / d, (out / d) * grad)`` for ``[N, C, *]`` tensors and ``d`` of ``C`` entries
    broadcast along axis 1, in one pass; None where the kernel does not apply."""
    if (not _ready() or grad.dtype not in _FLOATS or not _plain(grad, out, d)
            or grad.dtype != out.dtype or d.dtype != out.dtype or grad.dim() < 2
            or not (grad.is_contiguous() and out.is_contiguous()) or grad.shape != out.shape
            or d.numel() != grad.shape[1]):
        return None
    inner = 1
    for s in grad.shape[2:]:
        inner *= s
    if inner == 0 or grad.numel() == 0:
        return None
    return _State.ops[3](grad, out, d.contiguous(), inner)


def _divide_applies(y: torch.Tensor, d: torch.Tensor) -> bool:
    return not (not _ready() or y.dtype not in _FLOATS or not _plain(y, d) or y.dim() < 2
                or d.dim() != y.dim() or d.dtype != y.dtype or d.shape[1] != y.shape[1]
                or any(s != 1 for i, s in enumerate(d.shape) if i != 1))


def channel_divide(y: torch.Tensor, d: torch.Tensor) -> torch.Tensor | None:
    """``y / d`` for ``d`` shaped ``[1, C, 1, ...]`` as an autograd operator whose backward is
    autograd's rule for a division, bit for bit, in two passes computed in C++; None where it
    does not apply."""
    if not _divide_applies(y, d):
        return None
    return _State.ops[5](y, d)


def channel_divide_(y: torch.Tensor, d: torch.Tensor) -> torch.Tensor | None:
    """:func:`channel_divide` written over ``y`` (which nothing else may read afterwards: a
    conv output), saving a buffer of its size; the same values and gradient."""
    if not _divide_applies(y, d):
        return None
    return _State.ops[13](y, d)


OBSERVED_ONLY = 2
"""``observe_qparams`` status: statistics updated, qparams left to the caller."""


def observe_qparams(
    x: torch.Tensor,
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    averaging: float | None,
    axis: int | None,
    dtype: QDType,
    symmetric: bool,
    power_of_two: bool,
    eps: float,
    compute: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, int] | None:
    """Update min-max statistics (``averaging``: the moving-average constant, None: running
    min / max) with ``x`` in place and, if ``compute``, return the new ``(scale, zero_point)``.

    Returns ``(scale, zero_point, 0)``; ``(None, None, OBSERVED_ONLY)`` when the statistics were
    updated but the qparams are left to the caller; None when nothing was touched (the caller
    runs its Python path: not applicable here, a first per-channel batch, NaN / Inf ...).
    """
    if not _ready() or x.dtype != torch.float32 or not _plain(x, min_val, max_val):
        return None
    ax = -1 if axis is None else axis % x.dim()
    avg = -1.0 if averaging is None else float(averaging)
    return _observed(*_State.ops[6](x, min_val, max_val, avg, ax, dtype.qmin, dtype.qmax,
                                     bool(symmetric), dtype.signed, bool(power_of_two),
                                     float(eps), dtype.bits, bool(compute)))


def _observed(scale: torch.Tensor | None, zp: torch.Tensor | None,
              status: int) -> tuple[torch.Tensor | None, torch.Tensor | None, int] | None:
    """An observation kernel's (scale, zero point, status) as the wrappers return it."""
    if status == 1:
        return None
    return (scale, zp, 0) if status == 0 else (None, None, OBSERVED_ONLY)


def observe_clamped(
    x: torch.Tensor,
    bounds: tuple[float, float],
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    averaging: float | None,
    dtype: QDType,
    symmetric: bool,
    power_of_two: bool,
    eps: float,
) -> tuple[torch.Tensor | None, torch.Tensor | None, int] | None:
    """:func:`observe_qparams` (per tensor, qparams computed) of ``x.clamp(*bounds)`` without
    computing it: the range of the clamped tensor is the clamped range of ``x``.  None (nothing
    touched) where ``x`` holds a NaN or a -0.0, or where :func:`observe_qparams` would decline.
    ``bounds[1]`` may be ``inf`` (``relu``)."""
    if not _ready() or x.dtype != torch.float32 or not _plain(x, min_val, max_val):
        return None
    avg = -1.0 if averaging is None else float(averaging)
    return _observed(*_State.ops[15](x, min_val, max_val, float(bounds[0]), float(bounds[1]),
                                      avg, dtype.qmin, dtype.qmax, bool(symmetric), dtype.signed,
                                      bool(power_of_two), float(eps), True))


def act_observe(
    x: torch.Tensor,
    bounds: tuple[float, float],
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    averaging: float | None,
    dtype: QDType,
    symmetric: bool,
    power_of_two: bool,
    eps: float,
) -> tuple[torch.Tensor, bool] | None:
    """``(y, observed)``: ``y = x.clamp(*bounds)`` (the values of ``torch.relu`` / ``F.relu6``
    for ``(0, inf)`` / ``(0, 6)``, records no autograd graph) and, if ``observed``,
    :func:`observe_qparams` of ``y`` (statistics only) taken in the same pass; where not
    ``observed`` (a NaN or a -0.0 in ``y``) nothing was touched.  None where it does not apply
    (a contiguous float32 CPU ``x``)."""
    if (not _ready() or x.dtype != torch.float32 or not x.is_contiguous()
            or not _plain(x, min_val, max_val)):
        return None
    avg = -1.0 if averaging is None else float(averaging)
    y, status = _State.ops[18](x, min_val, max_val, float(bounds[0]), float(bounds[1]), avg,
                               dtype.qmin, dtype.qmax, bool(symmetric), dtype.signed,
                               bool(power_of_two), float(eps))
    return y, status == OBSERVED_ONLY


def act_fake_quant_ste(
    x: torch.Tensor,
    bounds: tuple[float, float],
    gate_hi: bool,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: QDType,
    reciprocal: bool,
) -> torch.Tensor | None:
    """``fake_quant_ste(act(x))`` with ``act(x) = x.clamp(*bounds)`` (``relu6``: ``(0, 6)``;
    ``relu``: ``(0, inf)``) in one pass, or None where it does not apply (per tensor, contiguous
    float32 CPU ``x``).  The gradient is the activation's backward of the quantizer's: ``grad *
    mask`` where ``x`` is above ``bounds[0]`` and (``gate_hi``: hardtanh's rule) below
    ``bounds[1]``, else +0.0 -- autograd's bits for ``fake_quant_ste(F.relu6(x))``."""
    if (not _ready() or x.dtype != torch.float32 or dtype.bits > MAX_BITS
            or not x.is_contiguous() or scale.dim() != 0 or zero_point.dim() != 0
            or not _plain(x, scale, zero_point)):
        return None
    return _State.ops[16](x, scale, zero_point, dtype.qmin, dtype.qmax, float(bounds[0]),
                          float(bounds[1]), bool(gate_hi), bool(reciprocal))


def bn_fold_scale(
    weight: torch.Tensor, var: torch.Tensor, gamma: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """``(w * sf.reshape(C, 1, ...), sf, min |sf|)`` with ``sf = gamma / sqrt(var + eps)``
    (``1 / sqrt(var + eps)`` without ``gamma``): a fold-aware conv's scaled weight as one
    autograd operator (the same ATen operations, one C++ backward), or None where it does not
    apply.  ``min |sf|`` is NaN where an ``sf`` is NaN."""
    if (not _ready() or weight.dim() < 2 or var.dim() != 1 or var.numel() != weight.shape[0]
            or var.numel() == 0 or weight.dtype not in _FLOATS or var.dtype != weight.dtype
            or (gamma is not None and (gamma.shape != var.shape or gamma.dtype != var.dtype))
            or not _plain(weight, var, *(() if gamma is None else (gamma,)))):
        return None
    return _State.ops[17](weight, var, gamma, float(eps))


def scale_round(
    x: torch.Tensor,
    mult: torch.Tensor,
    inner: int = 1,
    add: float | None = None,
    post: float | None = None,
    out: torch.Tensor | None = None,
    bounds: tuple[float, float] | None = None,
) -> torch.Tensor | None:
    """``v = round(x * mult)`` (float32, :func:`fxquant.runtime_math.ort.round_`'s two adds),
    then ``v.clamp(*bounds)``, ``v + add`` and ``v * post`` where given, in one pass; None where
    it does not apply.

    ``x``: contiguous float32 CPU tensor viewed as ``[outer, C, inner]``; ``mult``: float32
    with ``C`` elements (one: per tensor); ``add`` / ``post``: float32 values; ``out``: where to
    write (``x`` itself for in place), a new tensor by default.  Equals the same torch
    operations (``x * mult``, ``add_(1.5 * 2**23)``, ``sub_(1.5 * 2**23)``, ``clamp_(*bounds)``,
    ``add_(add)``, ``mul_(post)``) bit for bit.
    """
    if (not _ready() or x.dtype != torch.float32 or mult.dtype != torch.float32
            or not x.is_contiguous() or not _plain(x, mult)):
        return None
    m = mult.reshape(-1)
    c = m.numel()
    if c == 0 or inner < 1 or x.numel() % (c * inner) != 0:
        return None
    if c > 1 and (x.dim() == 0 or (x.numel() // inner) % c != 0):
        return None
    if out is None:
        out = torch.empty_like(x)
    elif out is not x and (out.shape != x.shape or out.dtype != x.dtype
                           or not out.is_contiguous()):
        return None
    lo, hi = (0.0, 0.0) if bounds is None else (float(bounds[0]), float(bounds[1]))
    _State.ops[7](x, out, m if c == 1 else m.contiguous(), int(inner),
                  0.0 if add is None else float(add), add is not None,
                  1.0 if post is None else float(post), post is not None,
                  lo, hi, bounds is not None)
    return out


def grid_lookup(
    x: torch.Tensor, scale: torch.Tensor, zero_point: int, qmin: int, qmax: int,
    table: torch.Tensor,
) -> torch.Tensor | None:
    """``table[q - qmin]`` for the code ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``
    of every element (``x * float32(1 / scale)`` rounded as :func:`scale_round` does), in one
    pass -- or None where the kernel does not apply *or* an element is not exactly its grid
    value ``(q - zero_point) * scale`` (off the grid, NaN): the caller then computes its function
    on every element.  float32 CPU tensors; ``scale``: one value; ``table``: ``qmax - qmin + 1``
    values, ``table[i]`` the function at the grid's ``i``-th value."""
    if (not _ready() or x.dtype != torch.float32 or not x.is_contiguous()
            or not _plain(x, scale, table) or scale.numel() != 1
            or scale.dtype != torch.float32 or table.dtype != torch.float32
            or table.numel() != qmax - qmin + 1):
        return None
    s = scale.reshape(())
    out, ok = _State.ops[8](x, s, 1.0 / s, int(zero_point), int(qmin), int(qmax),
                            table.contiguous())
    return out if ok else None


def qlinear_add(a: torch.Tensor, b: torch.Tensor, params: torch.Tensor) -> torch.Tensor | None:
    """ONNX Runtime's QLinearAdd of ``a`` and ``b`` (float32 tensors of one shape on their
    grids), dequantized onto the output grid, in one pass; None where it does not apply.

    ``params``: float32 ``[1 / s_a, z_a, 1 / s_b, z_b, r_a, r_b, fixed, qmin, qmax, z_c, s_c]``
    with MLAS's ratios ``r = s / s_c`` and ``fixed = z_c - fma(r_a, z_a, r_b * z_b)``
    (:func:`fxquant.runtime_math.ort.qlinear_add_value`); the per-element value is
    ``fma(q_a, r_a, fma(q_b, r_b, fixed))`` with true fused multiply-adds, as MLAS computes it.
    """
    if (not _ready() or a.dtype != torch.float32 or b.dtype != torch.float32
            or a.shape != b.shape or not a.is_contiguous() or not b.is_contiguous()
            or not _plain(a, b, params) or params.dtype != torch.float32
            or params.numel() != 11):
        return None
    return _State.ops[9](a, b, params.contiguous())


def same_bytes(a: Sequence[torch.Tensor | None], b: Sequence[torch.Tensor | None]) -> bool | None:
    """Whether each ``a[i]`` holds exactly the bytes of ``b[i]`` (dtype and shape included; None
    pairs match) in one native call; None where it does not apply (no native kernels, tracing, a
    tensor that is not a contiguous CPU tensor): compare with ``torch.equal``.  Equal bytes mean
    equal values; the converse fails only for ``-0.0`` / ``0.0`` and NaN payloads -- a caller
    that rebuilds on "different" stays correct."""
    if not _ready() or len(a) != len(b) or torch.jit.is_tracing() or (
            torch.compiler.is_compiling()):
        return None
    try:
        result = _State.ops[10](list(a), list(b))
    except (RuntimeError, TypeError):  # a tensor subclass the op does not take
        return None
    return None if result < 0 else bool(result)


def ort_layer_norm(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float) -> torch.Tensor | None:
    """ONNX Runtime's float LayerNormalization of each row of a contiguous float32 ``(rows, n)``
    tensor, ``n`` a multiple of 8 (:func:`fxquant.runtime_math.ort.layer_norm` has the steps);
    None where it does not apply."""
    if (not _ready() or rows.dtype != torch.float32 or rows.dim() != 2 or rows.shape[1] % 8
            or not rows.is_contiguous() or not _plain(rows, weight, bias)):
        return None
    return _State.ops[14](rows, weight.contiguous(), bias.contiguous(), float(eps))


def mlas_logistic(x: torch.Tensor, coeffs: torch.Tensor, times_x: bool) -> torch.Tensor | None:
    """MLAS's logistic of every element of ``x`` (times ``x`` with ``times_x``) in one pass, with
    true fused multiply-adds as MLAS's FMA3 kernel computes it
    (:func:`fxquant.runtime_math.ort.logistic` has the formula; ``coeffs``: its 5 + 6 float32
    coefficients); None where it does not apply (contiguous float32 CPU tensors only)."""
    if (not _ready() or x.dtype != torch.float32 or not x.is_contiguous()
            or not _plain(x, coeffs)):
        return None
    return _State.ops[11](x, coeffs, bool(times_x))
