"""fold_bn_weights against the unfolded float ``layer -> BatchNorm`` in eval mode.

Folding reassociates float32 math (``conv(x, w * sf) + (b - mean) * sf + beta`` instead of
``(conv(x, w) + b - mean) / std * gamma + beta``), so results agree to ``rtol = 1e-5`` with an
absolute floor of ``1e-5 * max|reference|``, a few dozen ulps (see tests/nn/test_nn_conv_bn.py).
"""

import pytest
import torch
from torch import nn

from fxquant.nn import fold_bn_weights


def assert_float_close(actual, expected):
    atol = 1e-5 * float(expected.detach().abs().max()) + 1e-12
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=atol)


def _bn(n, dims, affine=True):
    bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1](n, affine=affine).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
        if affine:
            bn.weight.uniform_(-1.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return bn


def _fold_into(layer, bn, transpose=False):
    w, b = fold_bn_weights(
        layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias,
        transpose, groups=getattr(layer, "groups", 1),
    )
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias = nn.Parameter(b)
    return layer


CASES = {
    "conv2d": (lambda: nn.Conv2d(4, 6, 3, groups=2), 2, (2, 4, 7, 7), False),
    "conv1d_nobias": (lambda: nn.Conv1d(3, 5, 3, bias=False), 1, (2, 3, 9), False),
    "linear": (lambda: nn.Linear(8, 5), 1, (4, 8), False),
    "convtranspose2d": (lambda: nn.ConvTranspose2d(3, 5, 3, stride=2), 2, (2, 3, 4, 4), True),
    "convtranspose2d_groups": (
        lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2),
        2, (2, 4, 4, 4), True,
    ),
    "convtranspose3d_groups": (
        lambda: nn.ConvTranspose3d(6, 9, 2, groups=3, bias=False),
        3, (1, 6, 3, 3, 3), True,
    ),
}


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fold_matches_layer_then_bn(case, affine):
    make, dims, shape, transpose = CASES[case]
    layer = make().eval()
    out_channels = layer.weight.shape[1] * layer.groups if transpose else layer.weight.shape[0]
    bn = _bn(out_channels, dims, affine)
    x = torch.randn(shape)
    with torch.no_grad():
        ref = bn(layer(x))
        folded = _fold_into(layer, bn, transpose)(x)
    assert_float_close(folded, ref)


def test_transposed_weight_scales_axis_1():
    w = torch.ones(2, 3, 1, 1)  # ConvTranspose weight [in=2, out=3, 1, 1]
    var = torch.tensor([3.0, 15.0, 0.0])
    gamma = torch.tensor([2.0, 4.0, -1.0])
    w_fold, b_fold = fold_bn_weights(w, None, torch.zeros(3), var, 1.0, gamma, None, transpose=True)
    assert torch.equal(w_fold[:, :, 0, 0], torch.tensor([[1.0, 1.0, -1.0]] * 2))
    assert torch.equal(b_fold, torch.zeros(3))


def test_none_parts_are_identity_affine_and_zero_bias():
    w = torch.randn(4, 2, 3)
    mean, var = torch.randn(4), torch.rand(4) + 0.5
    w1, b1 = fold_bn_weights(w, None, mean, var, 1e-5, None, None)
    w2, b2 = fold_bn_weights(w, torch.zeros(4), mean, var, 1e-5, torch.ones(4), torch.zeros(4))
    assert torch.equal(w1, w2) and torch.equal(b1, b2)


def test_fold_is_differentiable():
    w = torch.randn(4, 2, 3, requires_grad=True)
    gamma = torch.randn(4, requires_grad=True)
    w_fold, b_fold = fold_bn_weights(w, None, torch.zeros(4), torch.ones(4), 0.0, gamma, None)
    (w_fold.sum() + b_fold.sum()).backward()
    assert torch.equal(gamma.grad, w.detach().sum(dim=(1, 2)))


def test_shape_errors():
    with pytest.raises(ValueError, match="6 output channels"):
        fold_bn_weights(torch.ones(6, 2, 3), None, torch.zeros(4), torch.ones(4), 1e-5, None, None)
    with pytest.raises(ValueError, match="groups=4"):
        fold_bn_weights(torch.ones(6, 2, 3), None, torch.zeros(8), torch.ones(8), 1e-5, None, None,
                        transpose=True, groups=4)
