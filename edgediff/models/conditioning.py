"""Conditioning values: the tensors a conditioned denoiser gets besides `x_t` and `t`.

A `Conditioning` holds one tensor per condition name (`encoder_hidden_states`, `class_labels`,
... as in `ModelSignature.conditions`), one row per sample, and optionally the null rows that
classifier-free guidance pairs with them. It is built once per command from what the user gave:

- `--labels 7,2`: comma-separated labels, grouped in rows of the model's label slots (a
  `LabelTable` of 2 slots reads `7,2` as one sample "7 left, 2 right"; a class-conditional model
  has one slot, so `7,2` alternates 7 and 2), `-` marks an empty slot; the rows repeat over the
  samples. Through the folder's `LabelTable` they become `encoder_hidden_states` (null: the
  table's null row); otherwise they are `class_labels` (null: DiT's extra "no class" label; a
  UNet's class embedding has none, so it cannot be guided);
- `--cond FILE.safetensors`: tensors named like the conditions, each `(rows, ...)`, and
  optionally `null.<name>` with the null rows (needed for guidance);
- nothing: an unconditional model needs nothing; a label-conditioned model gets seeded random
  labels where a command allows it (calibration), an error elsewhere.

Inputs a model derives from its size (PixArt-1024's resolution and aspect ratio, SDXL's
`time_ids`) are filled in when not given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from edgediff.errors import EdgediffError

if TYPE_CHECKING:
    from edgediff.models.loading import LoadedModel

NULL_PREFIX = "null."
VAE_SCALE = 8  # latent -> pixel size of the SD/SDXL/PixArt VAEs (resolution and time_ids are in pixels)


@dataclass(frozen=True)
class Conditioning:
    """`values`: condition name -> (B, ...) tensor; `null`: the same names, the CFG null rows."""

    values: dict[str, Tensor] = field(default_factory=dict)
    null: dict[str, Tensor] | None = None

    def __post_init__(self):
        sizes = {v.shape[0] for v in self.values.values()}
        if self.null is not None:
            if set(self.null) != set(self.values):
                raise EdgediffError(
                    f"null conditioning names {sorted(self.null)} differ from {sorted(self.values)}"
                )
            sizes |= {v.shape[0] for v in self.null.values()}
        if len(sizes) > 1:
            raise EdgediffError(f"conditioning tensors have different row counts {sorted(sizes)}")

    @property
    def batch(self) -> int | None:
        """Rows, or None for the empty (unconditional) conditioning."""
        return next(iter(self.values.values())).shape[0] if self.values else None

    def __bool__(self) -> bool:
        return bool(self.values)

    def _map(self, fn) -> Conditioning:
        null = None if self.null is None else {k: fn(v) for k, v in self.null.items()}
        return Conditioning({k: fn(v) for k, v in self.values.items()}, null)

    def rows(self, index: slice | Tensor) -> Conditioning:
        """The rows `index` of every tensor."""
        return self._map(lambda v: v[index])

    def repeat_to(self, n: int) -> Conditioning:
        """Rows cycled to exactly `n` (row i is row `i % batch`)."""
        if not self.values or self.batch == n:
            return self
        idx = torch.arange(n) % self.batch
        return self.rows(idx)

    def to(self, device) -> Conditioning:
        return self._map(lambda v: v.to(device))

    def require_null(self) -> None:
        """Guidance needs null rows (one-line error otherwise)."""
        if not self.values:
            raise EdgediffError("--guidance needs a conditioned model; drop it for an unconditional one")
        if self.null is None:
            raise EdgediffError(
                "--guidance needs a null condition: give null.<name> tensors in the --cond file, or use a "
                "model whose labels have a null row (a conditioning/ label table, DiT); or drop --guidance"
            )


def guided_batch(cond: Conditioning) -> dict[str, Tensor]:
    """The `[cond; null]` batch of one guided model call."""
    cond.require_null()
    return {k: torch.cat([v, cond.null[k]]) for k, v in cond.values.items()}


@dataclass(frozen=True)
class ConditioningRequest:
    """What the user asked for on the command line: `--labels`, `--cond`, `--guidance`."""

    labels: str | None = None
    cond_file: Path | None = None
    guidance: float | None = None

    def __post_init__(self):
        if self.labels is not None and self.cond_file is not None:
            raise EdgediffError("give either --labels or --cond, not both")
        if self.guidance is not None and self.guidance < 0:
            raise EdgediffError(f"--guidance must be >= 0 (1 = no guidance), got {self.guidance}")

    @property
    def guided(self) -> bool:
        return self.guidance is not None and self.guidance != 1.0


def _num_classes(loaded: LoadedModel) -> int:
    cfg = dict(loaded.unet.config)
    n = cfg.get("num_embeds_ada_norm") if loaded.signature.class_name == "DiTTransformer2DModel" else None
    n = n or cfg.get("num_class_embeds")
    if not n:
        raise EdgediffError(
            f"{loaded.signature.class_name} class_labels come from class_embed_type "
            f"{cfg.get('class_embed_type')!r}, not integer labels; pass --cond FILE.safetensors"
        )
    return int(n)


def _label_slots(loaded: LoadedModel) -> int:
    if loaded.label_table is not None:
        return loaded.label_table.slots
    if "class_labels" in loaded.condition_names:
        return 1
    raise EdgediffError(
        f"{loaded.path} takes no labels ({loaded.signature.class_name} without a conditioning/ label "
        f"table{' or class embedding' if 'class_labels' in loaded.signature.condition_names else ''}); "
        + ("pass --cond FILE.safetensors" if loaded.conditions else "drop --labels")
    )


def parse_labels(text: str, slots: int, empty: int | None) -> Tensor:
    """`"7,2,-,3"` -> int64 (rows, slots); `-` is the empty-slot label `empty` (tables only)."""
    tokens = [t.strip() for t in str(text).split(",") if t.strip()]
    if not tokens or len(tokens) % slots:
        raise EdgediffError(
            f"--labels {text!r}: give {slots} comma-separated label(s) per sample (e.g. "
            f"{','.join(['7', '2', '-'][:slots]) if slots > 1 else '7'})"
        )
    values = []
    for tok in tokens:
        if tok == "-" and empty is not None:
            values.append(empty)
            continue
        try:
            values.append(int(tok))
        except ValueError:
            raise EdgediffError(f"--labels: {tok!r} is not an integer label") from None
    return torch.tensor(values, dtype=torch.long).reshape(-1, slots)


def label_conditioning(loaded: LoadedModel, labels: Tensor) -> Conditioning:
    """Labels (rows, slots) -> the model's conditioning, through its label table or as class labels."""
    table = loaded.label_table
    if table is not None:
        if int(labels.min()) < 0 or int(labels.max()) > table.empty:
            raise EdgediffError(f"label out of range: use 0..{table.classes - 1}, or '-' for an empty slot")
        ehs = table.encode(labels)
        return Conditioning(
            {"encoder_hidden_states": ehs}, {"encoder_hidden_states": table.null_condition(len(ehs))}
        )
    classes = _num_classes(loaded)
    flat = labels.reshape(-1)
    if int(flat.min()) < 0 or int(flat.max()) >= classes:
        raise EdgediffError(f"label out of range: {loaded.signature.class_name} has classes 0..{classes - 1}")
    null = None
    if loaded.signature.class_name == "DiTTransformer2DModel":  # its label table has a "no class" row
        null = {"class_labels": torch.full_like(flat, classes)}
    return Conditioning({"class_labels": flat}, null)


