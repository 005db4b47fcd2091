"""Convolution + BatchNorm for quantization-aware training, with the BN folded into the weight.

``ConvBn2d`` (and 1d / 3d) holds the conv's ``weight`` / ``bias`` and the BatchNorm as child
``bn``.  The quantizer always sees the *folded* weight, the one a deployed model runs.

Training (``bn.training``; as torch.ao's ConvBn QAT modules)::

    sf    = gamma / sqrt(running_var + eps)                  # per output channel
    y     = conv(x, weight_fake_quant(w * sf))               # no bias
    y_raw = y / sf + conv_bias                               # undo the scale
    out   = bn(y_raw)                                        # batch statistics; updates running

Without a quantizer ``y_raw`` equals ``conv(x, w) + conv_bias`` up to float rounding, so the
running statistics follow those of the float conv + BN.  Channels with ``|sf| < MIN_SCALE`` (a
zero or vanishing ``gamma``) cannot be recovered by dividing by ``sf``: their ``y_raw`` comes
from a second, small float convolution over just those channels.  No NaN or Inf appears, their
BN statistics stay correct and ``gamma`` still receives a gradient, so the channel can revive.

Evaluation (``not bn.training``) uses the running statistics, folded::

    w_fold, b_fold = fold_bn_weights(w, conv_bias, running_mean, running_var, eps, gamma, beta)
    out = conv(x, weight_fake_quant(w_fold), b_fold)

Under ``no_grad`` (calibration, evaluation) the folded pair is kept between calls while the conv
weight / bias and the BN's statistics and affine parameters hold -- compared by content
(:class:`fxquant.numerics.held.Snapshot`, one ``memcmp`` call), so an in-place update or a
``load_state_dict`` is followed.  The weight quantizer then sees the same tensor every call (marked
as kept, :func:`fxquant.numerics.held.mark_kept`: it recognises it without comparing bytes).

To freeze the BN statistics while the rest trains, call ``module.bn.eval()`` after
``model.train()``: the module then runs the evaluation formula.

Under torch.distributed (more than one rank) training uses the batch statistics of all ranks
(:func:`fxquant.distributed.sync_batch_norm`, a SyncBatchNorm that runs on CPU / gloo too), so
the running statistics -- and the folded weights the quantizer sees -- stay identical on every
rank; ``fxquant.set_distributed_sync(model, False)`` keeps them per rank.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..distributed import DistributedSync, sync_batch_norm
from ..numerics import native
from ..numerics.held import Snapshot, keepable, mark_kept
from .fold import bn_scale_factor, fold_bn_weights
from .modules import _check_quantizer, conv_forward, rebind_module

__all__ = ["ConvBnNd", "ConvBn1d", "ConvBn2d", "ConvBn3d", "MIN_SCALE"]

MIN_SCALE = 1e-12
"""Channels whose BN scale factor ``|gamma / sqrt(var + eps)|`` is below this use the float path.

