"""The canvas32 metric network: a small CNN that reads each slot of a canvas (digit 0-9 or empty).

conv16-conv16-pool-conv32-conv32-pool-conv64-pool-FC128(GELU), then one 11-way linear head per
slot. Its 128-d penultimate features define canvas32's FD (`edgediff.reference.metrics`); its
heads give the per-slot accuracy of conditional samples. Trained on fresh compositions of the
training digits (`DigitPool.split("train")`) and validated on compositions of the held-out 20 %.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from edgediff.errors import EdgediffError
from edgediff.reference.canvas32.data import SLOT_CLASSES, SLOTS, DigitPool, make_batch
from edgediff.utils.atomic import atomic_dir

FEATURE_DIM = 128


class SlotCNN(nn.Module):
    """`forward` -> logits `(B, 2, 11)`; `features` -> `(B, 128)` (the FD feature space)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.GELU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, FEATURE_DIM), nn.GELU(),
        )  # fmt: skip
        self.head = nn.Linear(FEATURE_DIM, SLOTS * SLOT_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats).view(-1, SLOTS, SLOT_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.body(x))


@torch.no_grad()
def slot_accuracy(model: SlotCNN, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    """Fraction of (image, slot) pairs whose predicted class is `labels[i, s]`."""
    preds = torch.cat([model(chunk).argmax(-1) for chunk in images.split(batch)])
    return float((preds == labels).float().mean())


def train_slot_classifier(
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    val_samples: int = 2000,
    progress: bool = True,
) -> tuple[SlotCNN, float]:
    """Train on fresh training-digit compositions; returns the model and its validation accuracy."""
    torch.manual_seed(seed)
    train_pool, val_pool = DigitPool.split("train"), DigitPool.split("val")
    model = SlotCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in tqdm(range(steps), desc="slot classifier", disable=None if progress else True, leave=False):
        x, y = make_batch(train_pool, batch_size, gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    x_val, y_val = make_batch(val_pool, val_samples, torch.Generator().manual_seed(seed + 1))
    return model, slot_accuracy(model, x_val, y_val)


def save_slot_classifier(model: SlotCNN, out: Path, meta: dict) -> None:
    with atomic_dir(Path(out)) as tmp:
        save_file(model.state_dict(), str(tmp / "model.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_slot_classifier(path: Path) -> SlotCNN:
    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        raise EdgediffError(
            f"slot classifier weights not found: {weights}; run "
            "'edgediff reference train-classifier --arch canvas32 --out DIR'"
        )
    model = SlotCNN()
    model.load_state_dict(load_file(str(weights)))
    return model.eval()
