"""ONNX Runtime's integer-kernel arithmetic (CPU / MLAS, x86-64), as pure functions.

A fused ORT kernel does not compute ``Q(op(DQ(a), DQ(b)))`` in exact arithmetic: it accumulates in
int32 and requantizes with float32 multipliers, in an order of its own.  The results agree with
exact arithmetic except near a rounding tie -- but a quantized network is chaotic at the last bit,
so "the same codes as ORT" needs ORT's float32 steps bit for bit.  Read from ORT's source
(``onnxruntime/core/mlas/lib``: ``qladd.cpp`` / ``intrinsics/avx2/qladd_avx2.cpp``, ``qlmul.cpp``,
``qlgavgpool.cpp``, ``logistic.cpp``; ``contrib_ops/cpu/quantization``: ``qlinear_binary_op.cc``,
``qlinear_pool.cc``) and pinned code for code against onnxruntime 1.32 on x86-64 in
``tests/runtime_math/test_ort.py``.

Conventions: ``*codes`` arguments and results are float32 tensors holding the raw integer codes
(zero point included, as ORT's uint8 / int8 tensors hold them); scales are float32 0-d tensors,
zero points and code bounds plain ints.  Every function returns saturated output codes.

Two rounding conventions meet here, and mixing them up flips ties:

* ``QLinearConv`` / ``QGemm`` / ``QLinearMatMul`` / ``QLinearGlobalAveragePool`` /
  ``QuantizeLinear`` round the scaled value and *then* add the output zero point (MLAS
  ``MlasRequantizeOutput``);
* ``QLinearAdd`` / ``QLinearMul`` / ``QLinearAveragePool`` fold the output zero point into the
  float32 value and round the sum: ``x.5`` goes to the even *code*, not to the even offset from
  the zero point (with an odd zero point the two differ by one).

Size (~625 lines): one pure function per ORT kernel, all sharing the float32 rounding helpers
(``round_``, ``_fma``, the requantization multiplier) whose conventions this docstring fixes;
split, those conventions would be restated in every file.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..numerics import native

__all__ = [
    "round_",
    "requantize_multiplier",
    "requantize",
    "requantize_centred",
    "requantize_unsaturated",
    "requantize_dequantize",
    "qlinear_add",
    "qlinear_add_params",
    "qlinear_add_dequantized",
    "qlinear_add_value",
    "qlinear_add_table",
    "qlinear_mul",
    "qlinear_mul_dequantized",
    "qlinear_mul_table",
    "global_average_pool",
    "average_pool",
    "batch_norm",
    "layer_norm",
    "LAYER_NORM_LANES",
    "logistic",
    "silu",
    "lookup_table",
    "reduce_mean_trailing",
    "broadcast_roles",
]

_F32 = torch.float32


def _f32(t: Tensor | float) -> Tensor:
    return torch.as_tensor(t).to(_F32)


def _fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """float32 ``fma(a, b, c)``: the product of two float32 values is exact in float64, the sum
    is rounded once to float32 (exact except when ``c`` is more than 2^29 times smaller than
    ``a * b``, where float64 rounds first; never for the magnitudes of these kernels)."""
    return (a.double() * b.double() + c.double()).to(_F32)


_ROUNDER = 1.5 * 2.0**23
"""``(x + 1.5 * 2^23) - 1.5 * 2^23`` in float32 is ``x`` rounded half to even for |x| < 2^22."""


def round_(x: Tensor) -> Tensor:
    """Round a float32 tensor half to even, in place: ``torch.round`` for ``|x| < 2^22`` (two
    vectorized adds, about twice as fast); larger values come back within 2 of ``x`` -- only for
    values a later saturation clamps anyway (codes, requantized outputs)."""
    if x.dtype != _F32:
        return x.round_()
    return x.add_(_ROUNDER).sub_(_ROUNDER)


def _saturate(v: Tensor, qmin: int, qmax: int) -> Tensor:
    """Round half to even and saturate (in place) a float32 value that already includes the zero
    point."""
    return round_(v).clamp_(qmin, qmax)


# -- QLinearConv / QGemm / QLinearMatMul ---------------------------------------------------------
def requantize_multiplier(in_scale: Tensor, weight_scale: Tensor, out_scale: Tensor) -> Tensor:
    """``(in_scale * weight_scale) / out_scale`` in float32 (QLinearConv, QGemm, QLinearMatMul).

    Shapes: ``in_scale`` / ``out_scale`` 0-d, ``weight_scale`` 0-d or ``[C]``.
    """
    return (_f32(in_scale) * _f32(weight_scale)) / _f32(out_scale)


def requantize(acc: Tensor, multiplier: Tensor, zero_point: int, qmin: int, qmax: int) -> Tensor:
    """``saturate(round(float32(acc) * multiplier) + zero_point)`` (MLAS ``MlasRequantizeOutput``).

    ``acc``: the exact int32 accumulator (bias included), as a float32 tensor holding
    ``float32(acc)`` (the one rounding ORT's int32 -> float conversion does); the multiplier
    broadcasts (``[C, 1, 1]`` for NCHW conv outputs, ``[C]`` for linear outputs).
    """
    return requantize_centred(acc, multiplier, zero_point, qmin, qmax).add_(zero_point)


def requantize_centred(acc: Tensor, multiplier: Tensor, zero_point: int, qmin: int,
                       qmax: int) -> Tensor:
    """:func:`requantize` minus the zero point (``q - zp``; the saturation bounds are integers, so
    clamping before or after adding ``zp`` is the same)."""
    return requantize_unsaturated(acc.clone(), multiplier).clamp_(qmin - zero_point,
                                                                  qmax - zero_point)


def requantize_dequantize(acc: Tensor, multiplier: Tensor, out_scale: Tensor,
                          channel_axis_last: bool = False,
                          bounds: tuple[int, int] | None = None) -> Tensor:
    """``round(float32(acc) * multiplier) * out_scale`` in place on a float32 ``acc``: the value
    :func:`requantize_unsaturated` gives, dequantized -- saturated to ``bounds`` (``(qmin - zp,
    qmax - zp)``) first where given, else left to the output quantizer.

    ``multiplier``: 0-d, or one per channel -- ``acc``'s axis 1 (``[N, C, *spatial]``, a conv
    output) or, with ``channel_axis_last``, its last axis (a linear output).  One native pass
    (:func:`fxquant.numerics.native.scale_round`) where it applies, the same torch operations
    otherwise: the same bits either way.
    """
    m = multiplier.to(_F32).reshape(-1)
    inner = 1
    if m.numel() > 1 and not channel_axis_last:
        for d in acc.shape[2:]:
            inner *= d
    if native.scale_round(acc, m, inner, post=float(out_scale), out=acc,
                          bounds=bounds) is not None:
        return acc
    if m.numel() == 1:
        view = m.reshape(())
    else:
        view = m if channel_axis_last else m.reshape(-1, *([1] * (acc.dim() - 2)))
    v = requantize_unsaturated(acc, view)
    if bounds is not None:
        v.clamp_(*bounds)
    return v.mul_(out_scale)


def requantize_unsaturated(acc: Tensor, multiplier: Tensor) -> Tensor:
    """``round(float32(acc) * multiplier)`` in place on a float32 ``acc`` (the caller saturates:
    a quantizer's own clamp does it when the result feeds one)."""
    return round_(acc.mul_(multiplier.to(_F32)))


# -- QLinearAdd / QLinearMul --------------------------------------------------------------------
def broadcast_roles(a_shape: Sequence[int], b_shape: Sequence[int]) -> str:
    """How ORT's broadcaster feeds two inputs of these shapes to the MLAS kernel.

    ``"vector"``: both inputs vary along the innermost (non-trivial) output dimension, the kernel
    sees two spans; ``"scalar_a"`` / ``"scalar_b"``: that input is constant along it and is
    passed as a scalar per span (ORT swaps the operands so that the scalar is always MLAS's
    second input).
    """
    n = max(len(a_shape), len(b_shape))
    a = [1] * (n - len(a_shape)) + list(a_shape)
    b = [1] * (n - len(b_shape)) + list(b_shape)
    for da, db in zip(reversed(a), reversed(b), strict=True):
        if max(da, db) == 1:
            continue
        if da == 1:
            return "scalar_a"
        if db == 1:
            return "scalar_b"
        return "vector"
    return "vector"


def _add_kernel(a: Tensor, ra: Tensor, za: int, b: Tensor, rb: Tensor, zb: int, zc: int,
                scalar_b: bool) -> Tensor:
    """MLAS ``MlasQLinearAddKernel`` (AVX2) for MLAS operands ``a`` (a span) and ``b`` (a span,
    or broadcast values when ``scalar_b``): the value including the output zero point."""
    # fixed part: zc - (ra * za + rb * zb), the compiler contracting the sum into an fma
    fixed = _f32(float(zc)) - _fma(ra, _f32(float(za)), rb * _f32(float(zb)))
    if scalar_b:  # the scalar's term joins the fixed part: a product, then an add (no fma)
        return _fma(a, ra, fixed + b * rb)
    return _fma(a, ra, _fma(b, rb, fixed))


def qlinear_add(
    a: Tensor, a_scale: Tensor, a_zero_point: int,
    b: Tensor, b_scale: Tensor, b_zero_point: int,
    out_scale: Tensor, out_zero_point: int, qmin: int, qmax: int,
    a_bound: float | None = None, b_bound: float | None = None,
) -> Tensor:
    """``QLinearAdd`` (com.microsoft) of code tensors ``a`` and ``b`` (broadcasting as ORT does):
    :func:`qlinear_add_value` rounded half to even and saturated.  ``a_bound`` / ``b_bound``:
    the largest ``|code|`` of each input (default 2^16)."""
    # Only the rounded code matters: evaluate in plain float32 (within a few float32 roundings of
    # ORT's fma result), and redo exactly -- in float64, emulating the fmas -- just the elements
    # that lie within a margin of a rounding boundary (x.5), where that error could matter.
    sc = _f32(out_scale)
    roles = broadcast_roles(a.shape, b.shape)
    ra, rb = _f32(a_scale) / sc, _f32(b_scale) / sc
    fixed = float(out_zero_point) - (float(ra) * a_zero_point + float(rb) * b_zero_point)
    a32, b32 = a.to(_F32), b.to(_F32)
    v = torch.mul(b32, rb)
    v = v.add_(a32, alpha=float(ra)) if v.shape == a32.shape else torch.add(v, a32, alpha=float(ra))
    v.add_(fixed)
    # float32 error bound: a few roundings of terms up to |code| * ratio (codes < 2^16)
    terms = 2.0**16 * (float(ra) + float(rb)) if a_bound is None else \
        a_bound * float(ra) + b_bound * float(rb)
    margin = max(_TIE_MARGIN, 8.0 * (terms + abs(fixed)) * 2.0**-24)
    off = torch.round(v).sub_(v).abs_()  # 0.5 at a tie
    near = off >= 0.5 - margin
    if margin >= 0.25 or bool(near.any()):
        idx = near.reshape(-1).nonzero().reshape(-1)
        ea, eb = (t.expand(v.shape).reshape(-1).index_select(0, idx) for t in (a32, b32))
        exact = qlinear_add_value(ea, a_scale, a_zero_point, eb, b_scale, b_zero_point,
                                  out_scale, out_zero_point, roles=roles)
        v = v.reshape(-1).index_copy_(0, idx, exact).reshape(v.shape)
    return _saturate(v, qmin, qmax)


def qlinear_add_params(
    a_scale: Tensor, a_zero_point: int, b_scale: Tensor, b_zero_point: int,
    out_scale: Tensor, out_zero_point: int, qmin: int, qmax: int,
) -> Tensor:
    """The constants of :func:`qlinear_add_dequantized`'s native pass for these grids (MLAS's
    ``ra = sa / sc``, ``rb = sb / sc`` and fixed part, in float32), computed once per grid triple
    by a caller that keeps them."""
    sc = _f32(out_scale)
    sa, sb = _f32(a_scale).reshape(()), _f32(b_scale).reshape(())
    ra, rb = sa / sc, sb / sc
    fixed = _f32(float(out_zero_point)) - _fma(ra, _f32(float(a_zero_point)),
                                               rb * _f32(float(b_zero_point)))
    return torch.stack([1.0 / sa, _f32(float(a_zero_point)), 1.0 / sb,
                        _f32(float(b_zero_point)), ra.reshape(()), rb.reshape(()),
                        fixed.reshape(()), _f32(float(qmin)), _f32(float(qmax)),
                        _f32(float(out_zero_point)), sc.reshape(())])


def qlinear_add_dequantized(
    a: Tensor, a_scale: Tensor, a_zero_point: int,
    b: Tensor, b_scale: Tensor, b_zero_point: int,
    out_scale: Tensor, out_zero_point: int, qmin: int, qmax: int,
    params: Tensor | None = None,
) -> Tensor | None:
    """:func:`qlinear_add` of two same-shape float32 tensors lying on their grids (dequantized
    values: their codes are recovered), dequantized onto the output grid, in one native pass
    with MLAS's true fused multiply-adds (:func:`fxquant.numerics.native.qlinear_add`); None
    where that does not apply (broadcasting, no native kernels): use :func:`qlinear_add`.
    ``params``: :func:`qlinear_add_params` of the same grids, where the caller keeps them.

    Inputs that broadcast with both varying along the innermost dimension (a positional
    embedding ``[1, T, D]`` added to ``[N, T, D]``) are expanded first: MLAS then sees two spans
    per row, the arithmetic of same-shape inputs (:func:`broadcast_roles` ``"vector"``)."""
    if a.dtype != _F32 or b.dtype != _F32:
        return None
    if a.shape != b.shape:
        if broadcast_roles(a.shape, b.shape) != "vector":
            return None
        n = max(a.dim(), b.dim())
        pairs = zip((1,) * (n - a.dim()) + tuple(a.shape), (1,) * (n - b.dim()) + tuple(b.shape),
                    strict=True)
        shape = tuple(da if db == 1 else db for da, db in pairs)
        a, b = a.expand(shape).contiguous(), b.expand(shape).contiguous()
    if params is None:
        params = qlinear_add_params(a_scale, a_zero_point, b_scale, b_zero_point, out_scale,
                                    out_zero_point, qmin, qmax)
    return native.qlinear_add(a, b, params)


_TIE_MARGIN = 2.0**-10
"""Plain float32 evaluation of QLinearAdd's value (magnitude < 2^10) is within 2^-12 of ORT's;
elements closer than this to ``x.5`` are recomputed exactly."""


def qlinear_add_value(
    a: Tensor, a_scale: Tensor, a_zero_point: int,
    b: Tensor, b_scale: Tensor, b_zero_point: int,
    out_scale: Tensor, out_zero_point: int, *, roles: str | None = None,
) -> Tensor:
    """The float32 value ``QLinearAdd`` rounds (output zero point included).

    MLAS computes ``ra = sa / sc``, ``rb = sb / sc`` and the fixed part
    ``zc - fma(ra, za, rb * zb)`` in float32, then per element ``fma(a, ra, fma(b, rb, fixed))``,
    rounds that sum (output zero point included) half to even and saturates.  An operand that is
    constant along the innermost dimension is a per-span scalar: its term ``b * rb`` is added to
    the fixed part first (a float32 product and sum, no fma); ORT passes it as MLAS's second
    operand, so a broadcast first input swaps the roles (:func:`broadcast_roles`).
    """
    sc = _f32(out_scale)
    roles = broadcast_roles(a.shape, b.shape) if roles is None else roles
    if roles == "scalar_a":  # ORT calls MLAS with (b, a): b is the span, a the scalar
        a, b = b, a
        a_scale, b_scale, a_zero_point, b_zero_point = b_scale, a_scale, b_zero_point, a_zero_point
    ra, rb = _f32(a_scale) / sc, _f32(b_scale) / sc
    a, b = torch.broadcast_tensors(a.to(_F32), b.to(_F32))
    return _add_kernel(a, ra, a_zero_point, b, rb, b_zero_point, out_zero_point, roles != "vector")


def qlinear_add_table(
    a_scale: Tensor, a_zero_point: int, a_range: tuple[int, int],
    b_scale: Tensor, b_zero_point: int, b_range: tuple[int, int],
    out_scale: Tensor, out_zero_point: int, qmin: int, qmax: int, roles: str = "vector",
) -> Tensor:
    """:func:`qlinear_add`'s output code for every pair of input codes: a
    ``[len(a_range), len(b_range)]`` table (row ``a - a_range[0]``, column ``b - b_range[0]``),
    for the broadcast ``roles`` (:func:`broadcast_roles`).  An 8-bit QLinearAdd is a lookup in
    it."""
    a = torch.arange(a_range[0], a_range[1] + 1, dtype=_F32).reshape(-1, 1)
    b = torch.arange(b_range[0], b_range[1] + 1, dtype=_F32).reshape(1, -1)
    sc = _f32(out_scale)
    if roles == "scalar_a":  # MLAS sees (b, a): b the span, a the per-span scalar
        ra, rb = _f32(a_scale) / sc, _f32(b_scale) / sc
        v = _add_kernel(b, rb, b_zero_point, a, ra, a_zero_point, out_zero_point, True)
    else:
        ra, rb = _f32(a_scale) / sc, _f32(b_scale) / sc
        v = _add_kernel(a, ra, a_zero_point, b, rb, b_zero_point, out_zero_point,
                        roles == "scalar_b")
    return _saturate(v, qmin, qmax)


def qlinear_mul_table(
    a_scale: Tensor, a_zero_point: int, a_range: tuple[int, int],
    b_scale: Tensor, b_zero_point: int, b_range: tuple[int, int],
    out_scale: Tensor, out_zero_point: int, qmin: int, qmax: int,
) -> Tensor:
    """:func:`qlinear_mul` for every pair of input codes (see :func:`qlinear_add_table`)."""
    a = torch.arange(a_range[0], a_range[1] + 1, dtype=_F32).reshape(-1, 1)
    b = torch.arange(b_range[0], b_range[1] + 1, dtype=_F32).reshape(1, -1)
    return qlinear_mul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, out_scale,
                       out_zero_point, qmin, qmax)


