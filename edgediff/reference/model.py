"""The reference diffusion model: a 1.1M-parameter diffusers `UNet2DModel` on 16x16 digits.

Configuration from docs/reference-benchmark.md (Q2) with `v_prediction`, which step distillation
assumes. The bundled weights live in `assets/digits16-ddpm/` as a diffusers `DDPMPipeline`
folder (`model_index.json`, `unet/`, `scheduler/`), loadable offline with `from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from edgediff.errors import EdgediffError

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_MODEL = ASSETS / "digits16-ddpm"
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
)


def build_unet(seed: int = 0) -> UNet2DModel:
    """A freshly initialised reference UNet (seeded)."""
    torch.manual_seed(seed)
    return UNet2DModel(**UNET_CONFIG)


def build_scheduler() -> DDPMScheduler:
    """The training noise schedule: cosine (`squaredcos_cap_v2`), 1,000 steps, v-prediction."""
    return DDPMScheduler(**SCHEDULER_CONFIG)


def resolve_model_path(model: str | Path) -> Path:
    """Map `"reference"` to the bundled folder; check that any other path is a model folder."""
    path = BUNDLED_MODEL if str(model) == "reference" else Path(model)
    if not path.exists():
        raise EdgediffError(f"model folder not found: {path} (pass an existing folder or 'reference')")
    if not (path / "unet").is_dir() and not (path / "config.json").is_file():
        raise EdgediffError(
            f"{path} is not a diffusers model folder (expected unet/ or config.json); "
            "pass a folder written by save_pretrained or 'reference'"
        )
    return path


def load_pipeline_parts(model: str | Path) -> tuple[UNet2DModel, DDPMScheduler]:
    """Load `(unet, scheduler)` from a local diffusers folder, never from a hub."""
    path = resolve_model_path(model)
    try:
        if (path / "unet").is_dir():
            unet = UNet2DModel.from_pretrained(path / "unet", local_files_only=True)
            sched_dir = path / "scheduler"
            scheduler = (
                DDPMScheduler.from_pretrained(sched_dir, local_files_only=True)
                if sched_dir.is_dir()
                else build_scheduler()
            )
        else:
            unet = UNet2DModel.from_pretrained(path, local_files_only=True)
            scheduler = build_scheduler()
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgediffError(f"cannot load model from {path}: {first}") from exc
    unet.eval()
    return unet, scheduler


def save_pipeline(unet: UNet2DModel, scheduler: DDPMScheduler, out: Path) -> None:
    """Write a `DDPMPipeline` folder (safetensors) atomically: temporary folder, then rename."""
    from diffusers import DDPMPipeline

    from edgediff.utils.atomic import atomic_dir

    with atomic_dir(out) as tmp:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
