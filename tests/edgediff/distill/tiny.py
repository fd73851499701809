"""The tiny UNet2DModel config shared by the distillation tests (8x8; `TINY16` is the 16x16 one)."""

TINY_UNET = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
)
TINY16 = {**TINY_UNET, "sample_size": 16}
