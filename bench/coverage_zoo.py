"""The coverage zoo: the public model families of issue 12, as random-weight models.

* **torchvision** classification: resnet, mobilenet v2 / v3, efficientnet_b0, convnext_tiny,
  swin_t, vit_b_16, regnet, shufflenet, googlenet, inception_v3, mnasnet, densenet,
  squeezenet;
* **detection** backbones returning a dict: ``resnet_fpn_backbone`` (``BackboneWithFPN``),
  ``mobilenet_backbone(fpn=True)``, an ``IntermediateLayerGetter``;
* **timm**: mobilevit, swin, ViT, LeViT, ConvNeXt, MLP-Mixer, PoolFormer, GhostNet, RepVGG,
  HRNet, NF-ResNet (small inputs / ``img_size``);
* **transformers** tiny configs: BERT, GPT-2 (``use_cache=False``), DistilBERT, T5 encoder,
  Wav2Vec2, Whisper encoder, ViT;
* **torch.nn** library modules in user models: an LSTM / GRU model, ``nn.TransformerEncoder``,
  ``nn.MultiheadAttention``, a ``forward`` with an optional ``mask=None`` argument;
* **control-flow** models (:mod:`bench.control_flow`).

:func:`zoo` maps a row name to a :class:`ModelSpec` (how to build the model, how to draw a batch
of its positional inputs); :mod:`bench.coverage` runs them.  timm and transformers import
torchvision, whose import needs :func:`bench._tv_shim.ensure_torchvision_importable` first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench._tv_shim import ensure_torchvision_importable
from bench.control_flow import CONTROL_FLOW_MODELS

__all__ = [
    "TORCHVISION_MODELS",
    "DETECTION_MODELS",
    "TIMM_MODELS",
    "HF_MODELS",
    "NN_MODELS",
    "QUICK_MODELS",
    "ModelSpec",
    "zoo",
]

_NUM_CLASSES = 10

# name -> (input height/width, extra constructor kwargs)
TORCHVISION_MODELS: dict[str, tuple[int, dict[str, Any]]] = {
    "resnet18": (64, {}),
    "mobilenet_v2": (64, {}),
    "mobilenet_v3_small": (64, {}),
    "efficientnet_b0": (64, {}),
    "convnext_tiny": (64, {}),
    "swin_t": (64, {}),
    "vit_b_16": (32, {"image_size": 32}),
    "regnet_y_400mf": (64, {}),
    "shufflenet_v2_x0_5": (64, {}),
    "googlenet": (64, {"aux_logits": False, "init_weights": True}),
    "inception_v3": (96, {"aux_logits": False, "init_weights": True}),
    "mnasnet0_5": (64, {}),
    "densenet121": (64, {}),
    "squeezenet1_0": (64, {}),
}

TIMM_MODELS: dict[str, tuple[int, dict[str, Any]]] = {
    "mobilevit_xxs": (64, {}),
    "swin_tiny_patch4_window7_224": (64, {"img_size": 64, "window_size": 4}),
    "vit_tiny_patch16_224": (64, {"img_size": 64}),
    "levit_128s": (64, {"img_size": 64}),
    "convnext_atto": (64, {}),
    "mixer_s16_224": (64, {"img_size": 64}),
    "poolformer_s12": (64, {}),
    "ghostnet_100": (64, {}),
    "repvgg_a0": (64, {}),
    "hrnet_w18_small": (64, {}),
    "nf_resnet26": (64, {}),
}

_TOKENS, _VOCAB = 16, 1000


@dataclass(frozen=True)
class ModelSpec:
    """One zoo model.

    Attributes:
        name: row name.
        source: family: ``torchvision``, ``detection``, ``timm``, ``transformers``,
            ``torch.nn`` or ``control-flow``.
        build: returns the float model with random weights (called after seeding).
        inputs: ``inputs(batch)`` -> positional inputs drawn from the global RNG.
        input_desc: input size for the table.
    """

    name: str
    source: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int], tuple[Tensor, ...]]
    input_desc: str


def _image_inputs(shape: tuple[int, ...]) -> Callable[[int], tuple[Tensor, ...]]:
    return lambda b: (torch.randn(b, *shape),)


def _torchvision(name: str, kwargs: dict[str, Any]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        ensure_torchvision_importable()
        import torchvision.models as tvm

        return getattr(tvm, name)(weights=None, num_classes=_NUM_CLASSES, **kwargs)

    return build


def _timm(name: str, kwargs: dict[str, Any]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        ensure_torchvision_importable()
        import timm

        return timm.create_model(name, pretrained=False, num_classes=_NUM_CLASSES, **kwargs)

    return build


# -- detection backbones (dict outputs) --------------------------------------------------------
def _resnet_fpn() -> nn.Module:
    ensure_torchvision_importable()
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    return resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)


def _mobilenet_fpn() -> nn.Module:
    ensure_torchvision_importable()
    from torchvision.models.detection.backbone_utils import mobilenet_backbone

    return mobilenet_backbone(backbone_name="mobilenet_v3_small", weights=None, fpn=True,
                              trainable_layers=6)


def _layer_getter() -> nn.Module:
    ensure_torchvision_importable()
    import torchvision.models as tvm
    from torchvision.models._utils import IntermediateLayerGetter

    return IntermediateLayerGetter(tvm.resnet18(weights=None), {"layer2": "c3", "layer4": "c5"})


DETECTION_MODELS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "resnet18_fpn (BackboneWithFPN)": (_resnet_fpn, 64),
    "mobilenet_v3_fpn (BackboneWithFPN)": (_mobilenet_fpn, 64),
    "resnet18 IntermediateLayerGetter": (_layer_getter, 64),
}


# -- transformers tiny configs -----------------------------------------------------------------
def _transformers() -> Any:
    ensure_torchvision_importable()  # transformers imports torchvision when it is installed
    import transformers

    return transformers


def _bert() -> nn.Module:
    tf = _transformers()
    return tf.BertModel(tf.BertConfig(
        vocab_size=_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=64))  # fmt: skip


def _gpt2() -> nn.Module:
    tf = _transformers()
    return tf.GPT2Model(tf.GPT2Config(
        vocab_size=_VOCAB, n_embd=64, n_layer=2, n_head=2, n_positions=64, use_cache=False,
        bos_token_id=0, eos_token_id=0))  # fmt: skip


def _distilbert() -> nn.Module:
    tf = _transformers()
    return tf.DistilBertModel(tf.DistilBertConfig(
        vocab_size=_VOCAB, dim=64, n_layers=2, n_heads=2, hidden_dim=128,
        max_position_embeddings=64))  # fmt: skip


def _t5_encoder() -> nn.Module:
    tf = _transformers()
    return tf.T5EncoderModel(tf.T5Config(
        vocab_size=_VOCAB, d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2,
        use_cache=False))  # fmt: skip


def _wav2vec2() -> nn.Module:
    tf = _transformers()
    return tf.Wav2Vec2Model(tf.Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4))  # fmt: skip


def _whisper_encoder() -> nn.Module:
    tf = _transformers()
    cfg = tf.WhisperConfig(
        vocab_size=_VOCAB, d_model=64, encoder_layers=2, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128,
        decoder_ffn_dim=128, num_mel_bins=16, max_source_positions=32, max_target_positions=32,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)  # fmt: skip
    return tf.WhisperModel(cfg).get_encoder()


def _hf_vit() -> nn.Module:
    tf = _transformers()
    return tf.ViTModel(tf.ViTConfig(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128))  # fmt: skip


def _ids_and_mask(batch: int) -> tuple[Tensor, ...]:
    """Random token ids and an attention mask with the second half of every other row padded."""
    ids = torch.randint(0, _VOCAB, (batch, _TOKENS))
    mask = torch.ones(batch, _TOKENS, dtype=torch.long)
    mask[1::2, _TOKENS // 2:] = 0
    return ids, mask


# name -> (factory, inputs(batch) -> positional inputs, input description)
HF_MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[int], tuple[Tensor, ...]], str]] = {
    "bert (BertModel)": (_bert, _ids_and_mask, f"ids+mask {_TOKENS}"),
    "gpt2 (GPT2Model)": (_gpt2, lambda b: _ids_and_mask(b)[:1], f"ids {_TOKENS}"),
    "distilbert (DistilBertModel)": (_distilbert, _ids_and_mask, f"ids+mask {_TOKENS}"),
    "t5 (T5EncoderModel)": (_t5_encoder, _ids_and_mask, f"ids+mask {_TOKENS}"),
    "wav2vec2 (Wav2Vec2Model)": (_wav2vec2, lambda b: (torch.randn(b, 1600),), "1600 samples"),
    "whisper (WhisperEncoder)": (_whisper_encoder, lambda b: (torch.randn(b, 16, 64),),
                                 "16 mel x 64"),
    "vit (ViTModel)": (_hf_vit, lambda b: (torch.randn(b, 3, 32, 32),), "32px"),
}


# -- torch.nn library modules in user models ----------------------------------------------------
class LSTMClassifier(nn.Module):
    """A 2-layer LSTM over a sequence of features, the last step into a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(12, 32)
        self.lstm = nn.LSTM(32, 48, num_layers=2, batch_first=True)
        self.fc = nn.Linear(48, _NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.lstm(F.relu(self.proj(x)))
        return self.fc(y[:, -1])


class GRUTagger(nn.Module):
    """A bidirectional GRU tagging every step."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(12, 24, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(48, _NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.gru(x)
        return self.fc(y)


class TransformerEncoderNet(nn.Module):
    """``nn.TransformerEncoder`` (2 layers, pre-norm) over feature tokens, mean-pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(32, _NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.encoder(self.embed(x)).mean(1))


class CrossAttentionNet(nn.Module):
    """``nn.MultiheadAttention`` used for cross-attention from learned queries."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 32)
        self.queries = nn.Parameter(torch.randn(4, 32) * 0.5)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc = nn.Linear(32, _NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        kv = self.embed(x)
        q = self.queries.expand(x.size(0), -1, -1)
        out, _ = self.attn(q, kv, kv, need_weights=False)
        return self.fc(out.mean(1))


class MaskKwargNet(nn.Module):
    """A ``forward`` with an optional ``mask=None`` keyword (called without it)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 32)
        self.mix = nn.Linear(32, 32)
        self.fc = nn.Linear(32, _NUM_CLASSES)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h = F.gelu(self.embed(x))
        if mask is not None:
            h = h.masked_fill(~mask[..., None], 0.0)
        return self.fc(self.mix(h).mean(1))