def qlinear_mul(
    a: Tensor, a_scale: Tensor, a_zero_point: int,
    b: Tensor, b_scale: Tensor, b_zero_point: int,
    out_scale: Tensor, out_zero_point: int, qmin: int, qmax: int,
) -> Tensor:
    """``QLinearMul`` (com.microsoft): MLAS (SSE2) multiplies the centred codes exactly in int32,
    converts to float32, multiplies by ``(sa * sb) / sc`` (float32, left to right), adds the
    output zero point in float32 and rounds the sum half to even, then saturates.  The product
    is symmetric, so broadcasting does not change the arithmetic."""
    ratio = (_f32(a_scale) * _f32(b_scale)) / _f32(out_scale)
    prod = (a.to(_F32) - a_zero_point) * (b.to(_F32) - b_zero_point)  # |prod| < 2^24: exact
    return _saturate(prod * ratio + float(out_zero_point), qmin, qmax)


def qlinear_mul_dequantized(
    a_centred: Tensor, b_centred: Tensor, ratio: Tensor, out_scale: Tensor,
    out_zero_point: int, qmin: int, qmax: int,
) -> Tensor:
    """:func:`qlinear_mul` from the centred input codes ``q - z`` (float32, fresh tensors this
    call owns: one is overwritten), dequantized onto the output grid -- the same float32 steps
    in place, and the rounding, saturation and dequantization in one native pass where it
    applies.  ``ratio``: ``(sa * sb) / sc`` in float32 (:func:`qlinear_mul`'s)."""
    shape = torch.broadcast_shapes(a_centred.shape, b_centred.shape)
    if a_centred.shape == shape:
        v = a_centred.mul_(b_centred)
    elif b_centred.shape == shape:
        v = b_centred.mul_(a_centred)
    else:
        v = a_centred * b_centred
    v.mul_(_f32(ratio)).add_(float(out_zero_point))  # |prod| < 2^24: exact, as qlinear_mul
    one = torch.ones((), dtype=_F32)
    if native.scale_round(v, one, add=float(-out_zero_point), post=float(out_scale), out=v,
                          bounds=(qmin, qmax)) is not None:
        return v
    return _saturate(v, qmin, qmax).sub_(out_zero_point).mul_(_f32(out_scale))


