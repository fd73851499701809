"""Load any model folder edgediff works with: an FP diffusers model or pipeline folder, a named
reference, or a quantized folder, as one typed `LoadedModel`.

The denoiser class is read from the config's `_class_name` and must be registered in
`edgediff.models.signature`; nothing is ever downloaded (`local_files_only`). The scheduler
config is kept as recorded in the folder (`edgediff.sampling.make_ddim` honours its spacing and
final alpha). A quantized folder (written by `edgediff quantize`) holds `recipe.json`; it
records the FP model it came from so that paired metrics can compare against it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from edgediff.errors import EdgediffError
from edgediff.models.folder import (
    find_model_folder,
    is_quantized_folder,
    read_json,
    root_path,
)
from edgediff.models.label_table import LabelTable
from edgediff.models.signature import ConditionInput, ModelSignature, signature_for_class
from edgediff.reference import is_reference

log = logging.getLogger(__name__)

__all__ = ["LoadedModel", "is_quantized_folder", "load_model", "resolve_model_path"]


@dataclass
class LoadedModel:
    """A denoiser and everything a stage needs to call and sample it.

    `unet`: the denoiser module (any supported class; also reachable as `model`);
    `signature`: its class's call contract; `conditions`: the conditions this config uses,
    sizes resolved (`encoder_hidden_states` width, say); `scheduler_config`: as recorded in the
    folder; `label_table`: the folder's `conditioning/` table, if any; `path`: the folder.
    """

    unet: torch.nn.Module
    scheduler_config: dict
    path: Path
    quantized: bool
    source_model: Path | None
    set_step: Callable[[int], None] | None
    meta: dict
    signature: ModelSignature | None = None
    conditions: tuple[ConditionInput, ...] = ()
    label_table: LabelTable | None = None

    def __post_init__(self):
        if self.signature is None:
            self.signature = signature_for_class(type(self.unet).__name__)
            self.conditions = self.signature.conditions_for(self.unet.config)

    @property
    def model(self) -> torch.nn.Module:
        return self.unet

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's shape, `(C, H, W)` or `(C, F, H, W)` for video latents."""
        return self.signature.sample_shape(self.unet.config)

    @property
    def condition_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.conditions)


def resolve_model_path(model: str | Path) -> Path:
    """The folder of `model` (`reference`, `reference:NAME`, a model, pipeline or quantized folder)."""
    path = root_path(model)
    if not is_quantized_folder(path):
        find_model_folder(path)
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _default_scheduler_config(where: Path) -> dict:
    from edgediff.reference.model import SCHEDULER_CONFIG

    log.warning(
        "no scheduler_config.json found for %s; using the reference model's schedule (%s, %s)",
        where,
        SCHEDULER_CONFIG["beta_schedule"],
        SCHEDULER_CONFIG["prediction_type"],
    )
    return dict(SCHEDULER_CONFIG)


def _check_table(loaded: LoadedModel) -> None:
    table = loaded.label_table
    if table is None:
        return
    ehs = next((c for c in loaded.conditions if c.name == "encoder_hidden_states"), None)
    if ehs is None:
        raise EdgediffError(
            f"{loaded.path} has a conditioning/ label table but {loaded.signature.class_name} "
            "takes no encoder_hidden_states; remove conditioning/ or use a cross-attention model"
        )
    width = table.embeddings.shape[-1]
    if ehs.shape[-1] != width:
        raise EdgediffError(
            f"label embeddings in {loaded.path / 'conditioning'} are {width} wide but the model's "
            f"encoder_hidden_states are {ehs.shape[-1]}; re-save the label table"
        )


_WEIGHTS = "diffusion_pytorch_model"


def _variant(denoiser: Path) -> str | None:
    """`fp16` for a folder that holds only fp16-variant weights (as many hub snapshots do)."""
    plain = [f"{_WEIGHTS}.safetensors", f"{_WEIGHTS}.bin", f"{_WEIGHTS}.safetensors.index.json"]
    if any((denoiser / name).is_file() for name in plain):
        return None
    return "fp16" if any(denoiser.glob(f"{_WEIGHTS}*.fp16.*")) else None


def load_fp(model: str | Path) -> LoadedModel:
    """Load an FP diffusers model/pipeline folder or named reference (never downloads)."""
    import diffusers

    folder = find_model_folder(model)
    signature = signature_for_class(folder.class_name)
    cls = getattr(diffusers, folder.class_name, None)
    if cls is None:
        raise EdgediffError(f"this diffusers ({diffusers.__version__}) has no class {folder.class_name}")
    try:
        net = cls.from_pretrained(folder.denoiser, local_files_only=True, variant=_variant(folder.denoiser))
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise EdgediffError(f"cannot load model from {folder.denoiser}: {_first_line(exc)}") from exc
    net.eval()
    scheduler_config = (
        read_json(folder.scheduler) if folder.scheduler else _default_scheduler_config(folder.denoiser)
    )
    loaded = LoadedModel(
        unet=net,
        scheduler_config=scheduler_config,
        path=folder.root,
        quantized=False,
        source_model=None,
        set_step=None,
        meta={},
        signature=signature,
        conditions=signature.conditions_for(net.config),
        label_table=LabelTable.load(folder.root) or LabelTable.load(folder.denoiser),
    )
    _check_table(loaded)
    return loaded


def _reference_ddim_choices(scheduler_config: dict, source: str | None) -> dict:
    """A quantized folder of a bundled reference written before the reference recorded its DDIM
    choices holds the DDPM default `leading` and no `set_alpha_to_one`; it was calibrated and
    sampled with the reference's trailing grid and final alpha 1, which it keeps."""
    if source is None or not is_reference(source) or "set_alpha_to_one" in scheduler_config:
        return scheduler_config
    folder = find_model_folder(source)
    recorded = read_json(folder.scheduler) if folder.scheduler else {}
    keys = ("timestep_spacing", "set_alpha_to_one")
    return {**scheduler_config, **{k: recorded[k] for k in keys if k in recorded}}


def load_quantized_model(path: Path) -> LoadedModel:
    """Load an edgediff quantized folder (`recipe.json`)."""
    from edgediff.quant import set_step
    from edgediff.quant.io import load_quantized

    net, _recipe, scheduler_config, meta = load_quantized(path)
    source = meta.get("source_model")
    source_path = resolve_model_path(source) if source else None
    net.eval()
    loaded = LoadedModel(
        unet=net,
        scheduler_config=_reference_ddim_choices(dict(scheduler_config), source),
        path=Path(path),
        quantized=True,
        source_model=source_path,
        set_step=lambda i: set_step(net, i),
        meta=meta,
        label_table=LabelTable.load(path),
    )
    _check_table(loaded)
    return loaded


def load_model(model: str | Path) -> LoadedModel:
    """Load an FP model (`reference[:NAME]`, a diffusers model or pipeline folder) or a quantized folder."""
    if not is_reference(model) and is_quantized_folder(Path(model)):
        return load_quantized_model(Path(model))
    return load_fp(model)
