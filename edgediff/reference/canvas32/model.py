"""The canvas32 denoiser: a 1.04M-parameter `UNet2DConditionModel` plus its label table.

Self- and cross-attention at 16x16 and 8x8 (and in the 8x8 mid block); the cross-attention
context is the two slot tokens `LabelTable.encode(labels)` (dim 32). `attention_head_dim=2` is
diffusers' legacy name for the number of heads (2 heads, of width 16 at 16x16 and 32 at 8x8).
Sized for CPU training: one step of batch 64 costs 1.05 CPU-s on one thread, against 2.1 s for
channels (32, 64, 64) with 2 heads and 2.9 s with 8 heads (fused attention is slow on narrow heads).

The saved folder is a pipeline folder: `model_index.json`, `unet/`, `scheduler/` (a
`DDIMScheduler` config: the training schedule plus the sampler settings it is evaluated with,
trailing spacing and final alpha-bar 1) and `conditioning/` (the label table).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from torch import nn

from edgediff.models.label_table import LabelTable
from edgediff.reference.canvas32.data import CANVAS, SLOT_CLASSES, SLOTS
from edgediff.reference.model import SCHEDULER_CONFIG

COND_DIM = 32

UNET_CONFIG: dict = dict(
    sample_size=CANVAS,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(16, 32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    cross_attention_dim=COND_DIM,
    attention_head_dim=2,
    norm_num_groups=8,
)

# The digits model's training schedule (cosine, 1,000 steps, v-prediction, x0 clipped to
# [-1, 1]) recorded with the DDIM settings the model is sampled with.
SCHEDULER_CONFIG_FULL: dict = dict(SCHEDULER_CONFIG, timestep_spacing="trailing", set_alpha_to_one=True)


def build_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULER_CONFIG_FULL)


class Canvas32Denoiser(nn.Module):
    """The UNet and the label table as one module, so that optimiser and EMA cover both."""

    def __init__(self, unet: UNet2DConditionModel, embeddings: torch.Tensor) -> None:
        super().__init__()
        self.unet = unet
        self.label_embeddings = nn.Parameter(embeddings.clone())

    def table(self) -> LabelTable:
        return LabelTable(self.label_embeddings)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The v-prediction for `labels (B, 2)` (rows of the table, null row included)."""
        return self.unet(x, t, encoder_hidden_states=self.table().encode(labels)).sample


def build_denoiser(seed: int = 0, unet_config: dict | None = None) -> Canvas32Denoiser:
    """A freshly initialised (seeded) UNet and table; table rows start as N(0, 1)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**(unet_config or UNET_CONFIG))
    dim = unet.config.cross_attention_dim
    embeddings = torch.randn(SLOTS, SLOT_CLASSES + 1, dim)
    return Canvas32Denoiser(unet, embeddings)


def save_pipeline(denoiser: Canvas32Denoiser, out: Path) -> None:
    """Write the pipeline folder atomically (temporary folder, then rename)."""
    import diffusers

    from edgediff.utils.atomic import atomic_dir

    with atomic_dir(Path(out)) as tmp:
        denoiser.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        build_scheduler().save_pretrained(tmp / "scheduler")
        LabelTable(denoiser.label_embeddings.detach().cpu()).save(tmp)
        index = {
            "_class_name": "DiffusionPipeline",
            "_diffusers_version": diffusers.__version__,
            "unet": ["diffusers", "UNet2DConditionModel"],
            "scheduler": ["diffusers", "DDIMScheduler"],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
