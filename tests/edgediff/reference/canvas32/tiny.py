"""A tiny canvas32 UNet config for fast tests (same blocks, 8 channels everywhere)."""

from edgediff.reference.canvas32.model import UNET_CONFIG

TINY_UNET = dict(UNET_CONFIG, block_out_channels=(8, 8, 8))
