"""The native CPU kernels (:mod:`fxquant.numerics.native`) are bit-identical to pure torch.

Each kernel is compared with an independent pure-torch reference:

* ``fake_quant`` with :func:`fxquant.numerics.affine.fake_quantize_reference` (the literal
  ``(clamp(round(x / s) + zp, qmin, qmax) - zp) * s``) and the reference STE mask, on the
  sweeps and hypothesis cases of ``test_fast_paths`` (every grid of 2..16 bits, ties and
  their ulp neighbours, +-0, +-inf, NaN, saturation, per channel on every axis, float32 /
  float64), plus tensors large enough to be split across threads;
* ``masked_grad`` with ``grad * mask`` (a float 0 / 1 mask: signed zeros included);
* ``histogram`` with the pure-torch binning of :mod:`fxquant.observers.histogram`;
* ``div_channel_backward`` with the two products autograd's division rule computes;
* ``scale_round`` with the torch operations it fuses (per tensor, per channel in the middle and
  last, with and without the add / multiply, in place), over ties, their neighbours, values
  beyond 2^22 and specials; ``grid_lookup`` with a gather, and its refusal off the grid.

Bit patterns are compared (``-0.0 != +0.0``); NaN positions must agree.  The build / fallback
machinery is checked too: a failed build is remembered and everything falls back to pure torch.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from test_fast_paths import (
    GRIDS,
    _case_tensors,
    assert_same,
    cases,
    channel_shape,
    reference_mask,
    tie_inputs,
)

from fxquant.numerics import QDType, ScaleMath, fake_quantize, native, qint8, quint8
from fxquant.numerics.affine import fake_quantize_reference
from fxquant.numerics.native import selfcheck
from fxquant.observers.histogram import _bin_counts


@pytest.fixture(autouse=True)
def native_on():
    """Every test here needs the kernels: where a C++ toolchain exists they must build."""
    if not native.available():
        if shutil.which("g++") or shutil.which("c++"):
            pytest.fail(f"native kernels unavailable with a compiler present: "
                        f"{native.why_unavailable()}")
        pytest.skip(f"no C++ compiler: {native.why_unavailable()}")
    yield


def check_native(x, scale, zp, dtype, axis, math) -> None:
    what = f"{dtype} axis={axis} {math.name} shape={tuple(x.shape)} {x.dtype}"
    ref = fake_quantize_reference(x, scale, zp, dtype, axis, math)
    ref_mask = reference_mask(x, scale, zp, dtype, axis, math)
    recip = math is ScaleMath.RECIPROCAL
    got = native.fake_quant(x, scale, zp, dtype, axis, recip, with_mask=True)
    assert got is not None, what + ": kernel declined"
    out, mask = got
    assert_same(out, ref, what + " out")
    assert mask.dtype == torch.bool and torch.equal(mask, ref_mask), what + " mask"
    out2, none = native.fake_quant(x, scale, zp, dtype, axis, recip, with_mask=False)
    assert none is None
    assert_same(out2, ref, what + " out (no mask)")
    with native.native_kernels(False):  # the pure-torch twin gives the same bits
        assert_same(fake_quantize(x, scale, zp, dtype, axis, math), ref, what + " pure torch")
    g = torch.randn(x.shape, dtype=x.dtype)
    g.view(-1)[::3] = -g.view(-1)[::3].abs()  # negative gradients: masked to -0.0
    assert_same(native.masked_grad(g, mask), g * ref_mask.to(x.dtype), what + " masked_grad")


def native_sweep(rng, grids, dtype_x=torch.float32) -> int:
    n = 0
    for dtype in grids:
        mid = 0 if dtype.signed else (dtype.qmin + dtype.qmax + 1) // 2
        for math in ScaleMath:
            for zp in (dtype.qmin, dtype.qmax, mid, int(rng.integers(dtype.qmin, dtype.qmax + 1))):
                for e in (-126, -14, 0, 7, 91):
                    s = np.float32(np.ldexp(rng.uniform(1.0, 2.0) if e % 2 else 1.0, e))
                    x = tie_inputs(dtype, np.asarray(zp), np.asarray(s), (257,), rng)
                    check_native(torch.from_numpy(x).to(dtype_x), torch.tensor(s),
                                 torch.tensor(zp, dtype=torch.int32), dtype, None, math)
                    n += 1
            for ndim in range(1, 5):
                for axis in range(-ndim, ndim):
                    shape = tuple(int(v) for v in rng.integers(1, 6, size=ndim))
                    c = shape[axis]
                    scale = np.ldexp(rng.uniform(1, 2, c), rng.integers(-20, 20, c)).astype(
                        np.float32)
                    zps = rng.integers(dtype.qmin, dtype.qmax + 1, c)
                    b = channel_shape(ndim, axis, c)
                    x = tie_inputs(dtype, zps.reshape(b), scale.reshape(b), shape, rng)
                    check_native(torch.from_numpy(x).to(dtype_x), torch.from_numpy(scale),
                                 torch.from_numpy(zps.astype(np.int32)), dtype, axis, math)
                    n += 1
    return n


def test_fake_quant_sweep_all_grids():
    assert native_sweep(np.random.default_rng(10), GRIDS) >= 60 * 2 * 4 * 5


def test_fake_quant_float64_inputs():
    grids = [qint8, quint8, QDType(16, True), QDType(4, False), QDType(2, True, True)]
    assert native_sweep(np.random.default_rng(11), grids, dtype_x=torch.float64)


@settings(max_examples=400)
@given(cases())
def test_fake_quant_hypothesis(case):
    check_native(*_case_tensors(case))


@pytest.mark.parametrize("threads", [1, 2])
def test_large_tensors_split_across_threads(threads):
    """Chunks of the parallel loop (per tensor, per channel on axis 1 / 0 / last)."""
    rng = np.random.default_rng(12)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for dtype in (qint8, quint8, QDType(4, True, True)):
            zp = 3 if dtype.signed else 100
            x = tie_inputs(dtype, np.asarray(zp), np.asarray(np.float32(0.03)), (97_001,), rng)
            check_native(torch.from_numpy(x), torch.tensor(0.03), torch.tensor(zp), dtype,
                         None, ScaleMath.DIVIDE)
            for shape, axis in (((8, 16, 40, 41), 1), ((64, 3, 9, 9), 0), ((300, 257), -1)):
                c = shape[axis]
                scale = np.ldexp(rng.uniform(1, 2, c), rng.integers(-8, 2, c)).astype(np.float32)
                zps = rng.integers(dtype.qmin, dtype.qmax + 1, c)
                b = channel_shape(len(shape), axis, c)
                x = tie_inputs(dtype, zps.reshape(b), scale.reshape(b), shape, rng)
                check_native(torch.from_numpy(x), torch.from_numpy(scale),
                             torch.from_numpy(zps.astype(np.int32)), dtype, axis,
                             ScaleMath.RECIPROCAL)
    finally:
        torch.set_num_threads(old)


def test_kernel_declines_what_it_does_not_cover():
    s, z = torch.tensor(0.1), torch.tensor(0, dtype=torch.int32)
    x = torch.randn(6, 5)
    assert native.fake_quant(x[:, ::2], s, z, qint8, None, False, True) is None  # gaps
    sc1, zc1 = torch.full((6,), 0.1), torch.zeros(6, dtype=torch.int32)
    assert native.fake_quant(x.t(), sc1, zc1, qint8, 1, False, True) is None  # per channel: no
    assert native.fake_quant(x.half(), s, z, qint8, None, False, True) is None
    assert native.fake_quant(x, s, z, QDType(17, True), None, False, True) is None
    sc = torch.full((5,), 0.1)
    zc = torch.zeros(5, dtype=torch.int32)
    assert native.fake_quant(x, sc, zc, qint8, 0, False, True) is None  # 5 scales, 6 rows
    assert native.fake_quant(x, sc, zc, qint8, None, False, True) is None  # no axis
    assert native.fake_quant(x, sc, zc, qint8, 1, False, True) is not None
    with native.native_kernels(False) as used:
        assert not used
        assert native.fake_quant(x, s, z, qint8, None, False, True) is None
    assert native.native_enabled()


def test_masked_grad_falls_back_for_other_layouts():
    g = torch.randn(4, 6)
    mask = torch.rand(6, 4) > 0.5
    got = native.masked_grad(g, mask.t())  # mask not contiguous: pure torch, same product
    assert_same(got, g * mask.t().float(), "masked_grad fallback")


# -- histogram --------------------------------------------------------------------------------
def _reference_counts(x: torch.Tensor, shift: int, bins: int) -> torch.Tensor:
    exp = (bins // 2).bit_length() - 1 - shift
    return _bin_counts(x.reshape(1, -1), torch.tensor([exp]), bins)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bins", [16, 2048, 1 << 16])
def test_histogram_matches_torch_binning(dtype, bins):
    gen = torch.Generator().manual_seed(bins)
    half = bins // 2
    for exp in (-100, -20, -1, 0, 3, 60, 127 if dtype == torch.float32 else 500):
        r = 2.0**exp
        shift = (half.bit_length() - 1) - exp
        edges = torch.arange(-half, half, dtype=torch.float64) * (r / half)  # exact bin edges
        parts = [
            (torch.rand(5000, generator=gen, dtype=torch.float64) * 2 - 1) * r,
            edges, torch.nextafter(edges, torch.tensor(-np.inf, dtype=torch.float64)),
            torch.tensor([0.0, -0.0, 1e-300, -1e-300, -1e-40, 1e-40, -(2.0**-149)]),
        ]
        x = torch.cat(parts).to(dtype)
        x = x[torch.isfinite(x) & (x >= -r) & (x < r)]
        got = native.histogram(x, shift, bins)
        assert got is not None and got.dtype == torch.int64
        assert torch.equal(got, _reference_counts(x, shift, bins)), (exp, bins, dtype)
        assert int(got.sum()) == x.numel()


def test_histogram_threads_and_out_of_range():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = (torch.randn(300_001) * 3).clamp(-8.0, 7.99)  # R = 2**(10 - 7) = 8
        assert torch.equal(native.histogram(x, 7, 2048), _reference_counts(x, 7, 2048))
        with pytest.raises(RuntimeError, match="outside the histogram"):
            native.histogram(torch.tensor([1.0, 100.0]), 7, 2048)
        # one bin takes everything (zeros after a ReLU): the 16-bit per-way counters are
        # flushed long before they could wrap
        zeros = torch.zeros(1_000_003)
        zeros[::7] = 0.5
        assert torch.equal(native.histogram(zeros, 7, 2048), _reference_counts(zeros, 7, 2048))
    finally:
        torch.set_num_threads(old)


# -- BN-fold division backward ----------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (1, 3, 5, 6), (2, 4, 7), (2, 3, 2, 2, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_div_channel_backward_matches_the_products(shape, dtype):
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    out = (torch.randn(shape, generator=gen, dtype=torch.float64) * 1e3).to(dtype)
    d = torch.tensor([0.37, -2.5, 1e-12, 3e7][: shape[1]], dtype=dtype)
    gy, t = native.div_channel_backward(g, out, d)
    db = d.reshape(1, -1, *([1] * (len(shape) - 2)))
    assert_same(gy, g / db, "grad / d")
    assert_same(t, (out / db) * g, "(out / d) * grad")


# -- build and fallback -------------------------------------------------------------------------
def test_selfcheck_passes_on_the_loaded_kernels():
    assert selfcheck.run(native._ops()) is None


@pytest.fixture
def fresh_state(monkeypatch):
    saved = (native._State.enabled, native._State.loaded, native._State.reason)
    monkeypatch.setattr(native._State, "ops", [])
    native._State.loaded = None
    yield
    native._State.enabled, native._State.loaded, native._State.reason = saved


def test_a_failed_build_is_remembered_and_pure_torch_is_used(fresh_state, monkeypatch, tmp_path):
    (tmp_path / "FAILED").write_text("CalledProcessError: g++ exploded")
    monkeypatch.setattr(native, "build_dir", lambda: tmp_path)
    assert not native.available()
    assert "earlier build failed" in native.why_unavailable()
    x, s, z = torch.randn(64), torch.tensor(0.05), torch.tensor(0, dtype=torch.int32)
    assert native.fake_quant(x, s, z, qint8, None, False, True) is None
    assert_same(fake_quantize(x, s, z, qint8), fake_quantize_reference(x, s, z, qint8), "fallback")


def test_a_failed_selfcheck_turns_the_kernels_off(fresh_state, monkeypatch):
    monkeypatch.setattr(selfcheck, "run", lambda ops: "fake_quant differs")
    assert not native.available()
    assert "self-check failed: fake_quant differs" in native.why_unavailable()


def test_kernels_first_used_inside_inference_mode_pass_their_self_check(fresh_state):
    if native.why_unavailable() and "earlier build failed" in native.why_unavailable():
        pytest.skip("no native build on this machine")
    with torch.inference_mode():  # the autograd operators' check needs autograd: run outside
        assert native.available(), native.why_unavailable()


# -- autograd operators (backward in C++) -------------------------------------------------------
@pytest.mark.parametrize("axis", [None, 1, -1])
@pytest.mark.parametrize("dtype_x", [torch.float32, torch.float64])
def test_fake_quant_ste_operator_matches_the_reference_gradient(axis, dtype_x):
    rng = np.random.default_rng(13)
    for dtype in (qint8, quint8, QDType(4, True, True), QDType(16, False)):
        shape = (3, 5, 7)
        if axis is None:
            scale = np.asarray(np.float32(0.07))
            zp = np.asarray(rng.integers(dtype.qmin, dtype.qmax + 1))
            x = tie_inputs(dtype, zp, scale, shape, rng)
        else:
            c = shape[axis]
            scale = np.ldexp(rng.uniform(1, 2, c), rng.integers(-6, 2, c)).astype(np.float32)
            zp = rng.integers(dtype.qmin, dtype.qmax + 1, c)
            b = channel_shape(3, axis, c)
            x = tie_inputs(dtype, zp.reshape(b), scale.reshape(b), shape, rng)
        x = torch.from_numpy(x).to(dtype_x)
        s = torch.from_numpy(np.asarray(scale))
        z = torch.from_numpy(np.asarray(zp).astype(np.int32))
        ref = fake_quantize_reference(x, s, z, dtype, axis, ScaleMath.DIVIDE)
        mask = reference_mask(x, s, z, dtype, axis, ScaleMath.DIVIDE)
        xa = x.clone().requires_grad_(True)
        out = native.fake_quant_ste(xa, s, z, dtype, axis, False)
        assert out is not None and out.grad_fn is not None
        g = torch.randn(shape, dtype=dtype_x)
        out.backward(g)
        assert_same(out.detach(), ref, f"{dtype} forward")
        assert_same(xa.grad, g * mask.to(dtype_x), f"{dtype} gradient")
        # a non-contiguous incoming gradient takes grad * mask in C++: same bits
        xb = x.clone().requires_grad_(True)
        gt = g.transpose(0, 2).contiguous().transpose(0, 2)
        native.fake_quant_ste(xb, s, z, dtype, axis, False).backward(gt)
        assert_same(xb.grad, g * mask.to(dtype_x), f"{dtype} gradient (strided)")


@pytest.mark.parametrize("shape", [(16, 24, 16, 16), (3, 5, 2, 2), (2, 3, 1000), (1, 4, 129, 130),
                                   (64, 2, 3, 3), (2, 8, 1 << 17)])
def test_division_backward_sums_in_torch_sums_order(shape):
    """``div_channel_backward_sum`` (the channel division's backward without a product tensor)
    against ``torch.sum`` of the products, bit for bit: rows shorter than a vector, with every
    kind of tail, and long enough for several cascade levels, split across threads."""
    lanes = native._State.sum_lanes if native.available() else 0
    if not lanes:
        pytest.skip("torch.sum's order is not reproduced on this machine (the kernel is off)")
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(shape, generator=gen) * torch.rand(shape, generator=gen).pow(6) * 100
    out = torch.randn(shape, generator=gen) * 30
    d = torch.rand(shape[1], generator=gen) + 0.1
    d[1] = -d[1]
    dv = d.reshape((1, -1) + (1,) * (len(shape) - 2))
    inner = g[0, 0].numel()
    gy, gd = torch.ops.fxquant_native.div_channel_backward_sum(g, out, d, inner, lanes)
    assert_same(gy, g / dv, "grad / d")
    assert_same(gd, ((out / dv) * g).sum([0, *range(2, len(shape))]), "the sum")


@pytest.mark.parametrize("summed", [True, False], ids=["torch-sum-order", "product-tensor"])
def test_channel_divide_operator_matches_autograd(summed):
    """The C++ division operator against autograd's division, values and both gradients; with
    the reduction in torch.sum's order (where the self-check enabled it) and with the product
    tensor and torch.sum it falls back to."""
    lanes = native._State.sum_lanes
    if summed and not lanes:
        pytest.skip("torch.sum's order is not reproduced on this machine")
    previous = torch.ops.fxquant_native.set_sum_lanes(lanes if summed else 0)
    try:
        _channel_divide_matches_autograd()
    finally:
        torch.ops.fxquant_native.set_sum_lanes(previous)


def _channel_divide_matches_autograd():
    for shape in ((4, 3, 5, 6), (1, 3, 5, 6), (2, 3, 1, 1), (2, 3, 7), (8, 16, 32, 32),
                  (2, 4, 70, 70)):
        y = torch.randn(shape) * 50
        d = torch.tensor([0.25, -3.0, 7e-4]).repeat(6)[:shape[1]]
        d = d.reshape(1, -1, *([1] * (len(shape) - 2)))
        g = torch.randn(shape)
        results = []
        for fn in (native.channel_divide, torch.div):
            ya, da = y.clone().requires_grad_(True), d.clone().requires_grad_(True)
            out = fn(ya, da)
            out.backward(g)
            results.append((out.detach(), ya.grad, da.grad))
        for a, b in zip(*results, strict=True):
            assert_same(a, b, str(shape))
    assert native.channel_divide(torch.randn(2, 3, 4), torch.ones(3)) is None  # not [1, C, 1]


def test_traced_and_subclassed_tensors_take_the_pure_torch_path():
    """torch.jit.trace sees ordinary operators; tensor subclasses (fake tensors of
    torch.export / torch.compile) are never handed to the kernels."""
    from fxquant.fake_quant import FakeQuantize

    fq = FakeQuantize()
    fq(torch.randn(64))  # QAT: calibrates
    traced = torch.jit.trace(fq.eval(), torch.randn(64), check_trace=False)
    assert "fxquant_native" not in str(traced.graph)

    class Sub(torch.Tensor):
        pass

    x = torch.randn(64).as_subclass(Sub)
    s, z = torch.tensor(0.1), torch.tensor(0, dtype=torch.int32)
    assert native.fake_quant(x, s, z, qint8, None, False, True) is None
    assert native.fake_quant(x.as_subclass(torch.Tensor), s, z, qint8, None, False, True)


def test_double_backward_takes_differentiable_operations():
    """create_graph=True: the first gradient stays differentiable, as with the Python path."""
    from fxquant.numerics import fake_quantize_ste

    x = torch.randn(4, 6) * 2
    s, z = torch.tensor(0.1), torch.tensor(0, dtype=torch.int32)
    results = []
    for on in (True, False):
        xa = x.clone().requires_grad_(True)
        w = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
        with native.native_kernels(on):
            y = fake_quantize_ste(xa, s, z, qint8)
            (gx,) = torch.autograd.grad((y * w).sum(), xa, create_graph=True)
            gx.square().sum().backward()
        results.append((gx.detach(), w.grad))
    assert_same(results[0][0], results[1][0], "first gradient")
    assert_same(results[0][1], results[1][1], "second-order gradient")


# -- the runtime simulation's element-wise arithmetic ------------------------------------------
_R = 1.5 * 2.0**23


def _reference_scale_round(x, mult, add, post, bounds=None):
    """The torch operations the kernel fuses (:func:`fxquant.runtime_math.ort.round_` ...)."""
    v = (x * mult).add_(_R).sub_(_R)
    if bounds is not None:
        v.clamp_(*bounds)
    if add is not None:
        v.add_(add)
    return v.mul_(post) if post is not None else v


@pytest.mark.parametrize("layout", ["tensor", "middle", "last"])
def test_scale_round_is_the_torch_operations_bit_for_bit(layout):
    gen = torch.Generator().manual_seed(3)
    ties = torch.arange(-3000.0, 3000.0, 0.25)  # x * 1, 0.5, 0.25: exact ties and neighbours
    base = torch.cat([ties, torch.nextafter(ties, torch.tensor(1e9)),
                      torch.randn(200_000, generator=gen) * 3e4,
                      torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"),
                                    2.0**22, -(2.0**22) - 1.5, 3e38])])
    n = base.numel() // 60 * 60
    if layout == "tensor":
        x, mult, inner, view = base[:n], torch.tensor(0.5), 1, torch.tensor(0.5)
    elif layout == "middle":  # conv output [N, C, H*W]: one multiplier per channel
        x = base[:n].reshape(-1, 6, 10)
        mult = torch.tensor([0.3, 0.25, 2.5, 1.0, 0.5, 0.0123])
        inner, view = 10, mult.reshape(-1, 1)
    else:  # linear output [..., C]
        x = base[:n].reshape(-1, 6)
        mult = torch.tensor([0.3, 0.25, 2.5, 1.0, 0.5, 0.0123])
        inner, view = 1, mult
    for add, post, bounds in ((None, None, None), (128.0, None, None), (None, 0.0173, None),
                              (-3.0, 2.0**-7, None), (None, 0.0173, (-128.0, 127.0)),
                              (5.0, None, (0.0, 65535.0))):
        want = _reference_scale_round(x, view, add, post, bounds)
        got = native.scale_round(x, mult, inner, add=add, post=post, bounds=bounds)
        assert got is not None
        assert_same(got, want, f"scale_round {layout} add={add} post={post} bounds={bounds}")
        inplace = x.clone()
        assert native.scale_round(inplace, mult, inner, add=add, post=post, out=inplace,
                                  bounds=bounds) is inplace
        assert_same(inplace, want, f"scale_round in place {layout}")


def test_scale_round_declines_what_it_does_not_cover():
    x = torch.randn(4, 6)
    m = torch.tensor(0.5)
    assert native.scale_round(x.t(), m) is None  # not contiguous
    assert native.scale_round(x.double(), m) is None
    assert native.scale_round(x, torch.ones(5)) is None  # 5 multipliers, 6 channels
    assert native.scale_round(x, m, out=torch.empty(6, 4)) is None
    with native.native_kernels(False):
        assert native.scale_round(x, m) is None


def test_grid_lookup_is_the_gather_on_the_grid_and_declines_off_it():
    gen = torch.Generator().manual_seed(4)
    for qmin, qmax, zp, s in ((0, 255, 37, 0.0421), (-128, 127, 0, 0.5), (-32768, 32767, 11,
                                                                          1e-3)):
        scale = torch.tensor(s)
        grid = torch.arange(qmin, qmax + 1, dtype=torch.float32).sub_(zp).mul_(scale)
        table = torch.sigmoid(grid * 1.7) - 0.25
        idx = torch.randint(0, qmax - qmin + 1, (300_001,), generator=gen)
        x = grid[idx]
        got = native.grid_lookup(x, scale, zp, qmin, qmax, table)
        assert got is not None
        assert_same(got, table[idx], f"grid_lookup [{qmin}, {qmax}]")
        for bad in (float(torch.nextafter(x[5], torch.tensor(1e9))), float("nan"),
                    float(grid[-1]) + s, float("inf")):
            off = x.clone()
            off[123_456] = bad
            assert native.grid_lookup(off, scale, zp, qmin, qmax, table) is None, bad
    assert native.grid_lookup(x.double(), scale, zp, qmin, qmax, table) is None
    assert native.grid_lookup(x, scale, zp, qmin, qmax, table[:-1]) is None


def test_same_bytes_compares_bytes_dtype_and_shape_in_one_call():
    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.why_unavailable()}")
    w = torch.randn(33, 7)
    changed = w.clone()
    changed[5, 6] = torch.nextafter(changed[5, 6], torch.tensor(1e9))  # one ulp, one element
    assert native.same_bytes([w, None, torch.tensor(3)], [w.clone(), None, torch.tensor(3)])
    assert native.same_bytes([w], [changed]) is False
    assert native.same_bytes([w], [w.double()]) is False
    assert native.same_bytes([w], [w.reshape(7, 33)]) is False
    assert native.same_bytes([w, None], [w, w]) is False
    nan = torch.tensor([float("nan")])
    assert native.same_bytes([nan], [nan.clone()])  # the same bytes: a NaN weight holds
    assert native.same_bytes([torch.tensor([0.0])], [torch.tensor([-0.0])]) is False
    assert native.same_bytes([w.t()], [w.t()]) is None  # not contiguous: the caller compares
    with native.native_kernels(False):
        assert native.same_bytes([w], [w]) is None


def test_same_bytes_splits_large_tensors_across_threads_and_sees_any_chunk():
    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.why_unavailable()}")
    big = torch.randn(3, 1 << 19)  # 6 MiB: compared in chunks by several threads
    assert native.same_bytes([big], [big.clone()])
    for i in (0, (1 << 18) + 5, big.numel() - 1):  # first, middle and last chunk
        changed = big.clone()
        changed.view(-1)[i] += 1.0
        assert native.same_bytes([big], [changed]) is False, i


def test_mlas_logistic_declines_what_it_does_not_cover():
    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.why_unavailable()}")
    coeffs = torch.ones(11)
    x = torch.randn(6, 4)
    assert native.mlas_logistic(x.t(), coeffs, False) is None
    assert native.mlas_logistic(x.double(), coeffs, False) is None
    got = native.mlas_logistic(x, coeffs, True)
    assert got is not None and got.shape == x.shape


def test_per_tensor_fake_quant_of_a_transposed_view_keeps_its_layout_and_bits():
    """A dense, non-contiguous activation (attention's transposed q / k) takes the one-pass
    kernel in storage order; output, mask and gradient -- values and strides -- are those of
    the pure-torch path, including a gradient that arrives in yet another layout."""
    from fxquant.numerics import fake_quantize_ste

    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.why_unavailable()}")
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 6, 5, 3, generator=gen) * 3).transpose(1, 2)  # dense, not contiguous
    s, zp = torch.tensor(0.05), torch.tensor(3, dtype=torch.int32)
    got = native.fake_quant(x, s, zp, qint8, None, False, True)
    assert got is not None
    out, mask = got
    assert out.stride() == x.stride() and mask.stride() == x.stride()
    assert_same(out, fake_quantize_reference(x, s, zp, qint8), "transposed view")
    assert torch.equal(mask, reference_mask(x, s, zp, qint8, None, ScaleMath.DIVIDE))
    assert native.fake_quant(x[:, ::2], s, zp, qint8, None, False, False) is None  # gaps
    g = torch.randn(4, 5, 6, 3, generator=gen).transpose(1, 3).contiguous().transpose(1, 3)
    results = []
    for on in (True, False):
        xi = x.detach().clone().requires_grad_()  # clone keeps the transposed layout
        with native.native_kernels(on):
            y = fake_quantize_ste(xi, s, zp, qint8)
            y.backward(g)
        results.append((y.detach(), xi.grad))
    (y_n, g_n), (y_t, g_t) = results
    assert_same(y_n, y_t, "forward") and y_n.stride() == y_t.stride()
    assert_same(g_n, g_t, "backward")
    assert g_n.stride() == g_t.stride()


def _observed_range_cases():
    gen = torch.Generator().manual_seed(11)
    for n in (1, 7, 15, 16, 17, 31, 63, 64, 65, 127, 128, 1000, 4097, 70001):
        base = torch.randn(n, generator=gen) * 3
        pos = int(torch.randint(0, n, (), generator=gen))
        yield n, "plain", base
        yield n, "relu", base.clamp(min=0.0)  # a +0.0 minimum
        for name, value in (("nan", float("nan")), ("-0.0", -0.0), ("inf", float("inf"))):
            x = base.clamp(min=0.0) if name == "-0.0" else base.clone()
            x[pos] = value
            yield n, name, x


def test_per_tensor_observation_matches_the_pure_torch_observers():
    """A quantizer's native observation (range in one vectorised pass, statistics and qparams
    on plain values) against its pure-torch twin: running min-max in CALIBRATION and the
    moving average in QAT, over rows of every length the vector loops split differently, with
    a NaN, a -0.0 or an inf at a random place (those go to the ATen path)."""
    from fxquant.fake_quant import FakeQuantize
    from fxquant.fake_quant.state import FakeQuantState
    from fxquant.observers import MinMaxObserver, MovingAverageMinMaxObserver

    for observer, state in ((MinMaxObserver, FakeQuantState.CALIBRATION),
                            (MovingAverageMinMaxObserver, FakeQuantState.QAT)):
        for symmetric in (True, False):
            pair = []
            for on in (True, False):
                fq = FakeQuantize(observer=observer, symmetric=symmetric)
                fq.set_state(state)
                pair.append((on, fq))
            for n, name, x in _observed_range_cases():
                outs = []
                for on, fq in pair:
                    with native.native_kernels(on):
                        try:
                            outs.append(("ok", fq(x.clone())))
                        except Exception as exc:  # a NaN / inf range: the same refusal
                            outs.append((type(exc).__name__, None))
                assert outs[0][0] == outs[1][0], (n, name)
                what = f"{observer.__name__} symmetric={symmetric} n={n} {name}"
                if outs[0][1] is not None:
                    assert_same(outs[0][1], outs[1][1], what + " output")
                (_, a), (_, b) = pair
                for buf in ("min_val", "max_val"):
                    assert_same(getattr(a.observer, buf), getattr(b.observer, buf), what + buf)
                assert_same(a.scale, b.scale, what + " scale")
                assert torch.equal(a.zero_point, b.zero_point), what
