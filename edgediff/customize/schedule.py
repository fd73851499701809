"""Which attention control runs at which step and layer (docs/methods.md 5, Eq. 12).

`EDIT(step, layer) = SAGI` for steps in `[0, sagi_end)` on layers of `sagi_parts`, `SALQ` for
steps in `[sagi_end, salq_end)` on layers of `salq_parts`, plain self-attention otherwise
(`salq_first`: the two phases swapped, same lengths, an ablation of the order). Steps
count the sampler loop (0 = first, noisiest call); layers are named by their UNet part
(`down`, `mid`, `up` = decoder).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from edgediff.customize.errors import CustomizeError

PARTS = ("down", "mid", "up")


class Mode(Enum):
    PLAIN = 0
    SAGI = 1
    SALQ = 2


class Task(Enum):
    GENERATE = "generate"
    EDIT = "edit"


@dataclass(frozen=True)
class ControlSchedule:
    """SAGI on steps `[0, sagi_end)` in `sagi_parts`, then SALQ on `[sagi_end, salq_end)` in `salq_parts`;
    with `salq_first`, SALQ on the first `salq_end - sagi_end` steps, then SAGI up to `salq_end`."""

    sagi_end: int
    salq_end: int
    sagi_parts: tuple[str, ...] = PARTS
    salq_parts: tuple[str, ...] = ("up",)
    salq_first: bool = False

    def __post_init__(self):
        if not 0 <= self.sagi_end <= self.salq_end:
            raise CustomizeError(
                f"schedule needs 0 <= sagi_end <= salq_end, got {self.sagi_end}, {self.salq_end}"
            )
        for p in (*self.sagi_parts, *self.salq_parts):
            if p not in PARTS:
                raise CustomizeError(f"unknown UNet part {p!r}; use {', '.join(PARTS)}")

    def mode(self, step: int, part: str) -> Mode:
        """Eq. 12: the control of `step` at a layer of UNet part `part`."""
        first, first_parts, second, second_parts = Mode.SAGI, self.sagi_parts, Mode.SALQ, self.salq_parts
        switch = self.sagi_end
        if self.salq_first:
            first, first_parts, second, second_parts = Mode.SALQ, self.salq_parts, Mode.SAGI, self.sagi_parts
            switch = self.salq_end - self.sagi_end
        if step < switch and part in first_parts:
            return first
        if switch <= step < self.salq_end and part in second_parts:
            return second
        return Mode.PLAIN

    def reversed(self) -> ControlSchedule:
        """The same two phases in the other order, each as long as before."""
        return replace(self, salq_first=not self.salq_first)

    def controls(self, step: int) -> bool:
        """Whether any layer is controlled at `step` (steps without control run the target alone)."""
        return any(self.mode(step, p) is not Mode.PLAIN for p in PARTS)

    @classmethod
    def off(cls) -> ControlSchedule:
        """No control at any step: the target samples plainly."""
        return cls(0, 0)

    @classmethod
    def for_task(cls, task: Task, steps: int) -> ControlSchedule:
        """The paper's "Uniform" settings scaled to `steps`: editing SAGI 20/50 of the steps, then SALQ
        in the decoder to 48/50; generation SAGI 35/50, then SALQ in all layers to 48/50."""
        if task is Task.EDIT:
            return cls(round(steps * 20 / 50), round(steps * 48 / 50), PARTS, ("up",))
        return cls(round(steps * 35 / 50), round(steps * 48 / 50), PARTS, PARTS)
