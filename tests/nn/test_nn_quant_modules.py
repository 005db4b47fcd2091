"""QuantConv*/QuantConvTranspose*/QuantLinear/QuantEmbedding against the torch float modules.

All comparisons here are bit-exact (``torch.equal``): a quantized module runs the same torch
kernel as the float module, only with a different weight tensor.
"""

import copy
import doctest

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fxquant.nn.fold
import fxquant.nn.modules
from fxquant.fake_quant import FakeQuantize, FakeQuantState
from fxquant.nn import (
    FLOAT_TO_QUANT,
    WEIGHT_AXIS,
    QuantConv2d,
    QuantConvTranspose2d,
    QuantEmbedding,
    QuantLinear,
    QuantWeightMixin,
)
from fxquant.numerics import DEFAULT_EPS, fake_quantize, qint8

# (float module factory, input factory); configs exercise the constructor attributes that the
# quantized module must keep (groups, dilation, padding modes, output_padding, padding_idx ...)
CASES = {
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1), lambda: torch.randn(2, 4, 11)),
    "conv1d_circular": (
        lambda: nn.Conv1d(4, 4, 3, padding=2, dilation=2, groups=2, padding_mode="circular"),
        lambda: torch.randn(2, 4, 9),
    ),
    "conv2d": (lambda: nn.Conv2d(3, 8, 3, padding=1), lambda: torch.randn(2, 3, 8, 8)),
    "conv2d_same_reflect_nobias": (
        lambda: nn.Conv2d(4, 6, (3, 2), padding="same", padding_mode="reflect", bias=False),
        lambda: torch.randn(2, 4, 7, 6),
    ),
    "conv2d_depthwise_replicate": (
        lambda: nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6, padding_mode="replicate"),
        lambda: torch.randn(2, 6, 9, 9),
    ),
    "conv2d_unbatched": (lambda: nn.Conv2d(3, 5, 3), lambda: torch.randn(3, 6, 6)),
    "conv3d": (lambda: nn.Conv3d(2, 4, 3, padding=(1, 0, 1)), lambda: torch.randn(2, 2, 5, 5, 5)),
    "convtranspose1d": (
        lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, output_padding=1),
        lambda: torch.randn(2, 4, 7),
    ),
    "convtranspose2d_groups": (
        lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2, dilation=2),
        lambda: torch.randn(2, 4, 5, 5),
    ),
    "convtranspose3d": (
        lambda: nn.ConvTranspose3d(2, 3, 2, stride=2, bias=False),
        lambda: torch.randn(1, 2, 3, 3, 3),
    ),
    "linear": (lambda: nn.Linear(10, 7), lambda: torch.randn(3, 5, 10)),
    "linear_nobias": (lambda: nn.Linear(10, 7, bias=False), lambda: torch.randn(4, 10)),
    "embedding": (
        lambda: nn.Embedding(20, 8, padding_idx=3),
        lambda: torch.randint(0, 20, (4, 6)),
    ),
}


def _make(case):
    make_mod, make_x = CASES[case]
    return make_mod(), make_x()


def _weight_fq(float_mod):
    return FakeQuantize(ch_axis=WEIGHT_AXIS[type(float_mod)], is_weight=True)


def _float_with_weight(float_mod, weight):
    ref = copy.deepcopy(float_mod)
    with torch.no_grad():
        ref.weight.copy_(weight)
    return ref


@pytest.mark.parametrize("case", sorted(CASES))
def test_without_quantizer_equals_float(case):
    f, x = _make(case)
    q = FLOAT_TO_QUANT[type(f)].from_float(copy.deepcopy(f), None)
    assert q.weight_fake_quant is None
    assert torch.equal(q(x), f(x))


@pytest.mark.parametrize("case", sorted(CASES))
def test_per_channel_weight_fake_quant_is_bit_exact(case):
    f, x = _make(case)
    axis = WEIGHT_AXIS[type(f)]
    q = FLOAT_TO_QUANT[type(f)].from_float(copy.deepcopy(f), _weight_fq(f))
    out = q(x)
    # manual reference: symmetric int8, scale = per-channel amax / 127 (min-max observer),
    # at least eps (the embedding's padding row is all zeros)
    w = f.weight.detach()
    reduce_dims = [d for d in range(w.dim()) if d != axis]
    amax = w.abs().amax(dim=reduce_dims).double()
    scale = (amax / 127).float().clamp(min=DEFAULT_EPS)
    assert torch.equal(q.weight_fake_quant.scale, scale)
    w_fq = fake_quantize(w, scale, torch.zeros_like(scale, dtype=torch.int32), qint8, axis)
    assert not torch.equal(w_fq, w)
    assert torch.equal(out, _float_with_weight(f, w_fq)(x))


