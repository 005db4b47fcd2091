"""ConvBn1d/2d/3d: folded evaluation, training statistics, zero-gamma stability, round trips.

Tolerances.  Comparisons with a separately computed *quantized* reference are bit-exact.
Comparisons with a float ``conv -> bn`` reference use ``rtol = 1e-5`` and an absolute floor of
``1e-5 * max|reference|``: ConvBn evaluates ``conv(x, w * sf) / sf + b`` where the reference
evaluates ``conv(x, w) + b`` (and folding evaluates ``(b - mean) * sf + beta`` instead of
``(y - mean) / std * gamma + beta``).  Every reassociated float32 operation costs up to half an
ulp (6e-8 relative) per element, and the conv's sums turn that into an error relative to
``sum |terms|`` rather than to the (possibly cancelling) result, so a few dozen ulps of the
tensor's scale is the honest bound; 1e-5 leaves a safe margin above it, far below any bug.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fxquant.fake_quant import FakeQuantize, FakeQuantState
from fxquant.nn import (
    CONV_TO_CONV_BN,
    MIN_SCALE,
    WEIGHT_AXIS,
    ConvBn1d,
    ConvBn2d,
    ConvBn3d,
    ConvBnNd,
    fold_bn_weights,
)
from fxquant.numerics import fake_quantize, qint8

BN_FOR = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def assert_float_close(actual, expected):
    """Equal up to float32 reassociation error (see module docstring)."""
    atol = 1e-5 * float(expected.detach().abs().max()) + 1e-12
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=atol)


def _randomize_bn(bn):
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 1.5)
        if bn.bias is not None:
            bn.bias.uniform_(-0.5, 0.5)
    return bn


def _float_pair(dims=2, groups=1, bias=True, padding_mode="zeros", **bn_kwargs):
    conv_cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    conv = conv_cls(4, 6, 3, padding=1, groups=groups, bias=bias, padding_mode=padding_mode)
    bn = BN_FOR[dims](6, **bn_kwargs)
    if bn.track_running_stats:
        _randomize_bn(bn)
    x = torch.randn(4, 4, *([6] * dims))
    return conv, bn, x


def _conv_bn(conv, bn, fq=None):
    cls = CONV_TO_CONV_BN[type(conv)]
    return cls.from_float(copy.deepcopy(conv), copy.deepcopy(bn), fq)


def _loss(out):
    """A fixed random projection of the output.

    (``out.square().mean()`` would be a poor probe: BN makes it nearly invariant to the conv
    weight, so its weight gradient is a tiny difference of large terms.)
    """
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return (out * r).sum()


def _weight_fq():
    return FakeQuantize(ch_axis=0, is_weight=True)


def _sf(bn):
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    return gamma / torch.sqrt(bn.running_var + bn.eps)


def test_tables():
    assert CONV_TO_CONV_BN == {nn.Conv1d: ConvBn1d, nn.Conv2d: ConvBn2d, nn.Conv3d: ConvBn3d}
    for cls in CONV_TO_CONV_BN.values():
        assert issubclass(cls, ConvBnNd) and WEIGHT_AXIS[cls] == 0


# -- evaluation: folded ---------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_eval_output_is_conv_of_fake_quantized_folded_weight(dims):
    conv, bn, x = _float_pair(dims)
    m = _conv_bn(conv, bn, _weight_fq()).eval()
    out = m(x)
    sf = _sf(bn).detach()
    w_fold = conv.weight.detach() * sf.reshape(-1, *([1] * (dims + 1)))
    b_fold = bn.bias.detach() + (conv.bias.detach() - bn.running_mean) * sf
    fq = m.weight_fake_quant
    amax = w_fold.abs().amax(dim=tuple(range(1, dims + 2))).double()
    assert torch.equal(fq.scale, (amax / 127).float())
    w_q = fake_quantize(w_fold, fq.scale, fq.zero_point, qint8, 0)
    conv_fn = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    assert torch.equal(out, conv_fn(x, w_q, b_fold, padding=1))
    # and without a quantizer it is the float conv -> bn in eval mode
    plain = _conv_bn(conv, bn).eval()
    assert_float_close(plain(x), bn.eval()(conv(x)))


def test_folded_weight_and_bias_and_to_float():
    conv, bn, x = _float_pair(groups=2, padding_mode="reflect")
    m = _conv_bn(conv, bn).eval()
    w, b = m.folded_weight_and_bias()
    ref_w, ref_b = fold_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    assert torch.equal(w, ref_w) and torch.equal(b, ref_b)
    f = m.to_float()
    assert type(f) is nn.Conv2d
    assert f.groups == 2 and f.padding_mode == "reflect"
    assert set(f.state_dict()) == {"weight", "bias"}
    assert torch.equal(f.weight, w) and torch.equal(f.bias, b)
    assert f.weight is not m.weight
    assert torch.equal(f(x), m(x))


def test_to_float_without_conv_bias_gains_one():
    conv, bn, x = _float_pair(bias=False)
    m = _conv_bn(conv, bn).eval()
    f = m.to_float()
    assert f.bias is not None
    assert torch.equal(f(x), m(x))
    assert_float_close(f(x), bn.eval()(conv(x)))


# -- training: batch statistics -----------------------------------------------------------------
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("bn_kwargs", [{}, {"momentum": None}, {"affine": False}])
def test_train_matches_float_conv_bn_without_quantizer(dims, bn_kwargs):
    conv, bn, x = _float_pair(dims, **bn_kwargs)
    m = _conv_bn(conv, bn).train()
    conv.train(), bn.train()
    for step in range(3):
        xs = x + step
        out, ref = m(xs), bn(conv(xs))
        assert_float_close(out, ref)
        _loss(out).backward()
        _loss(ref).backward()
    assert_float_close(m.bn.running_mean, bn.running_mean)
    assert_float_close(m.bn.running_var, bn.running_var)
    assert int(m.bn.num_batches_tracked) == int(bn.num_batches_tracked) == 3
    assert_float_close(m.weight.grad, conv.weight.grad)
    # batch-statistics BN removes any per-channel offset: the conv bias gradient is zero up to
    # rounding, in both
    scale = float(m.weight.grad.abs().max())
    assert float(m.bias.grad.abs().max()) < 1e-5 * scale
    assert float(conv.bias.grad.abs().max()) < 1e-5 * scale
    if bn.weight is not None:
        assert_float_close(m.bn.weight.grad, bn.weight.grad)
        assert_float_close(m.bn.bias.grad, bn.bias.grad)


def test_train_with_quantizer_matches_manual_formula():
    conv, bn, x = _float_pair()
    m = _conv_bn(conv, bn, _weight_fq()).train()
    out = m(x)
    sf = _sf(bn).detach()
    w_scaled = conv.weight.detach() * sf.reshape(-1, 1, 1, 1)
    fq = m.weight_fake_quant
    amax = w_scaled.abs().amax(dim=(1, 2, 3)).double()
    assert torch.equal(fq.scale, (amax / 127).float())  # the quantizer saw the folded weight
    y = F.conv2d(x, fake_quantize(w_scaled, fq.scale, fq.zero_point, qint8, 0), padding=1)
    y = y / sf.reshape(1, -1, 1, 1) + conv.bias.detach().reshape(1, -1, 1, 1)
    ref_bn = copy.deepcopy(bn)
    ref = F.batch_norm(
        y, ref_bn.running_mean, ref_bn.running_var, ref_bn.weight, ref_bn.bias, True,
        bn.momentum, bn.eps,
    )
    assert torch.equal(out, ref)
    assert torch.equal(m.bn.running_mean, ref_bn.running_mean)
    assert torch.equal(m.bn.running_var, ref_bn.running_var)


def test_gradients_reach_all_parameters_in_qat():
    conv, bn, x = _float_pair()
    m = _conv_bn(conv, bn, _weight_fq()).train()
    _loss(m(x)).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_frozen_bn_statistics_use_the_folded_path():
    conv, bn, x = _float_pair()
    m = _conv_bn(conv, bn, _weight_fq()).train()
    m.bn.eval()
    mean, var = m.bn.running_mean.clone(), m.bn.running_var.clone()
    out = m(x)
    assert torch.equal(m.bn.running_mean, mean) and torch.equal(m.bn.running_var, var)
    w, b = m.folded_weight_and_bias()
    assert torch.equal(out, F.conv2d(x, m.weight_fake_quant(w.detach()), b, padding=1))
    _loss(out).backward()
    assert m.weight.grad.abs().sum() > 0 and m.bn.weight.grad.abs().sum() > 0


# -- zero / vanishing BN weight ------------------------------------------------------------------
ZERO_GAMMA_CASES = {
    "dense": {},
    "grouped": {"groups": 2},
    "depthwise_like": {"groups": 2, "padding_mode": "circular"},
    "conv1d": {"dims": 1},
    "conv3d_nobias": {"dims": 3, "bias": False},
}


@pytest.mark.parametrize("case", sorted(ZERO_GAMMA_CASES))
@pytest.mark.parametrize("quantized", [False, True], ids=["float", "qat"])
def test_zero_bn_weight_is_stable(case, quantized):
    conv, bn, x = _float_pair(**ZERO_GAMMA_CASES[case])
    with torch.no_grad():
        bn.weight[[0, 3]] = 0.0
        bn.weight[4] = 1e-30  # tiny, below MIN_SCALE as well
    assert (_sf(bn).abs() < MIN_SCALE).tolist() == [True, False, False, True, True, False]
    m = _conv_bn(conv, bn, _weight_fq() if quantized else None).train()
    conv.train(), bn.train()
    for step in range(2):
        xs = x * (step + 1)
        out, ref = m(xs), bn(conv(xs))
        assert torch.isfinite(out).all()
        _loss(out).backward()
        _loss(ref).backward()
    for name, p in m.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    # the zero-gamma channels still get a gradient and can revive
    assert (m.bn.weight.grad[[0, 3, 4]] != 0).all()
    # their statistics come from the float conv, so they match the float reference
    tiny = [0, 3, 4]
    channels = tiny if quantized else slice(None)
    assert_float_close(m.bn.running_mean[channels], bn.running_mean[channels])
    assert_float_close(m.bn.running_var[channels], bn.running_var[channels])
    assert_float_close(m.bn.weight.grad[channels], bn.weight.grad[channels])
    if not quantized:
        assert_float_close(out, ref)
        assert_float_close(m.weight.grad, conv.weight.grad)
    # the folded (deployed) channel is the constant beta
    m.eval()
    out = m(x)
    for c in (0, 3):
        torch.testing.assert_close(out[:, c], torch.full_like(out[:, c], bn.bias[c].item()))


# -- construction and persistence ---------------------------------------------------------------
def test_state_dict_round_trip_after_qat():
    conv, bn, x = _float_pair()
    m = _conv_bn(conv, bn, _weight_fq()).train()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for step in range(3):
        opt.zero_grad()
        _loss(m(x + step)).backward()
        opt.step()
    sd = m.state_dict()
    assert {"weight", "bias", "bn.weight", "bn.running_var", "weight_fake_quant.scale"} <= set(sd)
    conv2, bn2, _ = _float_pair()
    fresh = _conv_bn(conv2, bn2, _weight_fq())
    fresh.load_state_dict(sd)
    for mod in (m, fresh):
        mod.eval()
        mod.weight_fake_quant.set_state(FakeQuantState.VALIDATION)
    assert torch.equal(fresh(x), m(x))
    assert torch.equal(fresh.to_float().weight, m.to_float().weight)


def test_from_float_shares_parameters():
    conv, bn, _ = _float_pair()
    m = ConvBn2d.from_float(conv, bn, None)
    assert m.weight is conv.weight and m.bias is conv.bias and m.bn is bn
    assert m.weight_fake_quant is None


def test_direct_construction_equals_from_float():
    m = ConvBn3d(2, 4, 3, padding=1, bias=False, eps=1e-3, momentum=0.3, affine=False)
    assert type(m.bn) is nn.BatchNorm3d and m.bn.eps == 1e-3 and m.bn.momentum == 0.3
    assert m.bn.weight is None and m.weight_fake_quant is None
    conv = nn.Conv3d(2, 4, 3, padding=1, bias=False)
    ref = ConvBn3d.from_float(conv, nn.BatchNorm3d(4, eps=1e-3, momentum=0.3, affine=False))
    assert set(m.state_dict()) == set(ref.state_dict())
    m.load_state_dict(ref.state_dict())
    x = torch.randn(2, 2, 4, 4, 4)
    assert torch.equal(m.train()(x), ref.train()(x))


def test_from_float_errors_name_the_module():
    conv, _, _ = _float_pair()
    with pytest.raises(ValueError, match=r"BatchNorm2d\(6.*track_running_stats=False"):
        ConvBn2d.from_float(conv, nn.BatchNorm2d(6, track_running_stats=False))
    with pytest.raises(TypeError, match="expects a BatchNorm2d"):
        ConvBn2d.from_float(conv, nn.BatchNorm1d(6))
    with pytest.raises(ValueError, match="5 features"):
        ConvBn2d.from_float(conv, nn.BatchNorm2d(5))
    with pytest.raises(TypeError, match="expects a Conv1d"):
        ConvBn1d.from_float(conv, nn.BatchNorm1d(6))
    with pytest.raises(ValueError, match="batched 4D"):
        ConvBn2d.from_float(conv, nn.BatchNorm2d(6)).train()(torch.randn(4, 6, 6))


# -- the BN-fold division: two backward passes, autograd's bits --------------------------------
def _bits(t):
    return t.detach().contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


@pytest.mark.parametrize(
    "shape", [(4, 6, 5, 5), (1, 6, 5, 5), (3, 6, 1, 1), (2, 6, 9), (2, 6, 2, 3, 2)]
)
@pytest.mark.parametrize("native_on", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channel_divide_matches_autograd_bit_for_bit(shape, native_on, dtype):
    from fxquant.nn.conv_bn import _ChannelDivide
    from fxquant.numerics import native

    y = torch.randn(shape, dtype=dtype) * 100
    signs = torch.tensor([1, -1] * (shape[1] // 2), dtype=dtype)
    d = (torch.rand(shape[1], dtype=dtype) + 0.1) * signs
    g = torch.randn(shape, dtype=dtype)
    dshape = (1, -1) + (1,) * (len(shape) - 2)
    grads = []
    for custom in (False, True):
        yy, dd = y.clone().requires_grad_(), d.clone().requires_grad_()
        with native.native_kernels(native_on):
            db = dd.reshape(dshape)
            out = _ChannelDivide.apply(yy, db) if custom else yy / db
            out.backward(g)
        grads.append((out, yy.grad, dd.grad))
    for a, b in zip(*grads, strict=True):
        assert torch.equal(_bits(a), _bits(b))
    # only y needs a gradient (frozen gamma): no d gradient is computed
    yy = y.clone().requires_grad_()
    _ChannelDivide.apply(yy, d.reshape(dshape)).backward(g)
    assert torch.equal(_bits(yy.grad), _bits(grads[0][1]))


def test_qat_training_is_bit_identical_with_and_without_native_kernels():
    """A few fold-aware QAT steps: weights, BN statistics and scales agree to the last bit."""
    from fxquant.numerics import native

    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1), _randomize_bn(nn.BatchNorm2d(8))
    x, target = torch.randn(6, 3, 7, 7), torch.randn(6, 8, 7, 7)
    results = []
    for on in (True, False):
        m = ConvBn2d.from_float(copy.deepcopy(conv), copy.deepcopy(bn),
                                FakeQuantize(ch_axis=0, is_weight=True)).train()
        act = FakeQuantize()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        with native.native_kernels(on):
            for _ in range(4):
                loss = (act(m(x)) - target).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        results.append({**m.state_dict(), **{f"act.{k}": v for k, v in act.state_dict().items()}})
    assert results[0].keys() == results[1].keys()
    for k in results[0]:
        a, b = results[0][k], results[1][k]
        assert torch.equal(a, b), k
        assert not a.is_floating_point() or torch.equal(_bits(a), _bits(b)), k


def _settled_conv_bn() -> ConvBn2d:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
    bn.train()
    with torch.no_grad():
        bn(conv(torch.randn(4, 3, 6, 6)))
    m = ConvBn2d.from_float(conv, bn, FakeQuantize(ch_axis=0, is_weight=True))
    m.weight_fake_quant.set_state(FakeQuantState.CALIBRATION)
    return m.eval()


def test_eval_under_no_grad_keeps_the_folded_weight_while_its_sources_hold():
    m = _settled_conv_bn()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        first = m._folded_eval()
        again = m._folded_eval()
        assert again[0] is first[0] and again[1] is first[1]  # kept, not recomputed
        assert torch.equal(m(x), m(x))
        for change in (lambda: m.weight.mul_(1.5), lambda: m.bn.running_var.add_(0.25),
                       lambda: m.bn.weight.neg_(), lambda: m.bias.add_(1.0)):
            change()  # in place: the same tensors, other bytes
            got = m._folded_eval()
            want = m.folded_weight_and_bias()
            assert got[0] is not first[0]
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
            first = got
        m.load_state_dict({k: v + 1 for k, v in m.state_dict().items()
                           if v.is_floating_point()}, strict=False)
        assert torch.equal(m._folded_eval()[0], m.folded_weight_and_bias()[0])
    w, _ = m._folded_eval()  # with grad: differentiable, never the kept pair
    assert w.requires_grad and w is not first[0]
    assert "_kept_fold" not in vars(m.to_float())


def test_calibration_with_kept_weights_observes_exactly_what_observing_every_call_does():
    torch.manual_seed(1)
    x = [torch.randn(2, 3, 6, 6) for _ in range(3)]
    kept, plain = _settled_conv_bn(), _settled_conv_bn()
    with torch.no_grad():
        for xb in x:
            kept(xb)
    with torch.enable_grad():  # no kept values: every call folds and observes again
        for xb in x:
            plain(xb)
    for name in ("min_val", "max_val"):
        a = getattr(kept.weight_fake_quant.observer, name)
        b = getattr(plain.weight_fake_quant.observer, name)
        assert torch.equal(a, b), name
    # the weight changes in place mid-calibration: the new range is taken in
    obs = kept.weight_fake_quant.observer
    with torch.no_grad():
        kept.weight.mul_(3.0)
        kept(x[0])
        assert torch.equal(obs.max_val, torch.maximum(
            plain.weight_fake_quant.observer.max_val,
            kept.folded_weight_and_bias()[0].flatten(1).amax(1)))
        obs.reset()  # a reset observer observes again
        kept(x[0])
        assert torch.equal(obs.max_val, kept.folded_weight_and_bias()[0].flatten(1).amax(1))
