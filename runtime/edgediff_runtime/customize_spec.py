"""The customization section of an MCA-Ctrl bundle: ``customize.json`` (docs/customize.md, "On the device").

A customization bundle's graph is the controlled UNet (docs/methods.md 5.6): inputs ``sample``
(G, 3C, H, W) with the streams subject, condition, target packed on the channel axis,
``timestep`` (G,), the conditioning input (G, 3S, D), ``mca_masks`` (G, 2, H, W) = [M_S, M_C] on
the sample grid and ``mca_mode`` (G, L) = the control of each self-attention layer at this step
(0 plain, 1 SAGI, 2 SALQ). ``customize.json`` holds what the runtime loop needs besides the
manifest: the step x layer mode table recorded by the PyTorch schedule (Eq. 12; the runtime only
reads it), the latent blending rule and the golden case's file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgediff_runtime.errors import RuntimeStageError

CUSTOMIZE_JSON = "customize.json"
CUSTOMIZE_GOLDEN = "reference/customize_golden.npz"
STREAMS = ("subject", "condition", "target")
MODES = {0: "plain", 1: "SAGI", 2: "SALQ"}
#: `edit`: after each step z <- (1 - M_C) z_con + M_C z (M_C binary), the condition image is kept
#: outside the editable region; `none`: no blending.
BLENDS = ("edit", "none")
#: Conditioning of the subject and condition streams: the null rows of the target's (`null`) or
#: the target's own (`target`, a model without a null condition).
SOURCE_CONDITIONINGS = ("null", "target")


@dataclass
class CustomizeSpec:
    """``customize.json`` (module doc). ``modes[i][l]``: mode of layer ``layers[l]`` at step ``i``;
    ``sagi_end``/``salq_end``/``*_parts`` describe the schedule the table was built from."""

    task: str
    steps: int
    layers: list[str]
    parts: list[str]
    modes: list[list[int]]
    sagi_end: int
    salq_end: int
    sagi_parts: list[str]
    salq_parts: list[str]
    blend: str = "edit"
    source_conditioning: str = "null"
    invert_refine: int = 0
    mask_input: str = "mca_masks"
    mode_input: str = "mca_mode"
    golden: str | None = CUSTOMIZE_GOLDEN
    golden_case: dict[str, Any] = field(default_factory=dict)

    def check(self, source: str = CUSTOMIZE_JSON) -> None:
        """Cross-field rules; a one-line error naming the problem and the fix."""

        def bad(problem: str) -> RuntimeStageError:
            return RuntimeStageError(
                f"{source}: {problem}; re-export the bundle with 'edgediff export customize'"
            )

        if self.task != "edit":
            raise bad(f"task {self.task!r} is not supported on the device (only 'edit')")
        if self.blend not in BLENDS:
            raise bad(f"blend {self.blend!r} is unknown (known: {', '.join(BLENDS)})")
        if self.source_conditioning not in SOURCE_CONDITIONINGS:
            raise bad(f"source_conditioning {self.source_conditioning!r} is unknown")
        if not self.layers or len(self.parts) != len(self.layers):
            raise bad(f"{len(self.layers)} layers but {len(self.parts)} parts")
        if self.steps < 1 or len(self.modes) != self.steps:
            raise bad(f"the mode table has {len(self.modes)} rows for {self.steps} steps")
        for i, row in enumerate(self.modes):
            if len(row) != len(self.layers) or any(m not in MODES for m in row):
                raise bad(f"mode row {i} must hold {len(self.layers)} values in 0, 1, 2, got {row}")
        if self.invert_refine < 0:
            raise bad(f"invert_refine must be >= 0, got {self.invert_refine}")

    def describe(self) -> str:
        """One line: the schedule and the blending."""
        sagi = (
            f"SAGI steps 0-{self.sagi_end - 1} in {'/'.join(self.sagi_parts)}" if self.sagi_end else "no SAGI"
        )
        salq = (
            f"SALQ steps {self.sagi_end}-{self.salq_end - 1} in {'/'.join(self.salq_parts)}"
            if self.salq_end > self.sagi_end
            else "no SALQ"
        )
        return f"{self.task}, {self.steps} steps, {len(self.layers)} self-attention layers; {sagi}; {salq}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = CUSTOMIZE_JSON) -> CustomizeSpec:
        if not isinstance(data, dict):
            raise RuntimeStageError(f"{source}: expected a JSON object; re-export the bundle")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RuntimeStageError(f"{source}: unknown field {unknown[0]!r}; re-export the bundle")
        try:
            spec = cls(**data)
        except TypeError as exc:
            raise RuntimeStageError(f"{source}: {exc}; re-export the bundle") from None
        spec.check(source)
        return spec


def is_customize_bundle(files: dict[str, str]) -> bool:
    """Whether a manifest's file list holds a customization section."""
    return CUSTOMIZE_JSON in files


def load_customize_spec(root: Path) -> CustomizeSpec:
    """The bundle's ``customize.json`` (checksummed with the other files by `load_bundle`)."""
    path = Path(root) / CUSTOMIZE_JSON
    if not path.is_file():
        raise RuntimeStageError(
            f"bundle {Path(root).name} has no {CUSTOMIZE_JSON}: it is not a customization bundle; "
            "export one with 'edgediff export customize'"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RuntimeStageError(f"cannot read {CUSTOMIZE_JSON} of bundle {Path(root).name}: {exc}") from None
    return CustomizeSpec.from_dict(data, f"{CUSTOMIZE_JSON} of bundle {Path(root).name}")
