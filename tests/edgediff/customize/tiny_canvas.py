"""A tiny random label-conditioned UNet2DConditionModel like canvas32 (1 channel, two slots), 16x16."""

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from edgediff.models.label_table import LabelTable
from edgediff.models.loading import LoadedModel

from ..models.tiny import SD_SCHEDULER, cond_unet, save_pipeline_folder


def canvas_unet() -> UNet2DConditionModel:
    return cond_unet(sample_size=16, in_channels=1, out_channels=1)


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
