"""``fake_quantize_lsq`` against LSQ / LSQ+ written in plain autograd.

The reference builds the forward from differentiable torch ops only::

    s = grad_scale(scale, g);  z = round_ste(grad_scale(zero_point, g))
    out = (clamp(round_ste(x / s) + z, qmin, qmax) - z) * s

with ``round_ste(t) = t + (round(t) - t).detach()`` (value ``round(t)``, gradient 1) and
``grad_scale(t, g) = t.detach() + (t*g - (t*g).detach())`` (value ``t``, gradient ``g``).

Tolerances (exact equality treats +0.0 and -0.0 as equal):

* Dyadic data (power-of-two scales, inputs on a ``scale / 4`` grid, upstream gradients on a
  ``1/8`` grid) make every float operation of both computations exact, so forward and the
  gradients for ``x``, ``scale`` and ``zero_point`` must be **exactly equal** (any grad factor:
  both sides multiply the same exact sum by it once).
* Arbitrary float32 data (one element per scale, so no summation): forward and the zero-point
  gradient are exactly equal; ``d/dx`` is within **1 ulp** of the upstream gradient (autograd
  computes ``(grad * s) / s``); ``d/ds`` is within **6 ulp of |grad| * max(|x/s|, 1) * g``:
  autograd forms ``grad * r - (grad * s) * ((x / s) / s)``, two terms of size ``|grad * x/s|``
  that cancel, with 4-5 roundings, where the closed form rounds ``grad * (r - x/s)`` once.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxquant.numerics import (
    QDType,
    ScaleMath,
    broadcast_param,
    fake_quantize,
    fake_quantize_lsq,
    qint4,
    qint8,
    quint4,
    quint8,
)

DTYPES = [qint4, quint4, qint8, quint8, qint8.narrow(), quint8.narrow()]
LAYOUTS = [  # (shape, axis)
    ((), None),
    ((7,), None),
    ((3, 4, 5), None),
    ((6,), 0),
    ((4, 3, 5), 0),
    ((4, 3, 5), 1),
    ((4, 3, 5), 2),
    ((4, 3, 5), -1),
    ((2, 3, 4, 2), 1),
    ((2, 3, 4, 2), 3),
]


# -- the reference ------------------------------------------------------------------------------
def round_ste(t: torch.Tensor) -> torch.Tensor:
    return t + (torch.round(t) - t).detach()


def grad_scale(t: torch.Tensor, g: float) -> torch.Tensor:
    tg = t * g
    return t.detach() + (tg - tg.detach())


def lsq_reference(x, scale, zero_point, dtype: QDType, axis, math_: ScaleMath, g: float):
    s = broadcast_param(grad_scale(scale, g), x, axis)
    z = broadcast_param(round_ste(grad_scale(zero_point, g)), x, axis)
    v = x / s if math_ is ScaleMath.DIVIDE else x * (1.0 / s)
    q = torch.clamp(round_ste(v) + z, dtype.qmin, dtype.qmax)
    return (q - z) * s


def run(fn, x, scale, zp, upstream, *args):
    """Forward + backward of ``fn``; returns (out, dx, dscale, dzero_point)."""
    x, scale, zp = (t.clone().requires_grad_(True) for t in (x, scale, zp))
    out = fn(x, scale, zp, *args)
    out.backward(upstream)
    return out.detach(), x.grad, scale.grad, zp.grad


def assert_exact(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Equal values, shapes and dtypes (+0.0 and -0.0 count as equal: a zero gradient's sign
    depends only on which side multiplies by the 0/1 mask)."""
    assert a.shape == b.shape and a.dtype == b.dtype, what
    assert torch.equal(a, b), f"{what}: max |diff| {float((a - b).abs().max())}"


def ulp_distance(a: torch.Tensor, b: torch.Tensor, magnitude: torch.Tensor) -> np.ndarray:
    """|a - b| in units of the float32 spacing at ``magnitude``."""
    spacing = np.spacing(np.abs(magnitude.detach().numpy()).astype(np.float32)).astype(np.float64)
    return np.abs(a.numpy().astype(np.float64) - b.numpy().astype(np.float64)) / spacing


