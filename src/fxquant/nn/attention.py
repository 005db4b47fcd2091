"""Quantizable attention: ``F.scaled_dot_product_attention`` call sites, ``nn.MultiheadAttention``.

Both modules keep two forwards:

* **float** -- while every internal quantizer is absent or in ``FakeQuantState.FLOAT``: the torch
  op itself (``F.scaled_dot_product_attention``, ``nn.MultiheadAttention.forward`` with its
  inference fast path), so a prepared model in float mode computes bit for bit what the
  original model computes;
* **quantized** -- otherwise: the attention written out, with a quantizer on every value an
  integer runtime consumes::

      q, k, v            (QuantMultiheadAttention: three linears on the packed in-projection,
                          weights per-channel, outputs q_fake_quant (q pre-scaled by
                          1/sqrt(head_dim), as torch.ao does) / k_fake_quant / v_fake_quant)
      scores = q @ k^T * scale -> scores_fake_quant (absent where the runtime keeps softmax's
                            input float: the matmul then runs as MatMulIntegerToFloat)
      scores + mask -> softmax -> probs_fake_quant   (the mask is added in float)
      probs @ v          (QuantMultiheadAttention: -> attn_fake_quant -> out_proj, weight
                          out_weight_fake_quant)

The module's inputs and its (first) output are quantized by whoever calls it: the prepared graph
(``fxquant.prepare``) or the optional ``input_fake_quant_<i>`` / ``output_fake_quant`` children
used when the module runs inside an eagerly captured ``forward``.

Quantizers are children filled in by ``fxquant.prepare`` (:mod:`fxquant.graph.library_modules`);
a module with none of them is the plain float module.

>>> import torch
>>> sdpa = ScaledDotProductAttention()
>>> q = k = v = torch.randn(1, 2, 4, 8)
>>> torch.equal(sdpa(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v))
True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .modules import quantizers_on, rebind_module

__all__ = [
    "ScaledDotProductAttention",
    "QuantMultiheadAttention",
    "attend",
    "additive_mask",
    "quantizing",
]


def _q(quantizer: nn.Module | None, x: Tensor) -> Tensor:
    return x if quantizer is None else quantizer(x)


def quantizing(module: nn.Module, slots: tuple[str, ...]) -> bool:
    """True when one of ``module``'s quantizer children named in ``slots`` is on
    (:func:`~fxquant.nn.modules.quantizers_on`)."""
    return quantizers_on(module._modules.get(name) for name in slots)


def additive_mask(mask: Tensor | None, dtype: torch.dtype, *, keep: bool) -> Tensor | None:
    """A boolean mask as an additive float mask (``-inf`` where masked); float masks pass.

    ``keep=True``: ``True`` means *attend* (``F.scaled_dot_product_attention``); ``keep=False``:
    ``True`` means *masked* (``nn.MultiheadAttention``).
    """
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    masked = ~mask if keep else mask
    zeros = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(masked, torch.full((), float("-inf"), dtype=dtype, device=mask.device),
                       zeros)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    scale: float,
    dropout_p: float = 0.0,
    scores_fake_quant: nn.Module | None = None,
    probs_fake_quant: nn.Module | None = None,
) -> tuple[Tensor, Tensor]:
    """Attention written out: ``softmax(q_scores(q @ k^T * scale) + mask) @ v`` with the
    scores and probabilities quantizers (either may be ``None``).

    ``mask`` is additive (see :func:`additive_mask`), broadcastable to the scores; it is added
    after the scores quantizer, so its large negative values never set a quantization range.
    Returns ``(output, probs)``.
    """
    scores = torch.matmul(q, k.transpose(-2, -1))
    if scale != 1.0:
        scores = scores * scale
    scores = _q(scores_fake_quant, scores)
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p)
    probs = _q(probs_fake_quant, probs)
    return torch.matmul(probs, v), probs


def _causal_mask(q: Tensor, k: Tensor) -> Tensor:
    keep = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
    return additive_mask(keep, q.dtype, keep=True)  # type: ignore[return-value]


class ScaledDotProductAttention(nn.Module):
    """One ``F.scaled_dot_product_attention`` call site, quantizable inside.

    ``fxquant.prepare`` routes each call site of the function (in a traced graph or in an
    eagerly run ``forward``) through one of these; the call's arguments are unchanged.
    Quantizer children (all optional): ``input_fake_quant_0/1/2`` (q, k, v: only where the
    placement quantizes weighted-op inputs inside the op, TensorRT), ``scores_fake_quant``,
    ``probs_fake_quant``.  The output is quantized by the caller.
    """

    INTERNAL = ("input_fake_quant_0", "input_fake_quant_1", "input_fake_quant_2",
                "scores_fake_quant", "probs_fake_quant")  # fmt: skip
    op_type = "scaled_dot_product_attention"

    def __init__(self) -> None:
        super().__init__()
        for name in self.INTERNAL:
            self.register_module(name, None)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Tensor:
        if not quantizing(self, self.INTERNAL):
            return F.scaled_dot_product_attention(
                query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                is_causal=is_causal, scale=scale, enable_gqa=enable_gqa,
            )  # fmt: skip
        q = _q(self.input_fake_quant_0, query)
        k = _q(self.input_fake_quant_1, key)
        v = _q(self.input_fake_quant_2, value)
        if enable_gqa and q.dim() >= 3 and k.size(-3) != q.size(-3):
            k = k.repeat_interleave(q.size(-3) // k.size(-3), dim=-3)
            v = v.repeat_interleave(q.size(-3) // v.size(-3), dim=-3)
        mask = additive_mask(attn_mask, q.dtype, keep=True)
        if is_causal:
            causal = _causal_mask(q, k)
            mask = causal if mask is None else mask + causal
        scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
        out, _ = attend(q, k, v, mask, scale, dropout_p, self.scores_fake_quant,
                        self.probs_fake_quant)
        return out


class QuantMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention``, quantizable inside; parameters keep their names.

    Quantizer children (all optional): ``q_weight_fake_quant`` / ``k_weight_fake_quant`` /
    ``v_weight_fake_quant`` (the three row blocks of ``in_proj_weight``, or ``q_proj_weight`` ...
    when key / value dims differ), ``out_weight_fake_quant`` (``out_proj.weight``),
    ``q_fake_quant`` / ``k_fake_quant`` / ``v_fake_quant`` (projections), ``scores_fake_quant``,
    ``probs_fake_quant``, ``attn_fake_quant`` (the heads merged, ``out_proj``'s input); and
    ``input_fake_quant_0/1/2`` / ``output_fake_quant`` for query / key / value / the attention
    output when no graph quantizes them.  The returned attention weights (``need_weights``)
    are the float average of the quantized probabilities.
    """

    _FLOAT_MODULE = nn.MultiheadAttention
    INTERNAL = ("q_weight_fake_quant", "k_weight_fake_quant", "v_weight_fake_quant",
                "out_weight_fake_quant", "q_fake_quant", "k_fake_quant", "v_fake_quant",
                "scores_fake_quant", "probs_fake_quant", "attn_fake_quant")  # fmt: skip
    IO = ("input_fake_quant_0", "input_fake_quant_1", "input_fake_quant_2", "output_fake_quant")

    @classmethod
    def from_float(cls, mod: nn.MultiheadAttention) -> QuantMultiheadAttention:
        """Wrap ``mod`` (exactly an ``nn.MultiheadAttention``), sharing its parameters."""
        if type(mod) is not nn.MultiheadAttention:
            raise TypeError(
                f"QuantMultiheadAttention.from_float expects an nn.MultiheadAttention, got "
                f"{type(mod).__name__}"
            )
        new = rebind_module(mod, cls)
        for name in cls.INTERNAL + cls.IO:
            new.register_module(name, None)
        return new

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        query, key, value = self._quantize_inputs(query, key, value)
        if quantizing(self, self.INTERNAL):
            out, weights = self._quantized_forward(
                query, key, value, key_padding_mask, need_weights, attn_mask,
                average_attn_weights, is_causal,
            )  # fmt: skip
        else:
            out, weights = super().forward(
                query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )  # fmt: skip
        return _q(self.output_fake_quant, out), weights

    def _quantize_inputs(self, query: Tensor, key: Tensor, value: Tensor):
        """The io input quantizers; an input passed twice (self-attention) is quantized once
        and stays the same tensor object."""
        seen: dict[int, Tensor] = {}
        out = []
        for i, x in enumerate((query, key, value)):
            fq = self._modules.get(f"input_fake_quant_{i}")
            if fq is None:
                out.append(x)
            elif id(x) in seen:
                out.append(seen[id(x)])
            else:
                seen[id(x)] = fq(x)
                out.append(seen[id(x)])
        return tuple(out)

    def _in_projection(self) -> list[tuple[Tensor, Tensor | None]]:
        """(fake-quantized weight, bias) of the q, k and v projections."""
        e = self.embed_dim
        if self._qkv_same_embed_dim:
            weights = list(self.in_proj_weight.split(e))
        else:
            weights = [self.q_proj_weight, self.k_proj_weight, self.v_proj_weight]
        biases: list[Tensor | None] = (
            list(self.in_proj_bias.split(e)) if self.in_proj_bias is not None else [None] * 3
        )
        slots = ("q_weight_fake_quant", "k_weight_fake_quant", "v_weight_fake_quant")
        return [(_q(self._modules[s], w), b) for s, w, b in zip(slots, weights, biases,
                                                                  strict=True)]

    def _quantized_forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        need_weights: bool,
        attn_mask: Tensor | None,
        average_attn_weights: bool,
        is_causal: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """``F.multi_head_attention_forward`` written out with the quantizers."""
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        tgt_len, bsz, embed = query.shape
        heads, head_dim = self.num_heads, self.head_dim
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")
        (wq, bq), (wk, bk), (wv, bv) = self._in_projection()
        scale = 1.0 / math.sqrt(head_dim)
        q = _q(self.q_fake_quant, F.linear(query, wq, bq) * scale)  # scale folded into q
        k = F.linear(key, wk, bk)
        v = F.linear(value, wv, bv)
        mask = additive_mask(attn_mask, q.dtype, keep=False)
        pad = additive_mask(key_padding_mask, q.dtype, keep=False)
        if mask is not None and mask.dim() == 3:
            mask = mask.view(bsz, heads, tgt_len, -1)
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.repeat(1, bsz, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, bsz, 1)])
            mask = F.pad(mask, (0, 1)) if mask is not None else None
            pad = F.pad(pad, (0, 1)) if pad is not None else None
        k = _q(self.k_fake_quant, k)
        v = _q(self.v_fake_quant, v)
        q = q.view(tgt_len, bsz, heads, head_dim).permute(1, 2, 0, 3)
        k = k.view(k.size(0), bsz, heads, head_dim).permute(1, 2, 0, 3)
        v = v.view(v.size(0), bsz, heads, head_dim).permute(1, 2, 0, 3)
        if self.add_zero_attn:
            zeros = torch.zeros(bsz, heads, 1, head_dim, dtype=k.dtype, device=k.device)
            k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)
            mask = F.pad(mask, (0, 1)) if mask is not None else None
            pad = F.pad(pad, (0, 1)) if pad is not None else None
        if pad is not None:
            pad = pad.view(bsz, 1, 1, -1)
            mask = pad if mask is None else mask + pad
        dropout_p = self.dropout if self.training else 0.0
        out, probs = attend(q, k, v, mask, 1.0, dropout_p, self.scores_fake_quant,
                            self.probs_fake_quant)
        out = _q(self.attn_fake_quant, out.permute(2, 0, 1, 3).reshape(tgt_len * bsz, embed))
        weight = _q(self.out_weight_fake_quant, self.out_proj.weight)
        out = F.linear(out, weight, self.out_proj.bias).view(tgt_len, bsz, embed)
        if batched and self.batch_first:
            out = out.transpose(1, 0)
        elif not batched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        weights = probs.mean(dim=1) if average_attn_weights else probs
        return out, (weights if batched else weights.squeeze(0))