_SEQ = (10, 12)  # steps, features
NN_MODELS: dict[str, Callable[[], nn.Module]] = {
    "lstm classifier (nn.LSTM)": LSTMClassifier,
    "gru tagger (nn.GRU)": GRUTagger,
    "transformer encoder (nn.TransformerEncoder)": TransformerEncoderNet,
    "cross-attention (nn.MultiheadAttention)": CrossAttentionNet,
    "mask=None keyword": MaskKwargNet,
}

QUICK_MODELS = (
    "resnet18", "vit_b_16", "resnet18_fpn (BackboneWithFPN)", "bert (BertModel)",
    "lstm classifier (nn.LSTM)", "mask=None keyword", "sign_branch",
)  # fmt: skip


def zoo() -> dict[str, ModelSpec]:
    """Every model of the suite by name, family by family."""
    specs = [
        ModelSpec(n, "torchvision", _torchvision(n, kw), _image_inputs((3, r, r)), f"{r}px")
        for n, (r, kw) in TORCHVISION_MODELS.items()
    ]
    specs += [ModelSpec(n, "detection", f, _image_inputs((3, r, r)), f"{r}px")
              for n, (f, r) in DETECTION_MODELS.items()]
    specs += [ModelSpec(n, "timm", _timm(n, kw), _image_inputs((3, r, r)), f"{r}px")
              for n, (r, kw) in TIMM_MODELS.items()]
    specs += [ModelSpec(n, "transformers", f, inp, d) for n, (f, inp, d) in HF_MODELS.items()]
    specs += [ModelSpec(n, "torch.nn", f, _image_inputs(_SEQ), "x".join(map(str, _SEQ)))
              for n, f in NN_MODELS.items()]
    specs += [ModelSpec(n, "control-flow", f, _image_inputs(s), "x".join(map(str, s)))
              for n, (f, s) in CONTROL_FLOW_MODELS.items()]
    return {s.name: s for s in specs}
