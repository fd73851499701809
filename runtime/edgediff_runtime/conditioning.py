"""Conditioning of a bundle: the manifest's `conditioning` section and the feeds built from it.

A conditioned bundle's graph has one conditioning input besides `sample`/`timestep` (and the
step index). The manifest says what it takes (`ConditioningSpec.kind`):

- `label_table`: `encoder_hidden_states` [batch, slots, dim] gathered from the bundle's label
  embeddings (`conditioning/labels.json` + `conditioning/label_embeddings.safetensors`, shape
  (slots, classes + 2, dim)): token s = embeddings[s, label_s]; row `classes` = empty slot, row
  `classes + 1` = the classifier-free-guidance null condition;
- `class_labels`: an int64 class index per sample (DiT); the null class, if the model has one,
  is `null_label`;
- `embeddings`: raw embeddings [batch, tokens, dim] given by the user (`--cond FILE`); the null
  condition of guidance is the bundle file `null_embedding` (.npy) when the exporter had one.

Classifier-free guidance (Ho & Salimans 2022, Eq. 6) needs a null condition; `build_conditioning`
refuses a guidance scale without one. Numpy only (safetensors' numpy API for the label table).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgediff_runtime.errors import RuntimeStageError

KINDS = ("label_table", "class_labels", "embeddings")
LAYOUTS = ("BCHW", "BCFHW")
LABELS_JSON = "conditioning/labels.json"
LABEL_EMBEDDINGS = "conditioning/label_embeddings.safetensors"
NULL_EMBEDDING = "conditioning/null_embedding.npy"
EMPTY_SLOT = "-"

_STR = {"type": "string"}
_OPT_INT = {"type": ["integer", "null"], "minimum": 0}
CONDITIONING_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "kind": {"enum": list(KINDS)},
        "input": {"type": "string", "minLength": 1},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
        "slots": _OPT_INT,
        "classes": _OPT_INT,
        "null_label": _OPT_INT,
        "labels_json": {"type": ["string", "null"]},
        "label_embeddings": {"type": ["string", "null"]},
        "null_embedding": {"type": ["string", "null"]},
        "source": _STR,
    },
    "required": ["kind", "input", "shape"],
}


@dataclass
class ConditioningSpec:
    """What the graph's conditioning input `input` takes; `shape` is per sample (no batch axis).

    `slots`/`classes`: the label table's (label_table) or the class count (class_labels);
    `null_label`: the null class of a class_labels model; file fields are bundle-relative paths.
    `source` says where the conditioning came from (e.g. "LabelTable of the model folder").
    """

    kind: str
    input: str
    shape: list[int]
    slots: int | None = None
    classes: int | None = None
    null_label: int | None = None
    labels_json: str | None = None
    label_embeddings: str | None = None
    null_embedding: str | None = None
    source: str = ""

    @property
    def has_null(self) -> bool:
        """Whether classifier-free guidance is possible (a null condition exists)."""
        if self.kind == "label_table":
            return True
        if self.kind == "class_labels":
            return self.null_label is not None
        return self.null_embedding is not None

    def files(self) -> list[str]:
        """Bundle files this spec refers to."""
        return [f for f in (self.labels_json, self.label_embeddings, self.null_embedding) if f]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConditioningSpec:
        return cls(**data)

    def describe(self) -> str:
        """One line for `edgediff-run info`."""
        if self.kind == "label_table":
            what = f"labels ({self.slots} slot(s) x {self.classes} classes, '-' = empty slot)"
        elif self.kind == "class_labels":
            what = f"class labels 0..{(self.classes or 0) - 1}"
        else:
            what = f"embeddings [{', '.join(map(str, self.shape))}] (--cond FILE)"
        null = "yes" if self.has_null else "no"
        return f"{what} -> {self.input}; null condition for guidance: {null}"


# ----------------------------------------------------------------------------------- reading
def load_label_embeddings(root: Path, spec: ConditioningSpec) -> np.ndarray:
    """The (slots, classes + 2, dim) table of a label_table bundle, checked against labels.json."""
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise RuntimeStageError(
            "label conditioning needs the safetensors package (numpy API); pip install safetensors"
        ) from None
    path = root / str(spec.label_embeddings)
    try:
        table = load_file(str(path))["embeddings"]
        meta = json.loads((root / str(spec.labels_json)).read_text())
    except (OSError, KeyError, ValueError) as exc:
        raise RuntimeStageError(
            f"cannot read the label table of bundle {root.name}: {exc}; re-export it"
        ) from None
    expect = (spec.slots, (spec.classes or 0) + 2)
    if table.ndim != 3 or table.shape[:2] != expect or meta.get("classes") != spec.classes:
        raise RuntimeStageError(
            f"label table of bundle {root.name} has shape {list(table.shape)}, the manifest says "
            f"{spec.slots} slots x {spec.classes} classes; re-export the bundle"
        )
    return table.astype(np.float32)


def parse_labels(text: str, spec: ConditioningSpec) -> np.ndarray:
    """`--labels 7,2` (one per slot, `-` for an empty slot) -> int64 row indices (slots,)."""
    if spec.kind not in ("label_table", "class_labels"):
        raise RuntimeStageError(
            f"this bundle is conditioned on embeddings ({spec.input}); pass --cond FILE instead of --labels"
        )
    slots = spec.slots if spec.kind == "label_table" else 1
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != slots:
        raise RuntimeStageError(
            f"--labels needs {slots} comma-separated label(s) (one per slot), got {len(parts)}: {text!r}"
        )
    classes = int(spec.classes or 0)
    out = []
    for p in parts:
        if p == EMPTY_SLOT and spec.kind == "label_table":
            out.append(classes)
            continue
        try:
            value = int(p)
        except ValueError:
            raise RuntimeStageError(
                f"--labels: {p!r} is not a label; use integers 0..{classes - 1}"
                + (" or '-' for an empty slot" if spec.kind == "label_table" else "")
            ) from None
        if not 0 <= value < classes:
            raise RuntimeStageError(
                f"label {value} is out of range: this bundle has classes 0..{classes - 1}"
            )
        out.append(value)
    return np.asarray(out, dtype=np.int64)


def load_cond_file(path: Path, input_name: str) -> np.ndarray:
    """A raw condition from `.npy` or `.safetensors` (one tensor, or the one named `input_name`)."""
    path = Path(path)
    if not path.is_file():
        raise RuntimeStageError(f"--cond file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
            if input_name in tensors:
                return tensors[input_name]
            if len(tensors) == 1:
                return next(iter(tensors.values()))
            raise RuntimeStageError(
                f"--cond {path.name} holds {len(tensors)} tensors and none is named {input_name!r}; "
                f"save one tensor or name it {input_name}"
            )
    except (OSError, ValueError) as exc:
        raise RuntimeStageError(f"cannot read --cond {path}: {exc}") from None
    except ImportError:
        raise RuntimeStageError("--cond .safetensors needs the safetensors package; or pass a .npy") from None
    raise RuntimeStageError(f"--cond must be a .npy or .safetensors file, got {path.name}")


def _batched(value: np.ndarray, shape: list[int], n: int, what: str) -> np.ndarray:
    """(shape) or (1 | n, shape) -> (n, shape) float32; a one-line error naming the expected shape."""
    value = np.asarray(value, dtype=np.float32)
    expect = list(shape)
    if list(value.shape) == expect:
        value = value[None]
    if value.ndim != len(expect) + 1 or list(value.shape[1:]) != expect or value.shape[0] not in (1, n):
        if value.ndim >= 1 and value.shape[-1] != expect[-1]:
            raise RuntimeStageError(
                f"{what} has embedding width {value.shape[-1]} but the model takes {expect[-1]}; "
                f"pass an array of shape {expect} or [N, {', '.join(map(str, expect))}]"
            )
        raise RuntimeStageError(
            f"{what} has shape {list(value.shape)}; the model takes {expect} or "
            f"[N, {', '.join(map(str, expect))}] with N = 1 or --num ({n})"
        )
    if not np.all(np.isfinite(value)):
        raise RuntimeStageError(f"{what} contains NaN/Inf")
    return np.ascontiguousarray(np.broadcast_to(value, (n, *expect)))


@dataclass
class ConditionFeeds:
    """Conditioning feeds of `n` samples (`cond`) and, with guidance, the null halves (`null`)."""

    cond: dict[str, np.ndarray]
    null: dict[str, np.ndarray] | None = None
    guidance_scale: float | None = None


def build_conditioning(
    root: Path,
    spec: ConditioningSpec | None,
    n: int,
    *,
    labels: str | None = None,
    cond_file: Path | None = None,
    guidance: float | None = None,
    default_guidance: float | None = None,
) -> ConditionFeeds:
    """The feeds for `n` samples from `--labels` / `--cond`, with classifier-free guidance when the
    scale (given, else the manifest's default) is set and not 1."""
    if spec is None:
        if labels is not None or cond_file is not None or guidance is not None:
            raise RuntimeStageError("this bundle is unconditional; drop --labels/--cond/--guidance")
        return ConditionFeeds(cond={})
    if labels is not None and cond_file is not None:
        raise RuntimeStageError("pass either --labels or --cond, not both")
    if labels is None and cond_file is None:
        hint = (
            "--cond FILE" if spec.kind == "embeddings" else "--labels " + ",".join(["0"] * (spec.slots or 1))
        )
        raise RuntimeStageError(f"this bundle is conditioned ({spec.describe()}); pass {hint}")
    if labels is not None:
        rows = parse_labels(labels, spec)
        cond, null = _label_feeds(root, spec, np.broadcast_to(rows, (n, rows.shape[0])))
    else:
        if spec.kind == "class_labels":
            raise RuntimeStageError("this bundle takes class labels; pass --labels K instead of --cond")
        raw = load_cond_file(Path(str(cond_file)), spec.input)
        cond = _batched(raw, spec.shape, n, f"--cond {Path(str(cond_file)).name}")
        null = _null_feed(root, spec, n)
    scale = default_guidance if guidance is None else float(guidance)
    if scale is None or scale == 1.0:
        return ConditionFeeds(cond={spec.input: cond})
    if not np.isfinite(scale):
        raise RuntimeStageError(f"--guidance must be a finite number, got {scale}")
    if null is None:
        raise RuntimeStageError(
            f"--guidance {scale:g} needs a null condition but this bundle has none; "
            "pass --guidance 1 (no guidance) or re-export with a null condition"
        )
    return ConditionFeeds(cond={spec.input: cond}, null={spec.input: null}, guidance_scale=scale)


def _label_feeds(
    root: Path, spec: ConditioningSpec, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Label rows (n, slots) -> (cond, null) feeds of the graph input."""
    n = rows.shape[0]
    if spec.kind == "class_labels":
        cond = np.ascontiguousarray(rows[:, 0]).astype(np.int64)
        null = None if spec.null_label is None else np.full((n,), spec.null_label, dtype=np.int64)
        return cond, null
    table = load_label_embeddings(root, spec)
    return gather_labels(table, rows), gather_labels(table, np.full_like(rows, table.shape[1] - 1))


def gather_labels(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Token s of sample b = table[s, rows[b, s]]: (slots, classes+2, dim), (B, slots) -> (B, slots, dim)."""
    slot = np.broadcast_to(np.arange(table.shape[0]), rows.shape)
    return np.ascontiguousarray(table[slot, rows]).astype(np.float32)


def _null_feed(root: Path, spec: ConditioningSpec, n: int) -> np.ndarray | None:
    if spec.kind == "label_table":
        table = load_label_embeddings(root, spec)
        return gather_labels(table, np.full((n, table.shape[0]), table.shape[1] - 1))
    if spec.null_embedding is None:
        return None
    null = np.load(root / spec.null_embedding, allow_pickle=False)
    return _batched(null, spec.shape, n, f"null condition {spec.null_embedding}")