@pytest.mark.parametrize("case", sorted(c for c in CASES if c != "embedding"))
def test_gradients_reach_weight_and_bias(case):
    f, x = _make(case)
    q = FLOAT_TO_QUANT[type(f)].from_float(copy.deepcopy(f), _weight_fq(f))
    x = x.requires_grad_()
    q(x).square().sum().backward()
    # min-max scales clip nothing, so the straight-through gradient is the float module's
    # gradient evaluated at the fake-quantized weight
    ref = _float_with_weight(f, q.weight_fake_quant(f.weight.detach()))
    x_ref = x.detach().clone().requires_grad_()
    ref(x_ref).square().sum().backward()
    assert q.weight.grad is not None and q.weight.grad.abs().sum() > 0
    assert torch.equal(q.weight.grad, ref.weight.grad)
    assert torch.equal(x.grad, x_ref.grad)
    if f.bias is not None:
        assert torch.equal(q.bias.grad, ref.bias.grad)


def test_embedding_gradient_reaches_table():
    f = nn.Embedding(20, 8, padding_idx=3)
    q = QuantEmbedding.from_float(copy.deepcopy(f), _weight_fq(f))
    idx = torch.tensor([[1, 3, 5], [5, 7, 3]])
    q(idx).sum().backward()
    grad = q.weight.grad
    assert torch.equal(grad[5], torch.full((8,), 2.0))
    assert torch.equal(grad[3], torch.zeros(8))  # padding_idx gets no gradient, as in torch
    assert torch.equal(grad[0], torch.zeros(8))


@pytest.mark.parametrize("case", sorted(CASES))
def test_from_float_shares_parameters_and_keeps_attributes(case):
    f, _ = _make(case)
    q = FLOAT_TO_QUANT[type(f)].from_float(f, _weight_fq(f))
    assert isinstance(q, type(f)) and isinstance(q, QuantWeightMixin)
    assert q.weight is f.weight and getattr(q, "bias", None) is getattr(f, "bias", None)
    for key, value in vars(f).items():
        if key.startswith("_"):
            continue
        assert getattr(q, key) == value, key
    back = q.to_float()
    assert type(back) is type(f)
    assert back.weight is f.weight
    assert "weight_fake_quant" not in dict(back.named_children())
    assert repr(back) == repr(f)


@pytest.mark.parametrize("case", sorted(CASES))
def test_state_dict_keys_and_round_trip(case):
    f, x = _make(case)
    cls = FLOAT_TO_QUANT[type(f)]
    q = cls.from_float(copy.deepcopy(f), _weight_fq(f))
    q(x)  # the quantizer observes the weight and sizes its per-channel buffers
    sd = q.state_dict()
    float_keys = set(f.state_dict())
    assert float_keys <= set(sd)
    assert all(k.startswith("weight_fake_quant.") for k in set(sd) - float_keys)

    # a float checkpoint loads into the quantized module under the same keys
    fresh = cls.from_float(copy.deepcopy(_make(case)[0]), _weight_fq(f))
    result = fresh.load_state_dict(f.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith("weight_fake_quant.") for k in result.missing_keys)
    assert torch.equal(fresh.weight, f.weight)

    # a quantized checkpoint (per-channel buffers included) round-trips with strict=True
    fresh.load_state_dict(sd)
    q.weight_fake_quant.set_state(FakeQuantState.VALIDATION)
    fresh.weight_fake_quant.set_state(FakeQuantState.VALIDATION)
    assert torch.equal(fresh.weight_fake_quant.scale, q.weight_fake_quant.scale)
    assert torch.equal(fresh(x), q(x))


def test_conv_transpose_per_channel_axis_is_1():
    f = nn.ConvTranspose2d(3, 5, 3, stride=2)  # weight [in=3, out=5, 3, 3]
    assert WEIGHT_AXIS[nn.ConvTranspose2d] == WEIGHT_AXIS[QuantConvTranspose2d] == 1
    q = QuantConvTranspose2d.from_float(copy.deepcopy(f), _weight_fq(f))
    x = torch.randn(2, 3, 4, 4)
    out = q(x)
    scale = q.weight_fake_quant.scale
    assert scale.shape == (5,)
    assert torch.equal(scale, (f.weight.detach().abs().amax(dim=(0, 2, 3)).double() / 127).float())
    w_fq = fake_quantize(f.weight.detach(), scale, torch.zeros(5, dtype=torch.int32), qint8, 1)
    assert torch.equal(out, _float_with_weight(f, w_fq)(x))


def test_conv_transpose_output_size():
    f = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)
    q = QuantConvTranspose2d.from_float(copy.deepcopy(f), None)
    x = torch.randn(2, 4, 7, 7)
    for size in ([15, 16], [2, 6, 16, 15]):
        assert torch.equal(q(x, output_size=size), f(x, output_size=size))
        assert torch.equal(q(x, size), f(x, size))
    with pytest.raises(ValueError, match="output size"):
        q(x, output_size=[14, 14])


