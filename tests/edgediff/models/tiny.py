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


def cond_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
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
    ).eval()


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


def dit(learned_sigma: bool = True) -> DiTTransformer2DModel:
    torch.manual_seed(0)
    return DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8 if learned_sigma else 4,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_num_groups=8,
    ).eval()


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


def latte() -> LatteTransformer3DModel:
    """8 frames x 1 channel x 16x16, patch 2, 2 layers (docs/reference-benchmark.md Q6)."""
    torch.manual_seed(0)
    return LatteTransformer3DModel(
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
    ).eval()


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
