"""Tiny random-weight diffusers models built from configs, saved as model or pipeline folders."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    DiTTransformer2DModel,
    LatteTransformer3DModel,
    PixArtTransformer2DModel,
    UNet2DConditionModel,
    UNet2DModel,
)

# Stable Diffusion 1.x's scheduler config (PNDM in the released folders, read by DDIM as is).
SD_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
}
DDPM_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "clip_sample": True,
    "timestep_spacing": "trailing",
}


COND_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=16,
    attention_head_dim=4,
    norm_num_groups=8,
)


def cond_unet(**overrides) -> UNet2DConditionModel:
    """A two-level cross-attention UNet; `overrides` replace config entries (seeded weights)."""
    torch.manual_seed(0)
    return UNet2DConditionModel(**{**COND_UNET, **overrides}).eval()


def class_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        num_class_embeds=10,
    ).eval()


def dit(learned_sigma: bool = True, **overrides) -> DiTTransformer2DModel:
    torch.manual_seed(0)
    config = dict(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8 if learned_sigma else 4,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_num_groups=8,
    )
    return DiTTransformer2DModel(**{**config, **overrides}).eval()


def pixart(sample_size: int = 8) -> PixArtTransformer2DModel:
    torch.manual_seed(0)
    return PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=sample_size,
        patch_size=2,
        cross_attention_dim=16,
        caption_channels=12,
        norm_num_groups=8,
    ).eval()


def latte(**overrides) -> LatteTransformer3DModel:
    """8 frames x 1 channel x 16x16, patch 2, 2 layers (docs/reference-benchmark.md Q6)."""
    torch.manual_seed(0)
    config = dict(
        num_attention_heads=4,
        attention_head_dim=4,
        in_channels=1,
        out_channels=1,
        num_layers=2,
        sample_size=16,
        patch_size=2,
        norm_type="ada_norm_single",
        caption_channels=16,
        cross_attention_dim=16,
        video_length=8,
    )
    return LatteTransformer3DModel(**{**config, **overrides}).eval()


BUILDERS = {
    "cond_unet": cond_unet,
    "class_unet": class_unet,
    "dit": dit,
    "pixart": pixart,
    "latte": latte,
}


def save_model_folder(model, out: Path) -> Path:
    model.save_pretrained(out, safe_serialization=True)
    return out


def save_pipeline_folder(model, out: Path, scheduler: dict = DDPM_SCHEDULER) -> Path:
    """A pipeline folder: `unet/` or `transformer/`, `scheduler/`, a hand-written `model_index.json`."""
    part = "unet" if "UNet" in type(model).__name__ else "transformer"
    model.save_pretrained(out / part, safe_serialization=True)
    (out / "scheduler").mkdir(parents=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index = {
        "_class_name": "DiffusionPipeline",
        part: ["diffusers", type(model).__name__],
        "scheduler": ["diffusers", scheduler["_class_name"]],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


def cond_file(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


# --------------------------------------------------------------------------- text-to-image pipelines
#: Words the small CLIP-layout vocabulary spells as one token each (anything else falls back to bytes).
WORDS = ("a", "photo", "of", "the", "cat", "dog", "red", "blue", "green", "house", "tree", "in", "snow")
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table (every byte a one-character token)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_vocabulary(words=WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary layout on a small word list: the 256 byte characters, the same with `</w>`,
    one merge chain per word (left to right, so every listed word is one token), then BOS and EOS."""
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for word in words:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
                tokens.append(pair[0] + pair[1])
            parts = [pair[0] + pair[1], *parts[2:]]
    tokens = list(dict.fromkeys(tokens)) + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(words=WORDS):
    """A `tokenizers` Tokenizer configured as transformers' CLIPTokenizer (BPE with `</w>`, NFC +
    whitespace + lowercase normalizer, CLIP's split regex, byte-level, BOS/EOS post-processor)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab, merges = clip_vocabulary(words)
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=EOS,
        )
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    split = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([BOS, EOS])
    tok.post_processor = processors.RobertaProcessing((EOS, vocab[EOS]), (BOS, vocab[BOS]), False, False)
    return tok


def save_clip_tokenizer(out: Path, max_length: int, words=WORDS) -> Path:
    """The CLIPTokenizer folder layout: vocab.json, merges.txt, tokenizer.json, special_tokens_map.json,
    tokenizer_config.json (`model_max_length` = `max_length`)."""
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocabulary(words)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    clip_tokenizer(words).save(str(out / "tokenizer.json"))
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, **specials}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


def text_encoder(vocab_size: int, max_length: int = 16, hidden: int = 16, seed: int = 0):
    """A tiny random CLIPTextModel (2 layers, 2 heads) whose width matches `cond_unet`'s 16."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vocab, _ = clip_vocabulary()
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_length,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
    )
    return CLIPTextModel(config).eval()


def vae(seed: int = 0):
    """A tiny random AutoencoderKL: 4 latent channels, downsampling 2 (latent 8x8 -> 16x16 image)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
        scaling_factor=0.18215,
    ).eval()


def save_sd_pipeline(out: Path, max_length: int = 16, unet=None, scheduler: dict = SD_SCHEDULER) -> Path:
    """A Stable-Diffusion-layout pipeline folder that `StableDiffusionPipeline.from_pretrained` loads
    offline: tokenizer/ (CLIP layout), text_encoder/, unet/, vae/, scheduler/, model_index.json."""
    out = Path(out)
    save_clip_tokenizer(out / "tokenizer", max_length)
    vocab, _ = clip_vocabulary()
    text_encoder(len(vocab), max_length).save_pretrained(out / "text_encoder", safe_serialization=True)
    (unet if unet is not None else cond_unet()).save_pretrained(out / "unet", safe_serialization=True)
    vae().save_pretrained(out / "vae", safe_serialization=True)
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out
