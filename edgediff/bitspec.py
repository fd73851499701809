"""The `W<w>A<a>` bit setting, parsed without importing torch (the CLI checks it before any work)."""

from __future__ import annotations

import re

from edgediff.errors import EdgediffError

_BITS_RE = re.compile(r"^W(\d+)A(\d+)$", re.IGNORECASE)


def parse_bits(setting: str) -> tuple[int, int | None]:
    """`"W4A8"` -> `(4, 8)`; `A16`/`A32` mean no activation quantization -> `(4, None)`."""
    m = _BITS_RE.match(str(setting).strip())
    w, a = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if not m or not 1 <= w <= 8 or not (1 <= a <= 8 or a in (16, 32)):
        raise EdgediffError(f"unknown bit setting {setting!r}: use W<1-8>A<1-8|16>, e.g. W4A8")
    return w, (None if a in (16, 32) else a)
