"""The reference diffusion model: a 1.1M-parameter diffusers `UNet2DModel` on 16x16 digits.

Configuration from docs/reference-benchmark.md (Q2) with `v_prediction`, which step distillation
assumes. The bundled weights live in `assets/digits16-ddpm/` as a diffusers `DDPMPipeline`
folder (`model_index.json`, `unet/`, `scheduler/`), loadable offline with `from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from edgediff.reference import ASSETS, REFERENCES

BUNDLED_MODEL = REFERENCES["digits16"]
BUNDLED_CLASSIFIER = ASSETS / "digits16-classifier"

UNET_CONFIG: dict = dict(
    sample_size=16,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=8,
)

SCHEDULER_CONFIG: dict = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="v_prediction",
    clip_sample=True,
    clip_sample_range=1.0,
    # how DDIM samples it (edgediff.sampling.make_ddim reads both from the saved config):
    timestep_spacing="trailing",
    set_alpha_to_one=True,
)


def build_unet(seed: int = 0) -> UNet2DModel:
    """A freshly initialised reference UNet (seeded)."""
    torch.manual_seed(seed)
    return UNet2DModel(**UNET_CONFIG)


def build_scheduler() -> DDPMScheduler:
    """The training noise schedule: cosine (`squaredcos_cap_v2`), 1,000 steps, v-prediction."""
    return DDPMScheduler.from_config(SCHEDULER_CONFIG)


def resolve_model_path(model: str | Path) -> Path:
    """Map `reference[:NAME]` to its bundled folder; check any other path is a model folder."""
    from edgediff.models.loading import resolve_model_path as resolve

    return resolve(model)


def load_pipeline_parts(model: str | Path) -> tuple[torch.nn.Module, DDPMScheduler]:
    """Load `(unet, scheduler)` of an unconditional `UNet2DModel` folder (what step distillation
    trains), never from a hub; other models get a one-line error."""
    from edgediff.errors import EdgediffError
    from edgediff.models.loading import load_fp

    loaded = load_fp(model)
    if loaded.signature.class_name != "UNet2DModel" or loaded.conditions:
        raise EdgediffError(
            f"{loaded.path} holds a {loaded.signature.class_name}"
            f"{' with ' + ', '.join(loaded.condition_names) if loaded.conditions else ''}; "
            "this command supports unconditional UNet2DModel models"
        )
    return loaded.unet, DDPMScheduler.from_config(loaded.scheduler_config)


def save_pipeline(unet: UNet2DModel, scheduler: DDPMScheduler, out: Path) -> None:
    """Write a `DDPMPipeline` folder (safetensors) atomically: temporary folder, then rename."""
    from diffusers import DDPMPipeline

    from edgediff.utils.atomic import atomic_dir

    with atomic_dir(out) as tmp:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
