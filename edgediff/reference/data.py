"""The reference data set: scikit-learn's handwritten digits at 16x16 in [-1, 1].

`sklearn.datasets.load_digits` ships inside the scikit-learn wheel (1,797 images, 8x8, 17 gray
levels), so nothing is downloaded at run time (docs/reference-benchmark.md, Q1).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 16
NUM_CLASSES = 10


def load_digits16() -> tuple[torch.Tensor, torch.Tensor]:
    """Return `(images, labels)`: images `(1797, 1, 16, 16)` float32 in [-1, 1], labels int64.

    The 8x8 digits (values 0..16) are scaled to [0, 1], upsampled bilinearly to 16x16 and
    mapped to [-1, 1].
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = (images.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return images, labels


def train_val_split(n: int, val_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of `range(n)` into train and validation indices."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    n_val = int(round(n * val_fraction))
    return order[n_val:], order[:n_val]
