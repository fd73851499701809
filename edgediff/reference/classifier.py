"""The metric network: a small CNN classifier on the reference digits (docs/reference-benchmark.md, Q3).

conv32-conv32-pool-conv64-conv64-pool-FC128(GELU)-FC10. Its 128-d penultimate features define
the Frechet distance (FD) of the benchmark; its softmax gives confidence and class histograms.
Trained for 30 epochs with AdamW 2e-3 and random +-2 px roll augmentation on 80 % of the data.
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
from edgediff.reference.data import NUM_CLASSES, load_digits16, train_val_split
from edgediff.utils.atomic import atomic_dir

FEATURE_DIM = 128


class TinyCNN(nn.Module):
    """Digit classifier whose penultimate layer is the FD feature space."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, FEATURE_DIM), nn.GELU(),
        )  # fmt: skip
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _random_roll(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    shifts = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)
    return torch.roll(x, shifts=(int(shifts[0]), int(shifts[1])), dims=(2, 3))


def train_classifier(
    epochs: int = 30, batch_size: int = 128, lr: float = 2e-3, seed: int = 0, progress: bool = True
) -> tuple[TinyCNN, float]:
    """Train TinyCNN on 80 % of the digits; returns the model and its validation accuracy."""
    torch.manual_seed(seed)
    images, labels = load_digits16()
    train_idx, val_idx = train_val_split(len(images), seed=seed)
    model = TinyCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="classifier", disable=None if progress else True, leave=False):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for batch in order.split(batch_size):
            x = _random_roll(images[batch], gen)
            loss = F.cross_entropy(model(x), labels[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(images[val_idx]).argmax(1) == labels[val_idx]).float().mean().item()
    return model, acc


def save_classifier(model: TinyCNN, out: Path, meta: dict) -> None:
    with atomic_dir(Path(out)) as tmp:
        save_file(model.state_dict(), str(tmp / "model.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_classifier(path: Path) -> TinyCNN:
    """Load the bundled (or a retrained) classifier folder."""
    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        raise EdgediffError(
            f"classifier weights not found: {weights}; run 'edgediff reference train-classifier'"
        )
    model = TinyCNN()
    model.load_state_dict(load_file(str(weights)))
    return model.eval()
