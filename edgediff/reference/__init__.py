"""Bundled reference models, by name: `reference` and `reference:NAME` on the command line.

`REFERENCES` maps a name to its model folder; `reference` alone is `DEFAULT_REFERENCE`. Add a
reference by adding its folder here.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"


def _canvas32_references() -> dict[str, Path]:
    from edgediff.reference.canvas32 import REFERENCE_MODELS

    return REFERENCE_MODELS


DEFAULT_REFERENCE = "digits16"
REFERENCES: dict[str, Path] = {
    "digits16": ASSETS / "digits16-ddpm",
}
REFERENCES.update(_canvas32_references())


def is_reference(model: object) -> bool:
    """`"reference"` or `"reference:NAME"`."""
    text = str(model)
    return text == "reference" or text.startswith("reference:")


def reference_folder(model: str) -> Path:
    """The folder of `"reference"` / `"reference:NAME"` (one-line error listing the names)."""
    from edgediff.errors import EdgediffError

    name = str(model).partition(":")[2] or DEFAULT_REFERENCE
    if name not in REFERENCES:
        raise EdgediffError(
            f"unknown reference {name!r}: use reference or reference:NAME with NAME one of "
            f"{', '.join(sorted(REFERENCES))}"
        )
    return REFERENCES[name]