Above it, ``w * sf`` stays a normal float32 for any weight above 1e-26 and dividing the
conv output by ``sf`` cannot overflow (a nearest-rounding quantizer keeps
``|fq(w * sf)| <= 2 |w * sf|``); below it, in particular at ``gamma == 0``, it could give 0/0.
"""


class ConvBnNd:
    """Mixin for ``ConvBn1d/2d/3d``; listed before the torch conv class it extends."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]]
    _BN_MODULE: ClassVar[type[nn.Module]]
    distributed_sync: DistributedSync = DistributedSync()
    weight: Tensor
    bias: Tensor | None
    bn: nn.Module
    _kept_fold: tuple[Snapshot, Tensor, Tensor] | None = None  # see _folded_eval

    def __init__(
        self,
        *args: Any,
        weight_fake_quant: nn.Module | None = None,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        **kwargs: Any,
    ):
        """The conv constructor's arguments; ``eps`` / ``momentum`` / ``affine`` for the BN."""
        _check_quantizer(type(self).__name__, weight_fake_quant)
        super().__init__(*args, **kwargs)
        self.bn = self._BN_MODULE(
            self.out_channels, eps=eps, momentum=momentum, affine=affine,
            device=self.weight.device, dtype=self.weight.dtype,
        )
        self.register_module("weight_fake_quant", weight_fake_quant)

    @classmethod
    def from_float(
        cls, conv: nn.Module, bn: nn.Module, weight_fake_quant: nn.Module | None = None
    ):
        """Combine float ``conv`` and the ``bn`` that follows it, sharing their parameters.

        The BatchNorm must track running statistics (they are what gets folded for
        deployment); ``affine=False`` is handled as ``gamma = 1``, ``beta = 0``.
        """
        name = cls.__name__
        if type(conv) is not cls._FLOAT_MODULE:
            raise TypeError(
                f"{name}.from_float expects a {cls._FLOAT_MODULE.__name__}, got "
                f"{type(conv).__name__}"
            )
        if not isinstance(bn, cls._BN_MODULE):
            raise TypeError(
                f"{name}.from_float expects a {cls._BN_MODULE.__name__} after the conv, got "
                f"{type(bn).__name__}"
            )
        if bn.num_features != conv.out_channels:
            raise ValueError(
                f"{name}.from_float: {bn!r} has {bn.num_features} features but the conv has "
                f"{conv.out_channels} output channels"
            )
        if not bn.track_running_stats or bn.running_mean is None:
            raise ValueError(
                f"{name}.from_float: cannot fold {bn!r}: it has no running statistics "
                "(track_running_stats=False) to fold into the weights; keep it as a separate "
                "BatchNorm"
            )
        _check_quantizer(f"{name}.from_float", weight_fake_quant)
        new = rebind_module(conv, cls)
        new.register_module("bn", bn)
        new.register_module("weight_fake_quant", weight_fake_quant)
        return new

    # -- folding -------------------------------------------------------------------------------
    def _scale_factor(self) -> Tensor:
        return bn_scale_factor(self.bn.running_var, self.bn.eps, self.bn.weight)

    def folded_weight_and_bias(self) -> tuple[Tensor, Tensor]:
        """``(w_fold, b_fold)`` from the running statistics (differentiable; detach to export)."""
        bn = self.bn
        return fold_bn_weights(
            self.weight, self.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )

    def to_float(self) -> nn.Module:
        """A plain torch conv with the folded (unquantized) weight and bias, as new Parameters."""
        with torch.no_grad():
            w, b = self.folded_weight_and_bias()
        conv = rebind_module(self, self._FLOAT_MODULE, drop=("bn", "weight_fake_quant"))
        conv.__dict__.pop("_kept_fold", None)
        conv.weight = nn.Parameter(w.clone(), requires_grad=self.weight.requires_grad)
        conv.bias = nn.Parameter(b.to(w.dtype).clone(), requires_grad=self.weight.requires_grad)
        return conv

    # -- forward -------------------------------------------------------------------------------
    def forward(self, input: Tensor) -> Tensor:
        if self.bn.training:
            return self._forward_train(input)
        w, b = self._folded_eval()
        return conv_forward(self, input, self._fake_quantize(w), b)

    def _folded_eval(self) -> tuple[Tensor, Tensor]:
        """:meth:`folded_weight_and_bias`, kept between calls under ``no_grad`` while its
        sources hold (their content: see the module docstring)."""
        if torch.is_grad_enabled():
            return self.folded_weight_and_bias()
        bn = self.bn
        own, bns, bn_params = self._parameters, bn._buffers, bn._parameters  # type: ignore
        sources = (own["weight"], own.get("bias"), bns["running_mean"], bns["running_var"],
                   bn_params.get("weight"), bn_params.get("bias"))
        if not keepable(*sources):  # fake tensors of an export, tracing, huge weights
            return self.folded_weight_and_bias()
        kept = self._kept_fold
        if kept is not None and kept[0].holds(sources, (bn.eps,)):
            return kept[1], kept[2]
        w, b = self.folded_weight_and_bias()
        self._kept_fold = (Snapshot(sources, (bn.eps,)), mark_kept(w), b)
        return w, b

    def _fake_quantize(self, w: Tensor) -> Tensor:
        quantizer = self.weight_fake_quant  # type: ignore[attr-defined]
        return w if quantizer is None else quantizer(w)

    def _forward_train(self, x: Tensor) -> Tensor:
        ndim = len(self.kernel_size) + 2  # type: ignore[attr-defined]
        if x.dim() != ndim:
            raise ValueError(
                f"{type(self).__name__}: training needs a batched {ndim}D input, got {x.dim()}D"
            )
        channel = (1, -1) + (1,) * (ndim - 2)  # broadcast over [N, C, *spatial]
        bn = self.bn
        scaled = native.bn_fold_scale(self.weight, bn.running_var, bn.weight, bn.eps)
        if scaled is None:
            sf = self._scale_factor()
            w_scaled = self.weight * sf.reshape(-1, *([1] * (ndim - 1)))
            low = float(sf.detach().abs().amin()) if sf.numel() else 0.0
        else:  # the same operations as one autograd node (fxquant.numerics.native)
            w_scaled, sf, low = scaled
        y = conv_forward(self, x, self._fake_quantize(w_scaled), None)
        if sf.numel() and low >= MIN_SCALE:  # the usual case
            # (``where`` below would pass ``sf`` and its gradient through unchanged)
            y = _channel_divide(y, sf.reshape(channel))
        else:
            tiny = sf.abs() < MIN_SCALE
            y = _channel_divide(y, torch.where(tiny, torch.ones_like(sf), sf).reshape(channel))
            if bool(tiny.any()):
                idx = tiny.nonzero().flatten()
                y = y.index_copy(1, idx, self._float_channels(x, idx))
        if self.bias is not None:
            y = y + self.bias.reshape(channel)
        sync = self.distributed_sync
        if sync.active() and not isinstance(self.bn, nn.SyncBatchNorm):
            return sync_batch_norm(self.bn, y, sync.group)  # statistics of the global batch
        return self.bn(y)

    def _float_channels(self, x: Tensor, idx: Tensor) -> Tensor:
        """The unbiased float conv output of output channels ``idx`` only."""
        groups = self.groups  # type: ignore[attr-defined]
        w = self.weight.index_select(0, idx)
        if groups == 1:
            return conv_forward(self, x, w, None)
        # each selected channel becomes its own group over its group's input channels
        out_per_group = self.weight.shape[0] // groups
        x_groups = x.unflatten(1, (groups, -1)).index_select(1, idx // out_per_group)
        return conv_forward(self, x_groups.flatten(1, 2), w, None, groups=idx.numel())


def _channel_divide(y: Tensor, d: Tensor) -> Tensor:
    """``y / d`` with autograd's gradient bits in fewer passes (C++ operator where the native
    kernels apply -- written over ``y``, a conv output read by nothing else --, else
    :class:`_ChannelDivide`)."""
    out = native.channel_divide_(y, d)
    return _ChannelDivide.apply(y, d) if out is None else out


class _ChannelDivide(torch.autograd.Function):
    """``y / d`` (``d`` shaped ``[1, C, 1, ...]``) whose backward makes two passes, not six.

    Autograd's rule for a division computes ``grad / d`` and ``-grad * ((y / d) / d)``, then
    sums the latter over the broadcast dimensions: six passes over the conv output.  Here
    ``y / d`` is the forward output (saved), so the same two products come from one pass of the
    native kernel (:func:`fxquant.numerics.native.div_channel_backward`; pure torch otherwise)
    and one ``sum`` over the same dimensions.  Bit for bit autograd's result: negating a product
    or a sum is exact, ``(-g) * t == -(g * t)`` and ``sum(-t) == -sum(t)``.
    """

    @staticmethod
    def forward(ctx, y: Tensor, d: Tensor) -> Tensor:  # type: ignore[override]
        out = y / d
        ctx.save_for_backward(out, d)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        out, d = ctx.saved_tensors
        need_y, need_d = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not need_d:
            return (grad / d if need_y else None), None
        both = native.div_channel_backward(grad, out, d.reshape(-1))
        if both is None:
            gy, t = grad / d, (out / d) * grad
        else:
            gy, t = both
        # as autograd's sum_to: reduce the dimensions where d is 1 and the output is not
        dims = [i for i, (a, b) in enumerate(zip(d.shape, out.shape, strict=True)) if a == 1 != b]
        gd = (t.sum(dims, keepdim=True) if dims else t).neg_()
        return (gy if need_y else None), gd


class ConvBn1d(ConvBnNd, nn.Conv1d):
    """``nn.Conv1d`` followed by ``nn.BatchNorm1d``, folded for QAT (see module docstring)."""

    _FLOAT_MODULE = nn.Conv1d
    _BN_MODULE = nn.BatchNorm1d


class ConvBn2d(ConvBnNd, nn.Conv2d):
    """``nn.Conv2d`` followed by ``nn.BatchNorm2d``, folded for QAT (see module docstring)."""

    _FLOAT_MODULE = nn.Conv2d
    _BN_MODULE = nn.BatchNorm2d


class ConvBn3d(ConvBnNd, nn.Conv3d):
    """``nn.Conv3d`` followed by ``nn.BatchNorm3d``, folded for QAT (see module docstring)."""

    _FLOAT_MODULE = nn.Conv3d
    _BN_MODULE = nn.BatchNorm3d
