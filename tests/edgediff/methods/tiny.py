"""A tiny UNet2DModel (random weights, built from a config) and a scheduler config for method tests."""

import torch
from diffusers import DDPMScheduler, UNet2DModel

from edgediff.methods.efficientdm import EfficientDMConfig

SCHED = {
    k: v for k, v in dict(DDPMScheduler(num_train_timesteps=1000).config).items() if not k.startswith("_")
}
# 3 sampler steps, 1 trajectory (3 updates), batch 2, 4 calibration trajectories
BASE = EfficientDMConfig(num_steps=3, trajectories=1, batch_size=2, calib_samples=4, lora_rank=4)


def tiny_unet(seed: int = 0) -> UNet2DModel:
    """8x8, 1 channel; has conv_shortcut, a downsampler, attention and two up blocks."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    ).eval()
