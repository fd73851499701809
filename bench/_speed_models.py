"""Random-weight denoisers at real model sizes for `bench.speed`, built from config dicts (never downloaded).

* `unet-cifar10`: diffusers' UNet2DModel with the google/ddpm-cifar10-32 config (35.7M parameters,
  3x32x32, self-attention at 16x16).
* `dit-s2`, `dit-b2`: DiTTransformer2DModel shaped as DiT-S/2 and DiT-B/2 (Peebles & Xie 2023,
  table 1: depth 12, width 384 / 768, 6 / 12 heads, patch 2) on 4x32x32 latents, class-conditional
  (1000 classes, `class_labels` input). Output is epsilon only (4 channels, no learned sigma), so the
  DDIM loop reads it as is; the final linear differs from the published 8-channel one by 4 outputs.
* `sd15` (opt-in): the Stable Diffusion 1.5 UNet config (860M) at a 32x32 latent with a 77x768 text
  embedding input.
* `tiny-unet`, `tiny-dit`: the same classes at toy sizes, for the bench's own tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

DDPM_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
    "clip_sample": True,
}
# Latent models do not clip x0 (DiT's and SD's schedulers).
LATENT_SCHEDULE = {**DDPM_SCHEDULE, "clip_sample": False}
SD_SCHEDULE = {
    **LATENT_SCHEDULE,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
}

UNET_CIFAR10 = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 2,
    "block_out_channels": (128, 256, 256, 256),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "act_fn": "silu",
    "attention_head_dim": None,
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
    "center_input_sample": False,
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "mid_block_scale_factor": 1,
    "time_embedding_type": "positional",
}


def dit_config(width: int, heads: int, depth: int = 12, sample_size: int = 32) -> dict:
    return {
        "num_attention_heads": heads,
        "attention_head_dim": width // heads,
        "in_channels": 4,
        "out_channels": 4,
        "num_layers": depth,
        "sample_size": sample_size,
        "patch_size": 2,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": 1000,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-5,
        "attention_bias": True,
    }


SD15_UNET = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

TINY_UNET = {
    "sample_size": 8,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "block_out_channels": (16, 32),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
}


@dataclass(frozen=True)
class ModelCase:
    """One benchmarked denoiser: how to build it, its latent shape, schedule and extra inputs."""

    name: str
    kind: str  # "unet2d" | "dit" | "unet2d-cond"
    config: dict
    sample_shape: tuple[int, int, int]
    schedule: dict
    extra: tuple[str, ...] = ()
    opt_in: bool = False
    notes: str = ""
    seed: int = field(default=0)
    # calibration trajectories ORT's quantize_static reads (None: all); its MinMax calibrator runs an
    # augmented graph with a ReduceMin/ReduceMax output per tensor, too big for DiT-B/2 with more
    qdq_calib_samples: int | None = None

    def build(self) -> nn.Module:
        torch.manual_seed(self.seed)
        if self.kind == "dit":
            from diffusers import DiTTransformer2DModel

            model = DiTTransformer2DModel(**self.config)
        elif self.kind == "unet2d-cond":
            from diffusers import UNet2DConditionModel

            model = UNet2DConditionModel(**self.config)
        else:
            from diffusers import UNet2DModel

            model = UNet2DModel(**self.config)
        return model.eval()

    def extra_inputs(self, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """Conditioning inputs of a batch: random class labels (DiT) or a random text embedding (SD)."""
        gen = torch.Generator().manual_seed(seed)
        out: dict[str, torch.Tensor] = {}
        if "class_labels" in self.extra:
            classes = int(self.config["num_embeds_ada_norm"])
            out["class_labels"] = torch.randint(0, classes, (batch,), generator=gen)
        if "encoder_hidden_states" in self.extra:
            dim = int(self.config["cross_attention_dim"])
            out["encoder_hidden_states"] = torch.randn(batch, 77, dim, generator=gen)
        return out


CASES: dict[str, ModelCase] = {
    c.name: c
    for c in (
        ModelCase("unet-cifar10", "unet2d", UNET_CIFAR10, (3, 32, 32), DDPM_SCHEDULE),
        ModelCase(
            "dit-s2",
            "dit",
            dit_config(384, 6),
            (4, 32, 32),
            LATENT_SCHEDULE,
            ("class_labels",),
            qdq_calib_samples=1,
        ),
        ModelCase(
            "dit-b2",
            "dit",
            dit_config(768, 12),
            (4, 32, 32),
            LATENT_SCHEDULE,
            ("class_labels",),
            qdq_calib_samples=1,
        ),
        ModelCase(
            "sd15",
            "unet2d-cond",
            SD15_UNET,
            (4, 32, 32),
            SD_SCHEDULE,
            ("encoder_hidden_states",),
            opt_in=True,
        ),
        ModelCase("tiny-unet", "unet2d", TINY_UNET, (3, 8, 8), DDPM_SCHEDULE),
        ModelCase(
            "tiny-dit",
            "dit",
            dit_config(32, 2, depth=2, sample_size=8),
            (4, 8, 8),
            LATENT_SCHEDULE,
            ("class_labels",),
        ),
    )
}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
