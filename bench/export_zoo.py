"""The model families of issue 12 as random-weight models with example inputs (no downloads).

torchvision classification CNNs and transformers, a detection backbone returning a dict,
Hugging Face tiny configs (BERT, GPT-2, DistilBERT, T5 encoder, Wav2Vec2, Whisper encoder,
ViT), timm mobilevit / swin, an LSTM model and a forward with an optional ``mask=None``
keyword.  :data:`EXPORT_MODELS` maps a row name to ``(family, build, batch)`` where
``batch(n)`` draws one batch of ``n`` examples (a tensor, a tuple or a dict of keyword inputs,
:mod:`fxquant.modelio`'s convention).  Used by :mod:`bench.export_paths`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from bench._tv_shim import ensure_torchvision_importable

__all__ = ["EXPORT_MODELS", "QUICK"]

_VOCAB, _TOKENS = 500, 16


def _tv(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        ensure_torchvision_importable()
        import torchvision.models as tvm

        return getattr(tvm, name)(weights=None, **kwargs)

    return build


def _fpn() -> nn.Module:
    ensure_torchvision_importable()
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    return resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)


def _timm(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        ensure_torchvision_importable()
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)

    return build


def _hf(cls: str, config: str, **cfg: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers as tf

        return getattr(tf, cls)(getattr(tf, config)(**cfg))

    return build


def _whisper_encoder() -> nn.Module:
    import transformers as tf
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cfg = tf.WhisperConfig(
        d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128,
        num_mel_bins=16, max_source_positions=32, decoder_layers=1, decoder_attention_heads=2,
        decoder_ffn_dim=64, vocab_size=_VOCAB,
    )  # fmt: skip
    return WhisperEncoder(cfg)


class LSTMTagger(nn.Module):
    """Embedding -> 2-layer LSTM -> linear per step."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(_VOCAB, 32)
        self.lstm = nn.LSTM(32, 48, num_layers=2, batch_first=True)
        self.head = nn.Linear(48, 8)

    def forward(self, ids: Tensor) -> Tensor:
        out, _ = self.lstm(self.embed(ids))
        return self.head(out)


class MaskKwarg(nn.Module):
    """A transformer-style block whose forward takes an optional ``mask=None`` keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32)
        self.out = nn.Linear(32, 32)
        self.norm = nn.LayerNorm(32)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        scores = self.q(x) @ self.k(x).transpose(-2, -1) / 32**0.5
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :].bool(), float("-inf"))
        return self.norm(x + self.out(scores.softmax(-1) @ self.v(x)))


def _images(size: int) -> Callable[[int], Any]:
    return lambda n: torch.randn(n, 3, size, size)


def _ids(n: int) -> Any:
    return {"input_ids": torch.randint(0, _VOCAB, (n, _TOKENS))}


def _ids_mask(n: int) -> Any:
    mask = torch.ones(n, _TOKENS, dtype=torch.long)
    mask[1::2, _TOKENS // 2:] = 0
    return {"input_ids": torch.randint(0, _VOCAB, (n, _TOKENS)), "attention_mask": mask}


_BERT = dict(vocab_size=_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=128, max_position_embeddings=64)

# name -> (family, build, batch(n))
EXPORT_MODELS: dict[str, tuple[str, Callable[[], nn.Module], Callable[[int], Any]]] = {
    "resnet18": ("torchvision", _tv("resnet18"), _images(64)),
    "mobilenet_v2": ("torchvision", _tv("mobilenet_v2"), _images(64)),
    "mobilenet_v3_small": ("torchvision", _tv("mobilenet_v3_small"), _images(64)),
    "shufflenet_v2_x0_5": ("torchvision", _tv("shufflenet_v2_x0_5"), _images(64)),
    "squeezenet1_0": ("torchvision", _tv("squeezenet1_0"), _images(64)),
    "regnet_y_400mf": ("torchvision", _tv("regnet_y_400mf"), _images(64)),
    "googlenet": ("torchvision", _tv("googlenet", aux_logits=False, init_weights=True),
                  _images(64)),
    "inception_v3": ("torchvision", _tv("inception_v3", aux_logits=False, init_weights=True),
                     _images(96)),
    "mnasnet0_5": ("torchvision", _tv("mnasnet0_5"), _images(64)),
    "densenet121": ("torchvision", _tv("densenet121"), _images(64)),
    "efficientnet_b0": ("torchvision", _tv("efficientnet_b0"), _images(64)),
    "convnext_tiny": ("torchvision", _tv("convnext_tiny"), _images(64)),
    "swin_t": ("torchvision", _tv("swin_t"), _images(64)),
    "vit_b_16": ("torchvision", _tv("vit_b_16", image_size=64), _images(64)),
    "fpn_resnet18 (dict out)": ("detection backbone", _fpn, _images(64)),
    "BertModel": ("transformers", _hf("BertModel", "BertConfig", **_BERT), _ids_mask),
    "GPT2Model": ("transformers", _hf(
        "GPT2Model", "GPT2Config", vocab_size=_VOCAB, n_embd=64, n_layer=2, n_head=2,
        n_positions=64, use_cache=False), _ids),
    "DistilBertModel": ("transformers", _hf(
        "DistilBertModel", "DistilBertConfig", vocab_size=_VOCAB, dim=64, n_layers=2, n_heads=2,
        hidden_dim=128, max_position_embeddings=64), _ids_mask),
    "T5EncoderModel": ("transformers", _hf(
        "T5EncoderModel", "T5Config", vocab_size=_VOCAB, d_model=64, d_kv=32, d_ff=128,
        num_layers=2, num_heads=2, use_cache=False), _ids_mask),
    "Wav2Vec2Model": ("transformers", _hf(
        "Wav2Vec2Model", "Wav2Vec2Config", hidden_size=64, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=128, conv_dim=(32, 32), conv_stride=(5, 4),
        conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
        lambda n: {"input_values": torch.randn(n, 1600)}),
    "WhisperEncoder": ("transformers", _whisper_encoder,
                       lambda n: {"input_features": torch.randn(n, 16, 64)}),
    "ViTModel": ("transformers", _hf(
        "ViTModel", "ViTConfig", image_size=32, patch_size=8, hidden_size=64,
        num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
        lambda n: {"pixel_values": torch.randn(n, 3, 32, 32)}),
    "mobilevit_xxs": ("timm", _timm("mobilevit_xxs"), _images(64)),
    "swin (timm)": ("timm", _timm("swin_tiny_patch4_window7_224", img_size=64, window_size=4),
                    _images(64)),
    "LSTMTagger": ("custom", LSTMTagger, lambda n: torch.randint(0, _VOCAB, (n, _TOKENS))),
    "mask=None kwarg": ("custom", MaskKwarg, lambda n: torch.randn(n, 12, 32)),
}

QUICK = ("resnet18", "mobilenet_v3_small", "fpn_resnet18 (dict out)", "BertModel",
         "LSTMTagger", "mask=None kwarg")
