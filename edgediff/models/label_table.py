"""Label conditioning through a learned embedding table saved beside the model.

A model folder with `conditioning/labels.json` and `conditioning/label_embeddings.safetensors`
is conditioned on one label per slot (the `canvas32` reference: a left and a right slot). The
table `embeddings` has shape `(slots, classes + 2, dim)`: rows `0..classes-1` are the classes,
row `classes` is "this slot is empty" and row `classes + 1` is the null condition of
classifier-free guidance. Token `s` of `encoder_hidden_states` is `embeddings[s, label_s]`, so
the lookup is a gather that the runtime repeats in numpy from the same two files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from edgediff.errors import EdgediffError

CONDITIONING_DIR = "conditioning"
LABELS_JSON = "labels.json"
EMBEDDINGS_FILE = "label_embeddings.safetensors"


@dataclass
class LabelTable:
    """`embeddings` (slots, classes + 2, dim): classes, then the empty-slot row, then the null row."""

    embeddings: Tensor

    @property
    def slots(self) -> int:
        return self.embeddings.shape[0]

    @property
    def classes(self) -> int:
        return self.embeddings.shape[1] - 2

    @property
    def empty(self) -> int:
        return self.classes

    @property
    def null(self) -> int:
        return self.classes + 1

    def encode(self, labels: Tensor) -> Tensor:
        """`labels` (B, slots) int64 in `0..classes` (`classes` = empty) -> (B, slots, dim)."""
        if labels.ndim != 2 or labels.shape[1] != self.slots:
            raise EdgediffError(f"labels must have shape (batch, {self.slots}), got {tuple(labels.shape)}")
        if int(labels.min()) < 0 or int(labels.max()) > self.null:
            raise EdgediffError(f"label out of range: use 0..{self.classes - 1}, or '-' for an empty slot")
        slot = torch.arange(self.slots, device=labels.device).expand_as(labels)
        return self.embeddings.to(labels.device)[slot, labels]

    def null_condition(self, batch: int) -> Tensor:
        """The classifier-free-guidance null condition for `batch` samples: (B, slots, dim)."""
        return self.encode(torch.full((batch, self.slots), self.null, dtype=torch.long))

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        out = Path(folder) / CONDITIONING_DIR
        out.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": self.embeddings.detach().cpu().contiguous()}, str(out / EMBEDDINGS_FILE))
        meta = {"slots": self.slots, "classes": self.classes, "empty": self.empty, "null": self.null}
        (out / LABELS_JSON).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> LabelTable | None:
        """The table of a model folder, or None when the folder has no label conditioning."""
        from safetensors.torch import load_file

        d = Path(folder) / CONDITIONING_DIR
        if not (d / EMBEDDINGS_FILE).is_file():
            return None
        table = cls(load_file(str(d / EMBEDDINGS_FILE))["embeddings"])
        meta = json.loads((d / LABELS_JSON).read_text())
        if meta.get("slots") != table.slots or meta.get("classes") != table.classes:
            raise EdgediffError(
                f"{d / LABELS_JSON} disagrees with {EMBEDDINGS_FILE} (slots/classes); re-save the model"
            )
        return table
