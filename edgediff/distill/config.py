"""RDD's loss weights and queue sizes, torch-free so the `edgediff distill` parser can read the
defaults without importing torch (the losses themselves: `edgediff.distill.rdd`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgediff.errors import EdgediffError


@dataclass(frozen=True)
class RDDConfig:
    """RDD loss weights and queue sizes (docs/methods.md 4.4, scaled to the 64-channel `φ_map`)."""

    teacher_temperature: float = 0.9
    weight_cfd: float = 1.0
    weight_is: float = 1.0
    weight_queue: float = 0.1
    weight_pd: float = 0.0  # the released command trains without the pixel PD term
    queue_size: int = 4096
    anchors: int = 1024
    enqueue: int = 64
    queue_tau: float = 0.1
    released_enqueue_reshape: bool = False

    def __post_init__(self) -> None:
        weights = (self.weight_cfd, self.weight_is, self.weight_queue, self.weight_pd)
        if min(weights) < 0:
            raise EdgediffError("RDD term weights must be >= 0")
        if not any(weights):
            raise EdgediffError("every RDD term weight is 0: give at least one positive weight")

    def to_dict(self) -> dict:
        return asdict(self)