# -- exact (dyadic) comparisons -----------------------------------------------------------------
def dyadic_case(
    rng: np.random.Generator, dtype: QDType, shape, axis, symmetric: bool, fractional_zp: bool
):
    c = 1 if axis is None else shape[axis]
    pshape = () if axis is None else (c,)
    scale = np.ldexp(1.0, rng.integers(-6, 4, pshape)).astype(np.float32)
    if symmetric:
        zp = np.full(pshape, 0.0 if dtype.signed else (dtype.qmin + dtype.qmax + 1) // 2)
    else:
        zp = rng.integers(dtype.qmin, dtype.qmax + 1, pshape).astype(np.float64)
        if fractional_zp:  # LSQ+ learns a float zero point; it is rounded (half to even) in forward
            zp = np.clip(zp + rng.choice([0.0, 0.25, 0.5, -0.5], pshape), dtype.qmin, dtype.qmax)
    bshape = [1] * len(shape)
    if axis is not None:
        bshape[axis] = c
    z = np.round(zp).reshape(bshape)
    lo = 4 * (dtype.qmin - z - 5)
    hi = 4 * (dtype.qmax - z + 5)
    j = rng.integers(
        np.broadcast_to(lo, shape).astype(np.int64), np.broadcast_to(hi, shape).astype(np.int64) + 1
    )
    x = (j / 4.0 * scale.reshape(bshape)).astype(np.float32)
    upstream = (rng.integers(-8, 9, shape) / 8.0).astype(np.float32)
    return tuple(torch.from_numpy(np.array(a, dtype=np.float32)) for a in (x, scale, zp, upstream))


@pytest.mark.parametrize("math_", list(ScaleMath), ids=lambda m: m.name)
@pytest.mark.parametrize(("shape", "axis"), LAYOUTS, ids=lambda v: str(v))
def test_gradients_bit_identical_on_dyadic_data(shape, axis, math_):
    rng = np.random.default_rng(zlib.crc32(repr((shape, axis, math_.value)).encode()))
    numel = math.prod(shape)
    for dtype in DTYPES:
        for symmetric in (True, False):
            for fractional_zp in (False, True):
                x, scale, zp, upstream = dyadic_case(
                    rng, dtype, shape, axis, symmetric, fractional_zp
                )
                per_scale = numel // scale.numel()
                for g in (1.0, 0.5, 2.0**-7, 0.3, 1.0 / math.sqrt(per_scale * dtype.qmax)):
                    args = (dtype, axis, math_, g)
                    got = run(fake_quantize_lsq, x, scale, zp, upstream, *args)
                    ref = run(lsq_reference, x, scale, zp, upstream, *args)
                    ctx = f"{dtype} shape={shape} axis={axis} {math_.name} g={g} sym={symmetric}"
                    for name, a, b in zip(
                        ("out", "dx", "dscale", "dzero_point"), got, ref, strict=True
                    ):
                        assert_exact(a, b, f"{ctx}: {name}")
                    assert got[2].shape == scale.shape and got[3].shape == zp.shape


def test_dyadic_data_exercises_all_three_regions():
    """The dyadic cases above contain in-range, below-range and above-range elements."""
    rng = np.random.default_rng(0)
    x, scale, zp, _ = dyadic_case(rng, qint8, (4, 3, 5), 1, False, False)
    v = x / broadcast_param(scale, x, 1) + broadcast_param(torch.round(zp), x, 1)
    q = torch.round(v)
    assert bool((q < qint8.qmin).any()) and bool((q > qint8.qmax).any())
    assert bool(((q >= qint8.qmin) & (q <= qint8.qmax)).any())
    assert bool((v == torch.floor(v) + 0.5).any())  # exact ties too


# -- arbitrary float32 data ---------------------------------------------------------------------
@settings(max_examples=300)
@given(
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from([((1,), None), ((), None), ((16,), 0), ((16, 1, 1), 0), ((1, 16), -1)]),
    math_=st.sampled_from(list(ScaleMath)),
    g=st.floats(1e-3, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_gradients_within_ulps_on_float_data(dtype, layout, math_, g, seed):
    shape, axis = layout
    rng = np.random.default_rng(seed)
    pshape = () if axis is None else (shape[axis],)
    scale = torch.from_numpy(np.array(np.exp(rng.uniform(-9, 3, pshape)), dtype=np.float32))
    zp = torch.from_numpy(
        np.array(rng.integers(dtype.qmin, dtype.qmax + 1, pshape), dtype=np.float32)
    )
    s_b, z_b = (
        broadcast_param(scale, torch.empty(shape), axis),
        broadcast_param(zp, torch.empty(shape), axis),
    )
    u = rng.uniform(dtype.qmin - 4, dtype.qmax + 4, shape) - z_b.numpy()
    x = torch.from_numpy(np.array(u * s_b.numpy(), dtype=np.float32)).reshape(shape)
    upstream = torch.from_numpy(np.array(rng.normal(size=shape), dtype=np.float32)).reshape(shape)
    args = (dtype, axis, math_, g)
    out, dx, ds, dz = run(fake_quantize_lsq, x, scale, zp, upstream, *args)
    out_r, dx_r, ds_r, dz_r = run(lsq_reference, x, scale, zp, upstream, *args)
    assert_exact(out, out_r, "forward")
    assert_exact(dz, dz_r, "d/dzero_point")
    assert ulp_distance(dx, dx_r, upstream).max() <= 1.0, "d/dx"
    v = (x / s_b).reshape(-1)
    magnitude = (upstream.reshape(-1).abs() * torch.clamp(v.abs(), min=1.0) * g).reshape(ds.shape)
    assert ulp_distance(ds, ds_r, magnitude).max() <= 6.0, "d/dscale"


# -- the documented closed form, by hand ----------------------------------------------------------
def test_closed_form_by_hand():
    """d/ds = round(x/s) - x/s inside, qmin - zp below, qmax - zp above; d/dzp = -s outside."""
    x = torch.tensor([0.375, -100.0, 100.0, 0.25], requires_grad=True)
    s = torch.tensor([0.5, 0.5, 0.5, 0.5], requires_grad=True)
    z = torch.tensor([3.0, 3.0, 3.0, 3.0], requires_grad=True)
    fake_quantize_lsq(x, s, z, qint8, axis=0).sum().backward()
    # v = x / s = 0.75, -200, 200, 0.5 (tie: round to 0)
    assert s.grad.tolist() == [0.25, -128.0 - 3.0, 127.0 - 3.0, -0.5]
    assert z.grad.tolist() == [0.0, -0.5, -0.5, 0.0]
    assert x.grad.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_grad_factor_scales_only_the_range_gradients():
    x = torch.linspace(-3, 3, 50)
    s, z = torch.tensor(0.02), torch.tensor(5.0)
    _, dx1, ds1, dz1 = run(
        fake_quantize_lsq, x, s, z, torch.ones(50), qint8, None, ScaleMath.DIVIDE, 1.0
    )
    _, dx2, ds2, dz2 = run(
        fake_quantize_lsq, x, s, z, torch.ones(50), qint8, None, ScaleMath.DIVIDE, 0.25
    )
    assert torch.equal(dx1, dx2)
    assert torch.equal(ds2, ds1 * 0.25) and torch.equal(dz2, dz1 * 0.25)
    assert float(ds1) != 0.0 and float(dz1) != 0.0


@pytest.mark.parametrize("math_", list(ScaleMath), ids=lambda m: m.name)
def test_forward_equals_fake_quantize(math_):
    """LSQ's forward is fake_quantize with the zero point rounded half to even and clamped."""
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(0, 3, (8, 6, 5)).astype(np.float32))
    scale = torch.from_numpy(np.exp(rng.uniform(-4, -1, 6)).astype(np.float32))
    zp = torch.tensor([0.0, 2.5, -3.5, 300.0, -7.2, 127.0])
    expected = fake_quantize(x, scale, torch.round(zp).clamp(-128, 127).int(), qint8, 1, math_)
    assert_exact(fake_quantize_lsq(x, scale, zp, qint8, 1, math_), expected, "forward")


def test_integer_zero_point_without_grad():
    """A fixed int32 zero point (symmetric LSQ) needs no gradient and gets none."""
    x = torch.randn(20, requires_grad=True)
    s = torch.tensor(0.05, requires_grad=True)
    z = torch.tensor(0, dtype=torch.int32)
    fake_quantize_lsq(x, s, z, qint8).sum().backward()
    assert s.grad is not None and s.grad.shape == () and z.grad is None