def random_labels(loaded: LoadedModel, n: int, seed: int) -> Tensor:
    """Seeded labels (n, slots): classes and the empty slot of a table, classes otherwise."""
    gen = torch.Generator().manual_seed(seed)
    slots = _label_slots(loaded)
    high = loaded.label_table.empty + 1 if loaded.label_table is not None else _num_classes(loaded)
    return torch.randint(0, high, (n, slots), generator=gen)


def file_conditioning(loaded: LoadedModel, path: Path) -> Conditioning:
    """Tensors named like the model's conditions (and `null.<name>`) from a safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise EdgediffError(f"--cond file not found: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise EdgediffError(f"--cond {path} is not a safetensors file ({exc})") from exc
    values = {k: v for k, v in tensors.items() if not k.startswith(NULL_PREFIX)}
    null = {k[len(NULL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(NULL_PREFIX)}
    known = set(loaded.condition_names)
    unknown = sorted(set(values) - known)
    if unknown:
        raise EdgediffError(
            f"--cond {path} holds {unknown[0]!r}, which {loaded.signature.class_name} does not take here; "
            f"it takes {', '.join(sorted(known)) or 'nothing'}"
        )
    if null and set(null) != set(values):
        raise EdgediffError(f"--cond {path}: give null.<name> for every condition or for none")
    if values:
        rows = {v.shape[0] for v in [*values.values(), *null.values()]}
        if len(rows) > 1:
            n = max(rows)
            expand = {k: v.expand(n, *v.shape[1:]) if v.shape[0] == 1 else v for k, v in values.items()}
            null_exp = {k: v.expand(n, *v.shape[1:]) if v.shape[0] == 1 else v for k, v in null.items()}
            return Conditioning(expand, null_exp or None)
    return Conditioning(values, null or None)


def _derived(loaded: LoadedModel, cond: Conditioning, n: int) -> Conditioning:
    """Fill PixArt's resolution/aspect_ratio and SDXL's time_ids from the sample size."""
    names = set(loaded.condition_names) - set(cond.values)
    if not names & {"resolution", "aspect_ratio", "time_ids"}:
        return cond
    h, w = loaded.sample_shape[-2:]
    hp, wp = h * VAE_SCALE, w * VAE_SCALE
    extra = {
        "resolution": torch.tensor([[hp, wp]], dtype=torch.float32),
        "aspect_ratio": torch.tensor([[hp / wp]], dtype=torch.float32),
        "time_ids": torch.tensor([[hp, wp, 0, 0, hp, wp]], dtype=torch.float32),
    }
    add = {k: extra[k].expand(n, -1) for k in names & set(extra)}
    null = None if cond.null is None else {**cond.null, **add}
    return Conditioning({**cond.values, **add}, null)


def check_conditioning(loaded: LoadedModel, cond: Conditioning) -> None:
    """Every condition the model uses is present with the right width and dtype (one-line errors)."""
    for c in loaded.conditions:
        v = cond.values.get(c.name)
        if v is None:
            raise EdgediffError(
                f"{loaded.signature.class_name} needs {c.name}: pass --cond FILE.safetensors with a "
                f"{c.name!r} tensor" + (" or --labels" if c.name in ("class_labels",) else "")
            )
        tensors = [v] + ([cond.null[c.name]] if cond.null is not None else [])
        for t in tensors:
            if (c.dtype == "int64") == t.is_floating_point():
                raise EdgediffError(f"{c.name} must be {c.dtype}, got {str(t.dtype).removeprefix('torch.')}")
            if t.ndim != len(c.shape):
                raise EdgediffError(f"{c.name} must have {len(c.shape)} dims {c.shape}, got {tuple(t.shape)}")
            for axis, (want, got) in enumerate(zip(c.shape, t.shape)):
                if isinstance(want, int) and axis > 0 and want != got:
                    raise EdgediffError(
                        f"{c.name} has size {got} on axis {axis} but the model expects {want} "
                        f"(shape {c.shape}); re-make the --cond tensors for this model"
                    )
    extra = sorted(set(cond.values) - set(loaded.condition_names))
    if extra:
        raise EdgediffError(f"{loaded.signature.class_name} takes no {extra[0]!r} here; drop it")


def build_conditioning(
    loaded: LoadedModel,
    request: ConditioningRequest,
    n: int,
    seed: int = 0,
    random_default: bool = False,
) -> Conditioning:
    """The `n`-row conditioning for `loaded` from `request` (see the module doc), checked."""
    if request.labels is not None:
        slots = _label_slots(loaded)
        empty = loaded.label_table.empty if loaded.label_table is not None else None
        cond = label_conditioning(loaded, parse_labels(request.labels, slots, empty)).repeat_to(n)
    elif request.cond_file is not None:
        cond = file_conditioning(loaded, request.cond_file).repeat_to(n)
    elif not loaded.conditions:
        cond = Conditioning({})
    elif random_default and (loaded.label_table is not None or "class_labels" in loaded.condition_names):
        cond = label_conditioning(loaded, random_labels(loaded, n, seed))
    else:
        needs = ", ".join(loaded.condition_names)
        how = (
            "--labels or --cond FILE.safetensors"
            if loaded.label_table is not None
            else "--cond FILE.safetensors"
        )
        raise EdgediffError(f"{loaded.signature.class_name} at {loaded.path} needs {needs}: pass {how}")
    cond = _derived(loaded, cond, n) if cond else cond
    check_conditioning(loaded, cond)
    if request.guided:
        cond.require_null()
    return cond
