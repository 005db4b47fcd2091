"""The capture-coverage zoo: timm architectures, tiny transformers models and control-flow models.

:func:`zoo` maps a row name to a :class:`ModelSpec` (how to build the random-weight model and
draw its inputs); :mod:`bench.coverage` runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bench._tv_shim import ensure_torchvision_importable
from bench.control_flow import CONTROL_FLOW_MODELS

__all__ = ["TIMM_MODELS", "HF_MODELS", "QUICK_MODELS", "ModelSpec", "zoo"]

# name -> (input height/width, extra timm.create_model kwargs).  Small inputs where the
# architecture allows; transformers at a reduced img_size (fewer tokens, same structure).
TIMM_MODELS: dict[str, tuple[int, dict[str, Any]]] = {
    "resnet18": (64, {}),
    "resnet50": (64, {}),
    "mobilenetv2_100": (64, {}),
    "mobilenetv3_small_100": (64, {}),
    "efficientnet_b0": (64, {}),
    "densenet121": (64, {}),
    "regnetx_002": (64, {}),
    "convnext_atto": (64, {}),
    "ghostnet_100": (64, {}),
    "mnasnet_100": (64, {}),
    "rexnet_100": (64, {}),
    "dla34": (64, {}),
    "inception_v3": (96, {}),
    "xception41": (64, {}),
    "cspresnet50": (64, {}),
    "res2net50_14w_8s": (64, {}),
    "repvgg_a0": (64, {}),
    "hrnet_w18_small": (64, {}),
    "poolformer_s12": (64, {}),
    "mobilevit_xxs": (64, {}),
    "levit_128s": (64, {"img_size": 64}),
    "vit_tiny_patch16_224": (64, {"img_size": 64}),
    "deit_tiny_patch16_224": (64, {"img_size": 64}),
    "swin_tiny_patch4_window7_224": (64, {"img_size": 64, "window_size": 4}),
    "mixer_s16_224": (64, {"img_size": 64}),
    "nf_resnet26": (64, {}),
}

_TOKENS, _VOCAB = 16, 1000


def _bert() -> nn.Module:
    import transformers as tf

    cfg = tf.BertConfig(
        vocab_size=_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=64, num_labels=4,
    )  # fmt: skip
    return tf.BertForSequenceClassification(cfg)


def _gpt2() -> nn.Module:
    import transformers as tf

    cfg = tf.GPT2Config(
        vocab_size=_VOCAB, n_embd=64, n_layer=2, n_head=2, n_positions=64, use_cache=False,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return tf.GPT2LMHeadModel(cfg)


def _t5_encoder() -> nn.Module:
    import transformers as tf

    cfg = tf.T5Config(
        vocab_size=_VOCAB, d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2,
        use_cache=False,
    )  # fmt: skip
    return tf.T5EncoderModel(cfg)


def _hf_vit() -> nn.Module:
    import transformers as tf

    cfg = tf.ViTConfig(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, num_labels=10,
    )  # fmt: skip
    return tf.ViTForImageClassification(cfg)


def _ids_and_mask(batch: int) -> tuple[Tensor, ...]:
    """Random token ids and an attention mask with the second half of every other row padded."""
    ids = torch.randint(0, _VOCAB, (batch, _TOKENS))
    mask = torch.ones(batch, _TOKENS, dtype=torch.long)
    mask[1::2, _TOKENS // 2 :] = 0
    return ids, mask


# name -> (factory, inputs(batch) -> positional inputs, input description)
HF_MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[int], tuple[Tensor, ...]], str]] = {
    "bert (BertForSequenceClassification)": (_bert, _ids_and_mask, f"ids+mask {_TOKENS}"),
    "gpt2 (GPT2LMHeadModel)": (_gpt2, lambda b: _ids_and_mask(b)[:1], f"ids {_TOKENS}"),
    "t5 (T5EncoderModel)": (_t5_encoder, _ids_and_mask, f"ids+mask {_TOKENS}"),
    "vit (ViTForImageClassification)": (_hf_vit, lambda b: (torch.randn(b, 3, 32, 32),), "32px"),
}

QUICK_MODELS = (
    "resnet18", "mobilenetv3_small_100", "vit_tiny_patch16_224",
    "bert (BertForSequenceClassification)", "sign_branch", "untraceable_block",
)  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    """One zoo model.

    Attributes:
        name: row name.
        source: ``timm``, ``transformers`` or ``control-flow``.
        build: returns the float model with random weights (called after seeding).
        inputs: ``inputs(batch)`` -> positional inputs drawn from the global RNG.
        input_desc: input size for the table.
    """

    name: str
    source: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int], tuple[Tensor, ...]]
    input_desc: str


def _timm_builder(name: str, kwargs: dict[str, Any]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        ensure_torchvision_importable()
        import timm

        return timm.create_model(name, pretrained=False, num_classes=100, **kwargs)

    return build


def _image_inputs(shape: tuple[int, ...]) -> Callable[[int], tuple[Tensor, ...]]:
    return lambda b: (torch.randn(b, *shape),)


def zoo() -> dict[str, ModelSpec]:
    """Every model of the suite by name: timm, then transformers, then control flow."""
    specs = [
        ModelSpec(n, "timm", _timm_builder(n, kw), _image_inputs((3, r, r)), f"{r}px")
        for n, (r, kw) in TIMM_MODELS.items()
    ]
    specs += [ModelSpec(n, "transformers", f, inp, d) for n, (f, inp, d) in HF_MODELS.items()]
    specs += [
        ModelSpec(n, "control-flow", f, _image_inputs(s), "x".join(map(str, s)))
        for n, (f, s) in CONTROL_FLOW_MODELS.items()
    ]
    return {s.name: s for s in specs}
