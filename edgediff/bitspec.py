"""The nominal bit setting of a quantized model (`W4A8`): one parser, one validator, one label.

`BitSetting.parse` is the only place a `W<w>A<a>` string is read (the `quantize --bits` argparse
type uses it); `check_bits` is the only range check of a bit width. The setting picks a preset
recipe (`default_recipe` and the methods' recipes); the recipe records it and the label a
quantized folder or bundle shows is derived from the recipe (`Recipe.label`). This module
imports no torch, so the CLI checks `--bits` before any heavy import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgediff.errors import EdgediffError

_BITS_RE = re.compile(r"^W(\d+)A(\d+)$", re.IGNORECASE)
#: Activation widths that mean "activations stay in floating point".
FP_ACTIVATIONS = (16, 32)


def check_bits(bits: int, what: str = "bits") -> int:
    """Validate one bit width (1..8); returns it as int."""
    try:
        ok = not isinstance(bits, bool) and int(bits) == bits and 1 <= int(bits) <= 8
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise EdgediffError(f"{what} {bits!r} outside 1..8: quantize with 1 to 8 bits (or keep the layer FP)")
    return int(bits)


@dataclass(frozen=True)
class BitSetting:
    """Weight bits `w` (1..8) and activation bits `a` (1..8, or None: activations stay FP)."""

    w: int
    a: int | None

    def __post_init__(self) -> None:
        check_bits(self.w, "weight bits")
        if self.a is not None:
            check_bits(self.a, "activation bits")

    @classmethod
    def parse(cls, text: str) -> BitSetting:
        """`"W4A8"` -> `BitSetting(4, 8)`; `A16`/`A32` mean no activation quantization (`a=None`)."""
        m = _BITS_RE.match(str(text).strip())
        w, a = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        if not m or not 1 <= w <= 8 or not (1 <= a <= 8 or a in FP_ACTIVATIONS):
            raise EdgediffError(f"unknown bit setting {text!r}: use W<1-8>A<1-8|16>, e.g. W4A8")
        return cls(w, None if a in FP_ACTIVATIONS else a)

    @classmethod
    def of(cls, value: BitSetting | str) -> BitSetting:
        """`value` itself, or `parse(value)` for library callers that pass the string form."""
        return value if isinstance(value, BitSetting) else cls.parse(value)

    @property
    def label(self) -> str:
        """`W4A8`; `W4A16` when activations stay FP."""
        return f"W{self.w}A{self.a if self.a is not None else 16}"

    def __str__(self) -> str:
        return self.label