def test_embedding_max_norm_renormalises_the_float_table():
    f = nn.Embedding(10, 4, max_norm=1.0)
    with torch.no_grad():
        f.weight.mul_(3)
    q = QuantEmbedding.from_float(copy.deepcopy(f), _weight_fq(f))
    idx = torch.tensor([[1, 2], [2, 7]])
    out = q(idx)
    f(idx)  # torch renormalises the looked-up rows in place
    assert torch.equal(q.weight, f.weight)
    fq = q.weight_fake_quant
    w_fq = fake_quantize(f.weight.detach(), fq.scale, fq.zero_point, qint8, 0)
    assert torch.equal(out, nn.functional.embedding(idx, w_fq))


def test_embedding_sparse_gradient_only_without_quantizer():
    f = nn.Embedding(10, 4, sparse=True)
    idx = torch.tensor([1, 4])
    plain = QuantEmbedding.from_float(copy.deepcopy(f), None)
    plain(idx).sum().backward()
    assert plain.weight.grad.is_sparse
    quant = QuantEmbedding.from_float(copy.deepcopy(f), _weight_fq(f))
    quant(idx).sum().backward()
    assert not quant.weight.grad.is_sparse
    assert torch.equal(quant.weight.grad, plain.weight.grad.to_dense())


def test_direct_construction():
    fq = FakeQuantize(ch_axis=1, is_weight=True)
    q = QuantConvTranspose2d(3, 5, 3, stride=2, groups=1, weight_fake_quant=fq)
    assert q.weight_fake_quant is fq and q.stride == (2, 2)
    assert q(torch.randn(1, 3, 4, 4)).shape == (1, 5, 9, 9)
    converted = QuantConvTranspose2d.from_float(q.to_float(), fq)
    assert set(q.state_dict()) == set(converted.state_dict())
    plain = QuantEmbedding(10, 4, padding_idx=0)
    assert plain.weight_fake_quant is None
    assert "weight_fake_quant" not in dict(plain.named_children())
    with pytest.raises(TypeError, match="weight_fake_quant"):
        QuantLinear(2, 2, weight_fake_quant="fq")


def test_from_float_rejects_other_types():
    class MyConv(nn.Conv2d):
        pass

    with pytest.raises(TypeError, match="expects a Conv2d"):
        QuantConv2d.from_float(MyConv(1, 1, 1))
    with pytest.raises(TypeError, match="expects a Linear"):
        QuantLinear.from_float(nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="weight_fake_quant"):
        QuantLinear.from_float(nn.Linear(2, 2), weight_fake_quant=lambda w: w)


def test_tables_are_consistent():
    for float_t, quant_t in FLOAT_TO_QUANT.items():
        assert issubclass(quant_t, float_t) and quant_t._FLOAT_MODULE is float_t
        assert WEIGHT_AXIS[float_t] == WEIGHT_AXIS[quant_t]
    transposed = {nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d}
    assert {t for t in FLOAT_TO_QUANT if WEIGHT_AXIS[t] == 1} == transposed


def test_module_docstrings_run():
    for mod in (fxquant.nn.modules, fxquant.nn.fold):
        result = doctest.testmod(mod)
        assert result.attempted > 0 and result.failed == 0, mod.__name__


_conv_configs = st.fixed_dictionaries(
    {
        "dims": st.sampled_from([1, 2, 3]),
        "groups": st.sampled_from([1, 2]),
        "kernel": st.integers(1, 3),
        "stride": st.integers(1, 2),
        "dilation": st.integers(1, 2),
        "padding": st.sampled_from([0, 1, "same", "valid"]),
        "padding_mode": st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
        "bias": st.booleans(),
        "transposed": st.booleans(),
    }
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(cfg=_conv_configs)
def test_any_conv_config_matches_float(cfg):
    """Property: for any (valid) conv configuration, the quantized module without a quantizer
    is the float module, and with one it is the float module at the fake-quantized weight."""
    torch.manual_seed(0)
    n = cfg["dims"]
    if cfg["transposed"]:
        if cfg["padding_mode"] != "zeros" or isinstance(cfg["padding"], str):
            return  # not accepted by torch's ConvTranspose constructor
        cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[n - 1]
        kwargs = {"output_padding": cfg["stride"] - 1}
    else:
        if cfg["padding"] == "same" and cfg["stride"] != 1:
            return  # torch refuses padding='same' with stride > 1
        cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[n - 1]
        kwargs = {"padding_mode": cfg["padding_mode"]}
    f = cls(
        4, 6, cfg["kernel"], stride=cfg["stride"], padding=cfg["padding"],
        dilation=cfg["dilation"], groups=cfg["groups"], bias=cfg["bias"], **kwargs,
    )
    x = torch.randn(2, 4, *([6] * n))
    q = FLOAT_TO_QUANT[cls].from_float(copy.deepcopy(f), None)
    assert torch.equal(q(x), f(x))
    q = FLOAT_TO_QUANT[cls].from_float(copy.deepcopy(f), _weight_fq(f))
    out = q(x)
    assert torch.equal(out, _float_with_weight(f, q.weight_fake_quant(f.weight.detach()))(x))
