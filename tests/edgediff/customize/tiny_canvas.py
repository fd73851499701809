"""A tiny random label-conditioned UNet2DConditionModel like canvas32 (1 channel, two slots), 16x16."""

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from edgediff.models.label_table import LabelTable
from edgediff.models.loading import LoadedModel

from ..models.tiny import SD_SCHEDULER, save_pipeline_folder


def canvas_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    ).eval()


def canvas_table() -> LabelTable:
    return LabelTable(torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(0)))


def save_canvas(root: Path) -> Path:
    folder = save_pipeline_folder(canvas_unet(), root / "canvas", SD_SCHEDULER)
    canvas_table().save(folder)
    return folder


def loaded_canvas() -> LoadedModel:
    return LoadedModel(
        unet=canvas_unet(),
        scheduler_config=dict(SD_SCHEDULER),
        path=Path("."),
        quantized=False,
        source_model=None,
        set_step=None,
        meta={},
        label_table=canvas_table(),
    )
