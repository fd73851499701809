"""Where a model's parts live: a diffusers model folder, a pipeline folder, or a named reference.

- `reference` / `reference:NAME`: a bundled pipeline folder (`edgediff.reference.REFERENCES`);
- a pipeline folder (`model_index.json`): the denoiser in `unet/` or `transformer/`, the
  schedule in `scheduler/`;
- a model folder (`config.json` with `_class_name`), e.g. a pipeline's `transformer/`: the
  schedule from the enclosing pipeline's `scheduler/` when there is one;
- a quantized folder (`recipe.json`, written by `edgediff quantize`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgediff.errors import EdgediffError
from edgediff.reference import is_reference, reference_folder

DENOISER_DIRS = ("unet", "transformer")
SCHEDULER_FILE = "scheduler_config.json"


@dataclass(frozen=True)
class ModelFolder:
    """`root` as given (resolved for references); `denoiser`: the folder with the model's
    `config.json`; `scheduler`: the `scheduler_config.json` file, or None when there is none."""

    root: Path
    denoiser: Path
    scheduler: Path | None
    class_name: str


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or a one-line error naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgediffError(f"cannot read {path} ({type(exc).__name__}); re-save the model") from exc
    if not isinstance(data, dict):
        raise EdgediffError(f"{path} is not a JSON object; re-save the model")
    return data


def is_quantized_folder(path: Path) -> bool:
    return (Path(path) / "recipe.json").is_file()


def root_path(model: str | Path) -> Path:
    """The folder named by `model` (a path, `reference` or `reference:NAME`); it must exist."""
    path = reference_folder(str(model)) if is_reference(model) else Path(model)
    if not path.exists():
        raise EdgediffError(f"model folder not found: {path} (pass an existing folder or 'reference')")
    return path


def _denoiser_dir(path: Path) -> Path | None:
    if (path / "model_index.json").is_file():
        index = read_json(path / "model_index.json")
        names = [n for n in DENOISER_DIRS if n in index and (path / n).is_dir()]
        if not names:
            raise EdgediffError(
                f"pipeline {path} has no unet/ or transformer/ model; edgediff needs the denoiser"
            )
        return path / names[0]
    for name in DENOISER_DIRS:
        if (path / name / "config.json").is_file():
            return path / name
    return path if (path / "config.json").is_file() else None


def find_model_folder(model: str | Path) -> ModelFolder:
    """Locate the denoiser and scheduler of an FP diffusers folder (one-line error otherwise)."""
    root = root_path(model)
    denoiser = _denoiser_dir(root)
    if denoiser is None:
        raise EdgediffError(
            f"{root} is not a diffusers model folder (expected model_index.json, unet/, transformer/ "
            "or config.json); pass a folder written by save_pretrained or 'reference'"
        )
    class_name = read_json(denoiser / "config.json").get("_class_name")
    if not isinstance(class_name, str):
        raise EdgediffError(f"{denoiser / 'config.json'} names no model class (_class_name); re-save it")
    candidates = [denoiser.parent / "scheduler" / SCHEDULER_FILE, denoiser / SCHEDULER_FILE]
    if denoiser == root:
        candidates = [root / SCHEDULER_FILE, root / "scheduler" / SCHEDULER_FILE]
        if (root.parent / "model_index.json").is_file():
            candidates.append(root.parent / "scheduler" / SCHEDULER_FILE)
    scheduler = next((c for c in candidates if c.is_file()), None)
    return ModelFolder(root=root, denoiser=denoiser, scheduler=scheduler, class_name=class_name)
