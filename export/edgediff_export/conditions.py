"""Which conditioning inputs a model's graph gets, their example tensors, and the manifest's
`conditioning` section (the runtime's `ConditioningSpec`).

The class-level contract is `edgediff.models.signature` (`signature_for_class`); this module
decides from a model's config which of the signature's conditions the config uses (a
class-conditional `UNet2DModel` has `class_labels`, a plain one none) and what the bundle's
single user-facing condition is: a `LabelTable` (labels -> `encoder_hidden_states`), class labels
(DiT), or raw embeddings (`--cond`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgediff.models.label_table import CONDITIONING_DIR, EMBEDDINGS_FILE, LABELS_JSON, LabelTable
from edgediff.models.signature import ConditionInput, ModelSignature, signature_for_class
from edgediff_export.errors import ExportError
from edgediff_runtime.conditioning import LABEL_EMBEDDINGS, NULL_EMBEDDING, ConditioningSpec
from edgediff_runtime.conditioning import LABELS_JSON as BUNDLE_LABELS_JSON

#: Tokens of a raw-embedding condition when nothing fixes them (CLIP text length of SD 1.x).
DEFAULT_TOKENS = 77


@dataclass
class ModelConditions:
    """A model's signature, the conditions its config uses, and the bundle's user condition."""

    signature: ModelSignature
    inputs: tuple[ConditionInput, ...]
    spec: ConditioningSpec | None
    example_shapes: dict[str, tuple[int, ...]]  # graph input -> per-sample shape

    @property
    def kwargs(self) -> dict[str, str]:
        """Graph input name -> forward kwarg."""
        return {c.name: c.kwarg for c in self.inputs}


def _cfg(model: nn.Module) -> dict:
    return dict(getattr(model, "config", {}) or {})


def sample_shape(model: nn.Module, signature: ModelSignature, frames: int | None = None) -> tuple[int, ...]:
    """(C, H, W), or (C, F, H, W) for video, from the model config (`frames`: video length)."""
    cfg = _cfg(model)
    size = cfg.get("sample_size")
    if size is None or "in_channels" not in cfg:
        raise ExportError(f"{signature.class_name} config has no sample_size/in_channels; cannot export it")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    c = int(cfg["in_channels"])
    if signature.layout == "BCFHW":
        f = int(frames or cfg.get("video_length") or cfg.get("num_frames") or 16)
        return (c, f, int(h), int(w))
    return (c, int(h), int(w))


def model_conditions(
    model: nn.Module,
    label_table: LabelTable | None = None,
    *,
    tokens: int | None = None,
    null_embedding: np.ndarray | None = None,
) -> ModelConditions:
    """The conditions `model`'s config uses and the bundle's conditioning spec."""
    class_name = type(model).__name__
    try:
        signature = signature_for_class(class_name)
    except Exception as exc:  # EdgediffError: a one-line list of the supported classes
        raise ExportError(str(exc)) from None
    cfg = _cfg(model)
    if class_name == "PixArtTransformer2DModel" and cfg.get("use_additional_conditions"):
        raise ExportError(
            "PixArt with use_additional_conditions (resolution/aspect-ratio inputs) is not exportable yet; "
            "use a sample_size of 64 or less"
        )
    inputs = signature.conditions_for(cfg)  # the conditions this config uses (edgediff.models)
    shapes: dict[str, tuple[int, ...]] = {}
    spec: ConditioningSpec | None = None
    for c in inputs:
        if c.kwarg == "class_labels":
            shapes[c.name] = ()
            if class_name == "DiTTransformer2DModel":
                classes = int(cfg["num_embeds_ada_norm"])
                null = classes  # diffusers' DiT label embedding keeps a CFG row after the classes
            else:
                classes, null = int(cfg["num_class_embeds"] or 0), None
            spec = spec or ConditioningSpec(
                kind="class_labels",
                input=c.name,
                shape=[],
                classes=classes,
                null_label=null,
                source=f"{class_name} class embedding",
            )
            continue
        dim = int(cfg.get("cross_attention_dim") or cfg.get("caption_channels") or 0)
        if dim <= 0:
            raise ExportError(f"{class_name} config has no cross_attention_dim/caption_channels")
        if label_table is not None:
            if label_table.embeddings.shape[-1] != dim:
                raise ExportError(
                    f"label table width {label_table.embeddings.shape[-1]} does not match the model's "
                    f"cross-attention width {dim}; re-save the label table"
                )
            shapes[c.name] = (label_table.slots, dim)
            spec = ConditioningSpec(
                kind="label_table",
                input=c.name,
                shape=[label_table.slots, dim],
                slots=label_table.slots,
                classes=label_table.classes,
                labels_json=BUNDLE_LABELS_JSON,
                label_embeddings=LABEL_EMBEDDINGS,
                source="LabelTable of the model folder",
            )
        else:
            n_tok = int(tokens or DEFAULT_TOKENS)
            shapes[c.name] = (n_tok, dim)
            if null_embedding is not None and tuple(null_embedding.shape[-2:]) != (n_tok, dim):
                raise ExportError(
                    f"null embedding has shape {list(null_embedding.shape)}, the model takes [{n_tok}, {dim}]"
                )
            spec = ConditioningSpec(
                kind="embeddings",
                input=c.name,
                shape=[n_tok, dim],
                null_embedding=NULL_EMBEDDING if null_embedding is not None else None,
                source="raw embeddings",
            )
    if len(inputs) > 1:
        names = ", ".join(c.name for c in inputs)
        raise ExportError(
            f"this {class_name} config uses several conditions ({names}) but the runtime drives one; "
            "export a config with one condition"
        )
    return ModelConditions(signature, inputs, spec, shapes)


def example_inputs(mc: ModelConditions, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Example tensors of the conditioning inputs (batch on dim 0), keyed by forward kwarg."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for c in mc.inputs:
        shape = (batch, *mc.example_shapes[c.name])
        if c.dtype == "int64":
            high = max(1, int(mc.spec.classes or 1)) if mc.spec is not None else 1
            out[c.kwarg] = torch.randint(0, high, shape, generator=g)
        else:
            out[c.kwarg] = torch.randn(shape, generator=g)
    return out


def golden_conditions(
    mc: ModelConditions,
    label_table: LabelTable | None,
    null_embedding: np.ndarray | None,
    n: int,
    seed: int,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """Seeded conditions of `n` golden samples and their null halves (None without a null)."""
    spec = mc.spec
    if spec is None:
        return {}, None
    g = torch.Generator().manual_seed(seed + 7919)
    if spec.kind == "label_table":
        assert label_table is not None
        labels = torch.randint(0, label_table.classes, (n, label_table.slots), generator=g)
        if label_table.slots > 1:
            labels[0, -1] = label_table.empty  # one sample with an empty slot
        null = label_table.null_condition(n).float()
        return {spec.input: label_table.encode(labels).float()}, {spec.input: null}
    if spec.kind == "class_labels":
        labels = torch.randint(0, int(spec.classes or 1), (n,), generator=g)
        null = None if spec.null_label is None else {spec.input: torch.full((n,), spec.null_label)}
        return {spec.input: labels}, null
    cond = torch.randn((n, *spec.shape), generator=g)
    null = None
    if null_embedding is not None:
        null = {
            spec.input: torch.from_numpy(np.asarray(null_embedding, np.float32))
            .reshape(spec.shape)
            .expand(n, *spec.shape)
            .contiguous()
        }
    return {spec.input: cond}, null


def copy_conditioning_files(
    spec: ConditioningSpec | None,
    label_table: LabelTable | None,
    null_embedding: np.ndarray | None,
    folder: Path,
    source: Path | None = None,
) -> None:
    """Write the label table (same two files as the model folder) / null embedding into the bundle."""
    if spec is None:
        return
    if spec.kind == "label_table":
        assert label_table is not None
        src = None if source is None else Path(source) / CONDITIONING_DIR
        if src is not None and (src / EMBEDDINGS_FILE).is_file():
            (folder / CONDITIONING_DIR).mkdir(parents=True, exist_ok=True)
            for name in (LABELS_JSON, EMBEDDINGS_FILE):
                shutil.copyfile(src / name, folder / CONDITIONING_DIR / name)
        else:
            label_table.save(folder)
    if spec.kind == "embeddings" and null_embedding is not None:
        (folder / CONDITIONING_DIR).mkdir(parents=True, exist_ok=True)
        np.save(folder / NULL_EMBEDDING, np.asarray(null_embedding, dtype=np.float32).reshape(spec.shape))
