"""The text-to-image parts of a diffusers pipeline folder besides the denoiser: tokenizer,
text encoder and VAE (`model_index.json` with `tokenizer/`, `text_encoder/`, `vae/`).

A quantized folder written from such a pipeline does not copy them: `edgediff quantize` records
a checked reference (`parts_record`: the pipeline's path and a sha256 of each part's files), and
the export reads them back through `parts_from_record`, which refuses parts that changed or moved.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from edgediff.errors import EdgediffError
from edgediff.models.folder import read_json

PARTS = ("tokenizer", "text_encoder", "vae")


@dataclass(frozen=True)
class PipelineParts:
    """Folders of a pipeline's tokenizer, text encoder and VAE, and the text encoder's class
    (`model_index.json`'s entry, e.g. `CLIPTextModel`)."""

    root: Path
    tokenizer: Path
    text_encoder: Path
    vae: Path
    text_encoder_class: str

    def folders(self) -> dict[str, Path]:
        return {name: getattr(self, name) for name in PARTS}


def text_pipeline_parts(path: str | Path) -> PipelineParts | None:
    """The parts of a text-to-image pipeline folder, or None when `path` is not one (a model
    folder, or a pipeline without a tokenizer, text encoder or VAE)."""
    root = Path(path)
    if not (root / "model_index.json").is_file():
        return None
    index = read_json(root / "model_index.json")
    if not all(isinstance(index.get(p), list) and index[p][0] and (root / p).is_dir() for p in PARTS):
        return None
    return PipelineParts(
        root=root,
        tokenizer=root / "tokenizer",
        text_encoder=root / "text_encoder",
        vae=root / "vae",
        text_encoder_class=str(index["text_encoder"][1]),
    )


def folder_sha256(folder: Path) -> str:
    """sha256 over a folder's files (relative path and bytes, in sorted order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def parts_record(parts: PipelineParts) -> dict:
    """The checked reference a quantized folder keeps: the pipeline's absolute path, the text
    encoder class and the sha256 of each part."""
    return {
        "root": str(parts.root.resolve()),
        "text_encoder_class": parts.text_encoder_class,
        "sha256": {name: folder_sha256(folder) for name, folder in parts.folders().items()},
    }


def parts_from_record(record: dict, where: Path) -> PipelineParts:
    """The parts a quantized folder `where` refers to, after checking that each is unchanged."""
    root = Path(str(record.get("root", "")))
    parts = text_pipeline_parts(root)
    if parts is None:
        raise EdgediffError(
            f"{where} was quantized from the pipeline {root}, which is gone or has no tokenizer/, "
            "text_encoder/ and vae/; restore it there or quantize again"
        )
    for name, folder in parts.folders().items():
        if folder_sha256(folder) != record.get("sha256", {}).get(name):
            raise EdgediffError(
                f"{folder} changed since {where} was quantized (sha256 differs); restore it or quantize again"
            )
    return parts
