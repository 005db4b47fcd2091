"""Histogram observers and the range searches behind them.

* The streaming histogram is exact: any batch split / order gives bit-identical buffers and
  ranges, and it equals a direct histogram of all the data at the final ``R``.
* Percentile within one bin of ``numpy.percentile``; entropy equal to a loop transcription of
  TensorRT's calibration (``pytorch_quantization``'s ``_compute_amax_entropy``); MSE equal
  (within one bin) to a brute-force search of fake-quant MSE on the raw data.
* Entropy / MSE clip a few outliers and beat min-max in fake-quant MSE; uniform data keeps its
  range.
* Per channel equals per tensor channel by channel; state_dict round trips; NaN / Inf raise.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from fxquant.numerics import QDType, choose_qparams, fake_quantize, qint4, qint8, quint8
from fxquant.numerics.range_search import (
    RangeMethod,
    entropy_range,
    mse_range,
    percentile_range,
    search_range,
)
from fxquant.observers import (
    HistogramObserver,
    MinMaxObserver,
    MSEObserver,
    ObserverError,
    PercentileObserver,
)

METHODS = list(RangeMethod)
DTYPES = [(qint8, True), (quint8, False), (quint8, True), (qint8, False), (qint4, True)]


def _observe_all(obs, chunks):
    for c in chunks:
        obs(c)
    return obs


def _ranges(obs):
    return [obs.compute_range(dt, sym) for dt, sym in DTYPES]


def _assert_same_state(a, b):
    for name in ("hist", "range_exp", "min_val", "max_val"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def _fq_mse(x, lo, hi, dtype, symmetric):
    scale, zp = choose_qparams(lo, hi, dtype, symmetric)
    return float(((fake_quantize(x, scale, zp, dtype) - x) ** 2).mean())


def _heavy_data(n=20_000):
    """Mixed magnitudes (so R grows across batches), exact powers of two, zeros, tiny values."""
    x = torch.cat(
        [
            torch.randn(n) * torch.logspace(-3, 2, n),
            # subnormals: x * 2**shift underflows to -0.0 when R grows large (bins=16)
            torch.tensor(
                [1.0, -1.0, 0.5, -2.0, 64.0, -64.0, 0.0, 0.0, -1e-30, 1e-30, -1e-45, 1e-45]
            ),
        ]
    )
    return x[torch.randperm(len(x))]


# ---------------------------------------------------------------------------------------------
# construction


def test_method_strings_and_errors():
    assert HistogramObserver("MSE").method is RangeMethod.MSE
    assert HistogramObserver(RangeMethod.PERCENTILE).method is RangeMethod.PERCENTILE
    assert HistogramObserver().method is RangeMethod.ENTROPY
    assert PercentileObserver(99.9).percentile == 99.9
    assert MSEObserver().method is RangeMethod.MSE
    with pytest.raises(ValueError, match="'percentile', 'mse', 'entropy'"):
        HistogramObserver("kl")
    with pytest.raises(ValueError, match="power of two"):
        HistogramObserver(bins=1000)
    with pytest.raises(ValueError, match="percentile"):
        PercentileObserver(percentile=0.0)
    factory = PercentileObserver.with_args(percentile=99.0, bins=256)
    obs = factory()
    assert (obs.percentile, obs.bins, obs.method) == (99.0, 256, RangeMethod.PERCENTILE)


# ---------------------------------------------------------------------------------------------
# exact streaming histogram


@pytest.mark.parametrize("ch_axis", [None, 1])
def test_batch_split_and_order_are_bit_identical(ch_axis):
    x = _heavy_data()
    if ch_axis is not None:
        x = x[: len(x) // 3 * 3].reshape(-1, 3) * torch.tensor([1.0, 1e-3, 40.0])
    ref = _observe_all(HistogramObserver(ch_axis=ch_axis), [x])
    n = x.shape[0]
    by_magnitude = x[x.abs().reshape(n, -1).amax(1).argsort()]  # R grows at almost every batch
    cuts = sorted(torch.randint(1, n, (40,)).tolist())
    splits = {
        "equal": list(x.split(1000)),
        "single rows": [*x[:300].split(1), x[300:]],
        "uneven": list(torch.tensor_split(x, cuts)),
        "shuffled": list(x[torch.randperm(n)].split(777)),
        "growing": list(by_magnitude.split(500)),
    }
    for name, chunks in splits.items():
        obs = _observe_all(HistogramObserver(ch_axis=ch_axis), chunks)
        _assert_same_state(obs, ref)
        for method in METHODS:
            obs.method = ref.method = method
            for (lo, hi), (rlo, rhi) in zip(_ranges(obs), _ranges(ref), strict=True):
                assert torch.equal(lo, rlo) and torch.equal(hi, rhi), (name, method)


def _direct_histogram(x: np.ndarray, exp: int, bins: int) -> np.ndarray:
    idx = np.floor(x.astype(np.float64) * (bins // 2) / 2.0**exp).astype(np.int64) + bins // 2
    return np.bincount(idx, minlength=bins)


@pytest.mark.parametrize("bins", [16, 256, 2048])
def test_growth_merge_equals_direct_histogram(bins):
    x = _heavy_data()
    obs = HistogramObserver(bins=bins)
    for chunk in x[x.abs().argsort()].split(997):  # ascending magnitude: grows every time
        obs(chunk)
    amax = float(x.abs().max())
    exp = int(obs.range_exp)
    assert 2.0 ** (exp - 1) <= amax < 2.0**exp
    direct = _direct_histogram(x.numpy(), exp, bins)
    np.testing.assert_array_equal(obs.hist.numpy(), direct)
    assert float(obs.min_val) == float(x.min()) and float(obs.max_val) == float(x.max())
    single = HistogramObserver(bins=bins)
    single(x)  # one batch: the subnormals are scaled down by 2**-6 (bins=16) and underflow
    np.testing.assert_array_equal(single.hist.numpy(), direct)


def test_all_zero_then_data_and_empty_tensor():
    obs = HistogramObserver(bins=64)
    obs(torch.zeros(10))
    assert obs.has_stats()
    lo, hi = obs.compute_range(qint8, True)
    assert float(lo) == 0.0 and float(hi) == 0.0
    obs(torch.tensor([3.0, -0.5]))
    before = {k: v.clone() for k, v in obs.state_dict().items()}
    obs(torch.empty(0, 4))
    for k, v in obs.state_dict().items():
        assert torch.equal(v, before[k])
    np.testing.assert_array_equal(
        obs.hist.numpy(), _direct_histogram(np.array([0.0] * 10 + [3.0, -0.5]), 2, 64)
    )


def test_half_precision_input_matches_float32():
    x = torch.randn(5000).half()
    a = _observe_all(HistogramObserver(), [x])
    b = _observe_all(HistogramObserver(), [x.float()])
    _assert_same_state(a, b)


# ---------------------------------------------------------------------------------------------
# percentile


@pytest.mark.parametrize("percentile", [90.0, 99.0, 99.99, 100.0])
def test_percentile_within_one_bin_of_numpy(percentile):
    x = torch.cat([torch.randn(100_000) * 2 + 0.5, torch.rand(50) * 30])
    obs = PercentileObserver(percentile)
    obs(x)
    width = 2.0 ** int(obs.range_exp) * 2 / obs.bins
    xs = x.double().numpy()
    lo, hi = obs.compute_range(quint8, False)
    assert abs(float(hi) - np.percentile(xs, percentile)) <= width
    assert abs(float(lo) - np.percentile(xs, 100 - percentile)) <= width
    lo, hi = obs.compute_range(qint8, True)
    assert abs(float(hi) - np.percentile(np.abs(xs), percentile)) <= width
    assert float(lo) == -float(hi) or float(lo) == float(obs.min_val)


# ---------------------------------------------------------------------------------------------
# entropy: against a transcription of pytorch_quantization's TensorRT calibration


def _trt_divergences(hist: np.ndarray, num_bits: int, unsigned: bool) -> np.ndarray:
    """``_compute_amax_entropy`` (pytorch_quantization) with scipy's entropy written out.

    Returns the divergence of every candidate ``i`` (index ``i - start``), start = ``nbins``.
    """
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    nbins = 1 << (num_bits - 1 + int(unsigned))
    out = []
    for i in range(nbins, len(bins) + 1):
        space = np.linspace(0, i, num=nbins + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[bins[:i] == 0] = -1
        new_counts = np.zeros(nbins)
        for idx, d in enumerate(digitized):
            if d != -1:
                new_counts[d] += bins[idx]
        for key, val in collections.Counter(digitized).items():
            if key != -1:
                new_counts[key] /= val
        new_density = np.array([new_counts[d] if d != -1 else 0.0 for d in digitized])
        reference = bins[:i].copy()
        reference[-1] += bins[i:].sum()
        p, q = reference / reference.sum(), new_density / new_density.sum()
        if np.any((p > 0) & (q == 0)):
            out.append(np.inf)
        else:
            m = p > 0
            out.append(float(np.sum(p[m] * np.log(p[m] / q[m]))))
    return np.array(out)


@pytest.mark.parametrize("kind", ["gauss", "laplace", "relu", "sparse"])
@pytest.mark.parametrize("unsigned", [False, True])
def test_entropy_matches_tensorrt_reference(kind, unsigned):
    n_bins, num_bits = 600, 7
    x = {
        "gauss": torch.randn(30_000).abs(),
        "laplace": torch.distributions.Laplace(0.0, 1.0).sample((30_000,)).abs(),
        "relu": torch.relu(torch.randn(30_000)),  # spike of zeros in bin 0
        "sparse": torch.randn(300).abs(),  # many empty bins: infinite candidates
    }[kind]
    hist = torch.histc(x, bins=n_bins, min=0.0, max=float(x.max()))
    dtype = QDType(num_bits, False)
    # magnitude histogram (lo = 0): symmetric -> 2**(bits-1) levels, one-sided asymmetric -> 2**bits
    lo, hi = entropy_range(hist, 0.0, 1.0, dtype, symmetric=not unsigned)
    chosen = int(hi)
    div = _trt_divergences(hist.numpy(), num_bits, unsigned)
    start = 1 << (num_bits - 1 + int(unsigned))
    if np.isinf(div).all():
        assert chosen == n_bins
        return
    best = len(div) - 1 - int(np.argmin(div[::-1]))  # TensorRT keeps the last minimum
    assert div[chosen - start] <= div[best] + 1e-12
    assert chosen == best + start
    assert float(lo) == (0.0 if unsigned else -float(hi))


def test_entropy_ignores_relu_zero_spike():
    x = torch.relu(torch.randn(200_000))
    obs = HistogramObserver("entropy")
    obs(x)
    lo, hi = obs.compute_range(quint8, False)
    assert float(lo) == 0.0 and 2.5 < float(hi) <= float(x.max())


# ---------------------------------------------------------------------------------------------
# MSE: against brute force on the raw data


def test_mse_symmetric_matches_brute_force():
    """Brute force over every edge ``amax`` on the raw data.

    The raw-data MSE is jagged at the scale of a bin (rounding noise of a finite sample, about
    0.3% here) while the objective changes by less than that over several bins near its flat
    minimum, so the check is on the MSE reached and on the position within a few bins.
    """
    x = torch.cat([torch.randn(50_000), torch.tensor([9.0, -7.5, 11.0])])
    obs = MSEObserver(bins=1024)
    obs(x)
    width = 2.0 ** int(obs.range_exp) * 2 / obs.bins
    lo, hi = obs.compute_range(qint8, True)
    ks = np.arange(1, obs.bins // 2 + 1)
    errs = [_fq_mse(x, torch.tensor(-k * width), torch.tensor(k * width), qint8, True) for k in ks]
    best = int(np.argmin(errs))
    assert _fq_mse(x, lo, hi, qint8, True) <= errs[best] * 1.005
    assert abs(float(hi) / width - ks[best]) <= 0.05 * ks[best]
    assert float(lo) == max(-float(hi), float(x.min()))  # clipped to the data


def test_mse_asymmetric_matches_brute_force():
    gamma = torch.distributions.Gamma(2.0, 1.5)
    x = torch.cat([gamma.sample((20_000,)) - 0.4, torch.tensor([9.0])])
    obs = MSEObserver(bins=64)
    obs(x)
    _, r, width = obs.histogram()
    r, width = -float(r), float(width)
    lo, hi = obs.compute_range(quint8, False)
    edges = -r + width * np.arange(obs.bins + 1)
    lows = edges[(edges <= 0) & (edges >= float(x.min()) - width)]
    highs = edges[(edges >= 0) & (edges <= float(x.max()) + width)]
    errs = np.array(
        [[_fq_mse(x, torch.tensor(a), torch.tensor(b), quint8, False) for b in highs] for a in lows]
    )
    ia, ib = np.unravel_index(np.argmin(errs), errs.shape)
    assert abs(max(lows[ia], float(x.min())) - float(lo)) <= width
    assert abs(min(highs[ib], float(x.max())) - float(hi)) <= width


def test_mse_coarse_to_fine_is_near_exhaustive():
    """A 2048-bin asymmetric search (~10**5 pairs) against every pair of the same objective."""
    gamma = torch.distributions.Gamma(2.0, 1.5)
    x = torch.cat([gamma.sample((100_000,)) - 1.0, -torch.rand(5) * 4])
    obs = MSEObserver()
    obs(x)
    counts, lo, width = obs.histogram()
    h = obs.hist.double().numpy()
    z = obs.bins // 2
    centers = np.arange(obs.bins) + 0.5
    edges = np.arange(obs.bins + 1)
    steps = quint8.qmax - quint8.qmin
    nonzero = np.nonzero(h)[0]
    a_all = edges[nonzero[0] : z + 1]
    b_all = edges[z : nonzero[-1] + 2]
    left = np.array([np.sum(h[:a] * ((a - centers[:a]) ** 2 + 1 / 12)) for a in a_all])
    right = np.array([np.sum(h[b:] * ((centers[b:] - b) ** 2 + 1 / 12)) for b in b_all])
    cs = np.concatenate([[0.0], np.cumsum(h)])
    inside = cs[b_all][None, :] - cs[a_all][:, None]
    scale = (b_all[None, :] - a_all[:, None]) / steps
    obj = inside * scale**2 / 12 + left[:, None] + right[None, :]
    a, b = search_range("mse", counts, lo, width, quint8, False)
    assert len(a_all) * len(b_all) > 10 * 4096  # the coarse-to-fine path
    ia = round(float(a / width)) + z - a_all[0]
    ib = round(float(b / width)) + z - b_all[0]
    assert obj[ia, ib] <= obj.min() * (1 + 1e-9)


# ---------------------------------------------------------------------------------------------
# behaviour on typical data


@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_outliers_are_clipped_and_beat_minmax(method):
    x = torch.cat([torch.randn(1_000_000), torch.tensor([14.0, -12.0, 13.0])])
    obs = HistogramObserver(method)
    obs(x)
    lo, hi = obs.compute_range(qint8, True)
    assert float(hi) < 0.5 * 14.0 and float(lo) == -float(hi)
    mm = MinMaxObserver()
    mm(x)
    minmax_mse = _fq_mse(x, *mm.compute_range(qint8, True), qint8, True)
    assert _fq_mse(x, lo, hi, qint8, True) < 0.8 * minmax_mse


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype,symmetric", [(qint8, True), (quint8, False)])
def test_uniform_data_keeps_its_range(method, dtype, symmetric):
    x = torch.rand(200_000) * 3.0 - 1.0  # [-1, 2)
    obs = HistogramObserver(method)
    obs(x)
    # MSE's optimum for uniform data clips about range / (2 * steps): ~5 bins here
    tol = 8 * 2.0 ** int(obs.range_exp) * 2 / obs.bins
    lo, hi = obs.compute_range(dtype, symmetric)
    assert float(obs.max_val) - tol <= float(hi) <= float(obs.max_val)
    if not symmetric:
        assert float(obs.min_val) <= float(lo) <= float(obs.min_val) + tol


@pytest.mark.parametrize("method", METHODS)
def test_range_never_exceeds_data(method):
    x = torch.rand(10_000) * 0.3 + 0.6  # all positive: symmetric lo is clipped to the data
    obs = HistogramObserver(method)
    obs(x)
    for dtype, symmetric in DTYPES:
        lo, hi = obs.compute_range(dtype, symmetric)
        assert float(obs.min_val) <= float(lo) <= float(hi) <= float(obs.max_val)
        scale, _ = obs.calculate_qparams(dtype, symmetric)
        assert float(scale) > 0


# ---------------------------------------------------------------------------------------------
# per channel, state, errors


@pytest.mark.parametrize("method", METHODS)
def test_per_channel_matches_per_tensor(method):
    scales = torch.tensor([1.0, 1e-3, 50.0, 0.0, 7.0])  # a dead (all-zero) channel too
    x = torch.randn(64, 5, 30) * scales[:, None]
    x[0, 2, 0] = 900.0  # an outlier in one channel
    pc = HistogramObserver(method, ch_axis=1)
    for chunk in x.split(16):
        pc(chunk)
    for c in range(5):
        pt = HistogramObserver(method)
        for chunk in x.split(16):
            pt(chunk[:, c])
        assert torch.equal(pc.hist[c], pt.hist) and int(pc.range_exp[c]) == int(pt.range_exp)
        for (lo, hi), (rlo, rhi) in zip(_ranges(pc), _ranges(pt), strict=True):
            assert torch.equal(lo[c], rlo) and torch.equal(hi[c], rhi)


@pytest.mark.parametrize("ch_axis", [None, 0])
def test_state_dict_round_trip(ch_axis):
    x = torch.randn(8, 100) * torch.linspace(0.1, 4, 8)[:, None]
    obs = HistogramObserver("mse", bins=512, ch_axis=ch_axis)
    obs(x)
    fresh = HistogramObserver("mse", bins=512, ch_axis=ch_axis)
    fresh.load_state_dict(obs.state_dict())
    _assert_same_state(fresh, obs)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(_ranges(fresh), _ranges(obs), strict=True)
    )
    more = torch.randn(8, 100) * 10
    obs(more)
    fresh(more)
    _assert_same_state(fresh, obs)


def test_state_dict_with_other_bin_count_raises():
    obs = HistogramObserver(bins=512)
    obs(torch.randn(100))
    with pytest.raises(ObserverError, match="bins=512"):
        HistogramObserver(bins=2048).load_state_dict(obs.state_dict())


def test_nan_and_inf_raise_with_name():
    obs = HistogramObserver()
    obs.name = "layer3.conv.input"
    with pytest.raises(ObserverError, match=r"layer3\.conv\.input"):
        obs(torch.tensor([1.0, float("nan")]))
    pc = HistogramObserver(ch_axis=0)
    pc.name = "fc.weight"
    with pytest.raises(ObserverError, match=r"fc\.weight"):
        pc(torch.tensor([[1.0, float("inf")], [0.0, 1.0]]))
    assert not obs.has_stats()
    with pytest.raises(ObserverError, match=r"layer3\.conv\.input"):
        obs.calculate_qparams(qint8, True)


def test_channel_count_change_raises():
    obs = HistogramObserver(ch_axis=0)
    obs(torch.randn(3, 4))
    with pytest.raises(ObserverError, match="channels"):
        obs(torch.randn(4, 4))


# ---------------------------------------------------------------------------------------------
# the pure functions directly


def test_functions_accept_batches_and_check_zero_edge():
    counts = torch.randint(0, 50, (4, 256))
    lo, width = torch.full((4,), -128.0), torch.ones(4)
    for fn in (percentile_range, mse_range, entropy_range):
        rlo, rhi = fn(counts, lo, width, qint8, True)
        assert rlo.shape == rhi.shape == (4,)
        for c in range(4):
            slo, shi = fn(counts[c], -128.0, 1.0, qint8, True)
            assert torch.equal(slo, rlo[c]) and torch.equal(shi, rhi[c])
        with pytest.raises(ValueError, match="zero must lie on a bin edge"):
            fn(counts, -127.5, 1.0, qint8, True)
    with pytest.raises(ValueError, match="valid"):
        search_range("l2", counts, lo, width, qint8, True)


@pytest.mark.parametrize("ch_axis", [None, 1])
def test_native_histogram_gives_the_pure_torch_buffers(ch_axis):
    """Growing ranges (regrid), signed zeros, tiny negatives, float64 and float16 batches."""
    from fxquant.numerics import native

    gen = torch.Generator().manual_seed(5)
    batches = [torch.randn(4, 3, 50, generator=gen) * 10.0**k for k in (-30, -2, 0, 1, 3)]
    batches[1][0, 0, :4] = torch.tensor([0.0, -0.0, -1e-40, 1e-40])
    batches.append(batches[2].double() * 7)
    batches.append(batches[3].half())
    states = []
    for on in (True, False):
        obs = HistogramObserver(bins=256, ch_axis=ch_axis)
        with native.native_kernels(on):
            for b in batches:
                obs(b)
        states.append(obs.state_dict())
    for k, v in states[0].items():
        assert torch.equal(v, states[1][k]), k


def test_one_pass_native_observation_leaves_the_state_of_the_two_pass_path_bit_for_bit():
    """Batches inside the range take one native pass (``histogram_observe``); those it must
    decline (-R itself, -0.0, a value beyond R) take the two-pass path; same bits either way,
    signed zeros of the minimum included."""
    from fxquant.numerics import native

    gen = torch.Generator().manual_seed(7)
    first = torch.randn(64, 8, 9, 9, generator=gen) * 3  # sets R = 16
    relu = torch.relu(torch.randn(64, 8, 9, 9, generator=gen))  # zeros: min exactly +0.0
    edge = torch.randn(64, 8, 9, 9, generator=gen)
    edge[0, 0, 0, :2] = torch.tensor([-16.0, 15.999])  # -R: the range must grow
    negz = torch.randn(64, 8, 9, 9, generator=gen).clamp(max=0.0)
    negz[1, 1, 1, 1] = -0.0
    batches = [first, relu, first * 0.5, edge, negz, relu * 20, first[:, :, :3]]
    states = []
    for on in (True, False):
        obs = HistogramObserver(bins=512)
        with native.native_kernels(on):
            for b in batches:
                obs(b.contiguous())
        states.append(obs.state_dict())
    for k, v in states[0].items():
        w = states[1][k]
        if v.is_floating_point():
            v, w = v.view(torch.int32), w.view(torch.int32)  # -0.0 and 0.0 differ here
        assert torch.equal(v, w), k
    if native.available():  # the one-pass kernel took the in-range batches
        obs = HistogramObserver(bins=512)
        obs(first)
        assert native.histogram_observe(relu, obs.hist, obs.range_exp, obs.min_val, obs.max_val)
        assert not native.histogram_observe(edge, obs.hist, obs.range_exp, obs.min_val,
                                            obs.max_val)