def batch_norm(x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None,
               bias: Tensor | None, eps: float) -> Tensor:
    """ORT's float ``BatchNormalization`` (CPU, inference): per channel (axis 1) ``s = (1 /
    sqrt(var + eps)) * weight`` and ``t = bias - mean * s`` in float32, then ``x * s + t`` -- a
    product and a sum, each rounded (no fma).  Pinned against onnxruntime in
    ``tests/runtime_math/test_ort.py``."""
    inv = 1.0 / torch.sqrt(var.detach().to(_F32) + _f32(eps))
    s = inv if weight is None else inv * weight.detach().to(_F32)
    m = mean.detach().to(_F32)
    t = (torch.zeros_like(m) if bias is None else bias.detach().to(_F32)) - m * s
    view = (1, -1) + (1,) * (x.dim() - 2)
    return torch.mul(x.to(_F32), s.reshape(view)).add_(t.reshape(view))


LAYER_NORM_LANES = 8
"""ORT's ``LayerNormalization`` sums the squared deviations in 8 float32 lanes (AVX2)."""


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
               size: int) -> Tensor:
    """ORT's float ``LayerNormalization`` (CPU, x86-64) over the trailing ``size`` elements, for
    ``size`` a multiple of :data:`LAYER_NORM_LANES`:

    * the mean: the row sum in float64, divided by ``size``, rounded to float32;
    * ``d = x - mean`` in float32; the variance sum accumulates ``fma(d, d, acc)`` in 8 float32
      lanes over consecutive groups of 8 elements, reduced pairwise (lanes 0-3 + 4-7, then
      0-1 + 2-3, then 0 + 1);
    * ``inv_std = 1 / sqrt(sum / size + eps)``, each step correctly rounded to float32;
    * ``y = fma(d * inv_std, weight, bias)``.

    Read from ORT's results (its ``Mean`` / ``InvStdDev`` outputs step by step) and pinned
    against onnxruntime in ``tests/runtime_math/test_ort.py``; torch's ``layer_norm`` rounds
    differently (about 20% of the outputs of a 192-wide row differ in the last bit)."""
    if size % LAYER_NORM_LANES or size <= 0:
        raise ValueError(f"layer_norm: the normalized size {size} is not a multiple of "
                         f"{LAYER_NORM_LANES}")
    shape = x.shape
    rows = x.detach().to(_F32).reshape(-1, size)
    w = torch.ones(size, dtype=_F32) if weight is None else weight.detach().to(_F32).reshape(-1)
    b = torch.zeros(size, dtype=_F32) if bias is None else bias.detach().to(_F32).reshape(-1)
    fast = native.ort_layer_norm(rows.contiguous(), w, b, eps)
    if fast is not None:  # one native pass per row
        return fast.reshape(shape)
    mean = rows.double().sum(1).div_(size).to(_F32)
    d = rows - mean[:, None]
    lanes = d.reshape(rows.shape[0], size // LAYER_NORM_LANES, LAYER_NORM_LANES)
    acc = torch.zeros(rows.shape[0], LAYER_NORM_LANES, dtype=_F32)
    for i in range(lanes.shape[1]):
        c = lanes[:, i]
        acc = _fma(c, c, acc)
    while acc.shape[1] > 1:
        half = acc.shape[1] // 2
        acc = acc[:, :half] + acc[:, half:]
    var = acc[:, 0].div(_f32(float(size))).add_(_f32(eps))
    # torch's vectorized float32 sqrt is not always the correctly rounded one; float64's is
    inv = torch.ones_like(var).div_(torch.sqrt(var.double()).to(_F32))
    y = d.mul_(inv[:, None])
    return _fma(y, w, b).reshape(shape)


# -- pooling ------------------------------------------------------------------------------------
def global_average_pool(
    code_sum: Tensor, count: int, in_scale: Tensor, in_zero_point: int,
    out_scale: Tensor, out_zero_point: int, qmin: int, qmax: int,
) -> Tensor:
    """``QLinearGlobalAveragePool``: ``round(float32(sum - count * zx) * (sx / (sy * count))) +
    zy`` with the scale in float32 and rounding before the zero point (``code_sum``: the exact sum
    of the raw input codes over the ``count`` pooled elements)."""
    acc = code_sum.to(_F32) - float(count * in_zero_point)  # exact: |acc| < 2^24
    scale = _f32(in_scale) / (_f32(out_scale) * _f32(float(count)))
    return requantize(acc, scale, out_zero_point, qmin, qmax)


def average_pool(
    x: Tensor, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
    count_include_pad: bool, out_scale: Tensor, out_zero_point: int, qmin: int, qmax: int,
) -> Tensor:
    """``QLinearAveragePool`` on the dequantized input ``x`` (float32 ``sx * (q - zx)``, i.e. the
    input quantizer's output), NC + spatial layout.

    ORT dequantizes, sums each window in float32 *in row-major order* (first spatial dimension
    outermost), divides by the element count in float32 (the full kernel size with
    ``count_include_pad``, else the in-bounds count), then computes
    ``nearbyint(y / sy + zy)`` in float32 (the zero point added before rounding) and saturates.
    """
    nd = len(kernel_size)
    x = x.to(_F32)
    pads: list[int] = []
    for p in reversed(padding):
        pads += [p, p]
    xp = F.pad(x, pads) if any(padding) else x
    spatial = x.shape[2:]
    out_size = [(spatial[i] + 2 * padding[i] - kernel_size[i]) // stride[i] + 1 for i in range(nd)]
    total = None
    for offset in _window_offsets(kernel_size):
        index = [slice(None), slice(None)] + [
            slice(offset[i], offset[i] + stride[i] * (out_size[i] - 1) + 1, stride[i])
            for i in range(nd)
        ]
        term = xp[tuple(index)]
        total = term.clone() if total is None else total.add_(term)  # float32, in order
    assert total is not None
    if count_include_pad or not any(padding):
        count = torch.tensor(float(_prod(kernel_size)), dtype=_F32)
    else:
        ones = F.pad(torch.ones((1, 1, *spatial), dtype=_F32), pads)
        count = _window_counts(ones, kernel_size, stride, out_size)
    y = total / count
    return _saturate(y / _f32(out_scale) + float(out_zero_point), qmin, qmax)


def _prod(v: Sequence[int]) -> int:
    out = 1
    for x in v:
        out *= x
    return out


def _window_offsets(kernel_size: Sequence[int]) -> list[tuple[int, ...]]:
    offsets: list[tuple[int, ...]] = [()]
    for k in kernel_size:
        offsets = [(*o, i) for o in offsets for i in range(k)]
    return offsets


def _window_counts(ones: Tensor, kernel_size, stride, out_size) -> Tensor:
    total = torch.zeros((1, 1, *out_size), dtype=_F32)
    for offset in _window_offsets(kernel_size):
        index = [slice(None), slice(None)] + [
            slice(offset[i], offset[i] + stride[i] * (out_size[i] - 1) + 1, stride[i])
            for i in range(len(kernel_size))
        ]
        total += ones[tuple(index)]
    return total


# -- float kernels with ORT's own arithmetic ---------------------------------------------------
_SSE = 4  # Eigen's float packet in ORT's CPU build (SSE)


def _eigen_row_sums(rows: Tensor, start: int) -> Tensor:
    """Eigen's vectorized ``sum()`` of rows whose first 16-byte aligned element is ``start``:
    packets of 4 from ``start`` (two accumulators, combined, plus an odd last packet), the
    packet reduced as ``(p0 + p2) + (p1 + p3)``, then the unaligned head and the tail added one
    by one; fewer than 4 aligned elements: a plain left-to-right sum."""
    n = rows.shape[-1]
    start = min(start, n)
    body = n - start
    aligned = body // _SSE * _SSE
    if aligned == 0:
        acc = rows[..., 0].clone()
        for i in range(1, n):
            acc = acc + rows[..., i]
        return acc
    aligned2 = body // (2 * _SSE) * (2 * _SSE)
    p0 = rows[..., start:start + _SSE].clone()
    if aligned > _SSE:
        p1 = rows[..., start + _SSE:start + 2 * _SSE].clone()
        for i in range(start + 2 * _SSE, start + aligned2, 2 * _SSE):
            p0 = p0 + rows[..., i:i + _SSE]
            p1 = p1 + rows[..., i + _SSE:i + 2 * _SSE]
        p0 = p0 + p1
        if aligned > aligned2:
            p0 = p0 + rows[..., start + aligned2:start + aligned2 + _SSE]
    acc = (p0[..., 0] + p0[..., 2]) + (p0[..., 1] + p0[..., 3])
    for i in (*range(start), *range(start + aligned, n)):
        acc = acc + rows[..., i]
    return acc


def reduce_mean_trailing(x: Tensor, n: int) -> Tensor:
    """ORT's float ``ReduceMean`` over the trailing ``n`` elements of each row of a contiguous
    float32 tensor (``x.reshape(-1, n)``): Eigen's SSE ``sum()`` per row -- whose grouping
    depends on where the row starts relative to a 16-byte boundary of the 64-byte aligned
    buffer -- divided by ``n`` in float32.  Returns ``[rows]``."""
    rows = x.to(_F32).reshape(-1, n)
    out = torch.empty(rows.shape[0], dtype=_F32)
    offsets = (torch.arange(rows.shape[0]) * n) % _SSE
    for off in range(_SSE):
        idx = (offsets == off).nonzero().flatten()
        if idx.numel():
            out[idx] = _eigen_row_sums(rows[idx], (_SSE - off) % _SSE)
    return out / float(n)


# -- lookup-table kernels (QLinearSigmoid) ------------------------------------------------------
_LOGISTIC = {
    "alpha": (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05,
              8.51377133304701e-03, 2.48287947061529e-01),
    "beta": (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06,
             1.70198817374094e-03, 1.16817656904453e-01, 9.93151921023180e-01),
}


_LOGISTIC_COEFFS = torch.tensor((*_LOGISTIC["alpha"], *_LOGISTIC["beta"]), dtype=_F32)


def logistic(x: Tensor) -> Tensor:
    """MLAS ``MlasComputeLogistic`` (the FMA3 kernel of x86-64): Eigen's rational approximation,
    ``clamp(p(x) / q(x) + 0.5, 0, 1)`` on ``x`` clamped to [-18, 18], each polynomial step a
    float32 fma.  Not ``torch.sigmoid``: the two differ in the last bits.  One native pass with
    true fmas where it applies (:func:`fxquant.numerics.native.mlas_logistic`); else torch
    operations, each fma through float64."""
    fast = native.mlas_logistic(x, _LOGISTIC_COEFFS, False)
    if fast is not None:
        return fast
    return _logistic_ops(x)


def silu(x: Tensor) -> Tensor:
    """SiLU as exported (``Mul(x, Sigmoid(x))``) and run by ORT in float32: ``x * logistic(x)``
    (one native pass where it applies)."""
    fast = native.mlas_logistic(x, _LOGISTIC_COEFFS, True)
    if fast is not None:
        return fast
    return x.to(_F32) * logistic(x)


def _logistic_ops(x: Tensor) -> Tensor:
    x = x.to(_F32).clamp(-18.0, 18.0)
    x2 = x * x
    alpha = [_f32(c) for c in _LOGISTIC["alpha"]]
    beta = [_f32(c) for c in _LOGISTIC["beta"]]
    p = _fma(x2, alpha[0], alpha[1])
    for c in alpha[2:]:
        p = _fma(p, x2, c)
    p = p * x
    q = _fma(x2, beta[0], beta[1])
    for c in beta[2:]:
        q = _fma(q, x2, c)
    return (p / q + 0.5).clamp_(0.0, 1.0)


def lookup_table(
    fn, in_scale: Tensor, in_zero_point: int, in_qmin: int, in_qmax: int,
    out_scale: Tensor, out_zero_point: int, qmin: int, qmax: int,
) -> Tensor:
    """ORT's ``QlinearBuildLookupTable``: for every input code ``q`` in ``[in_qmin, in_qmax]``
    (index ``q - in_qmin``), ``QuantizeLinear(fn(sx * (q - zx)))`` -- float32 throughout, the
    quantization rounding before the zero point is added."""
    codes = torch.arange(in_qmin, in_qmax + 1, dtype=_F32)
    y = fn((codes - in_zero_point) * _f32(in_scale))
    return torch.round(y / _f32(out_scale)).add_(out_zero_point).clamp_(qmin, qmax)
