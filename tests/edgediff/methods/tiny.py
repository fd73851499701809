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


def assert_round_trip_bit_exact(model, recipe, fp, folder, method: str, t: torch.Tensor) -> None:
    """save_quantized -> load_quantized gives the same recipe and bit-identical outputs at every step."""
    from edgediff.quant import load_quantized, save_quantized, set_step

    save_quantized(model, recipe, folder, dict(fp.config), SCHED, {"method": method})
    loaded, recipe2, _, _ = load_quantized(folder)
    assert recipe2 == recipe
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        for step in range(BASE.num_steps):
            set_step(model, step)
            set_step(loaded, step)
            torch.testing.assert_close(loaded(x, t).sample, model(x, t).sample, rtol=0, atol=0)
