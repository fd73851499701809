"""MTRD: memory-based temporal relation distillation (docs/methods.md 2.1, INFERRED; 4.2(3)).

FP (teacher) pixel embeddings of the last decoder block are pushed into a FIFO `MemoryQueue`
with their timestep as the FP trajectory advances, so the queue holds pixels of many earlier
steps. At every step, `query` pixels (the same positions in both models) are compared with
`anchors` evenly spaced queue rows: `ℓ = f̂·𝒬ᵀ/τ_c`, loss `w·KL(softmax(ℓ_FP/T) ‖ softmax(ℓ_Q/T))`
averaged over the pixels; then `enqueue` random teacher pixels are pushed. Time-aware options
(docs/methods.md 2.1): `time_mode="window"` restricts the anchors to entries within `time_window`
timesteps of the current one (option a), `"weight"` weights anchors by `exp(−|Δt|/time_scale)`
(option b), `"none"` ignores the stored timesteps.

Defaults scaled to the reference model (RDD's are queue 20 000, enqueue 128, anchors 4 096 for a
CIFAR UNet): the last decoder block has 32 channels at 16x16, i.e. 8 192 pixels per batch of 32;
queue 6 400 = one 50-step trajectory of 128-pixel pushes, 1 024 anchors, 1 024 query pixels,
`τ_c = 0.1`, `T = 1`, weight 0.1 (RDD's), time option (b) with a scale of 100 timesteps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from edgediff.distill.relation import MemoryQueue, queue_relation_kl, sample_pixels
from edgediff.errors import EdgediffError

TIME_MODES = ("none", "window", "weight")


class MTRDLoss:
    """Queue state and the MTRD term for one fine-tuning run (see module docstring)."""

    def __init__(
        self,
        channels: int,
        *,
        queue_size: int = 6400,
        enqueue: int = 128,
        anchors: int = 1024,
        query: int = 1024,
        tau: float = 0.1,
        kd_temperature: float = 1.0,
        weight: float = 0.1,
        time_mode: str = "weight",
        time_window: int = 100,
        time_scale: float = 100.0,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ):
        if time_mode not in TIME_MODES:
            raise EdgediffError(f"unknown MTRD time mode {time_mode!r}: use none, window or weight")
        if min(enqueue, anchors, query) < 1:
            raise EdgediffError("MTRD enqueue, anchors and query counts must be >= 1")
        self.queue = MemoryQueue(queue_size, channels, seed=seed).to(device)
        self.enqueue, self.anchors, self.query = enqueue, anchors, query
        self.tau, self.kd_temperature, self.weight = tau, kd_temperature, weight
        self.time_mode, self.time_window, self.time_scale = time_mode, time_window, time_scale
        self._gen = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        """The queue and the pixel-sampling generator (exact resume)."""
        queue = {k: v.cpu() for k, v in self.queue.state_dict().items()}
        return {"queue": queue, "generator": self._gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.queue.load_state_dict(state["queue"])
        self._gen.set_state(state["generator"])

    def _pixels(self, feat: Tensor, idx: Tensor) -> Tensor:
        c = feat.shape[1]
        return F.normalize(feat.permute(0, 2, 3, 1).reshape(-1, c)[idx], dim=-1)

    def __call__(self, fp_feat: Tensor, q_feat: Tensor, timestep: int) -> Tensor:
        """Loss of this step against the current queue, then enqueue teacher pixels of this step."""
        if fp_feat.shape != q_feat.shape:
            raise EdgediffError(
                f"MTRD features differ in shape ({tuple(fp_feat.shape)} vs {tuple(q_feat.shape)})"
            )
        n = fp_feat.shape[0] * fp_feat.shape[2] * fp_feat.shape[3]
        idx = torch.randperm(n, generator=self._gen)[: min(self.query, n)].to(fp_feat.device)
        ft, fs = self._pixels(fp_feat.detach(), idx), self._pixels(q_feat, idx)
        window = self.time_window if self.time_mode == "window" else None
        index = self.queue.anchor_index(self.anchors, timestep, window)
        weights = (
            self.queue.time_weights(index, timestep, self.time_scale) if self.time_mode == "weight" else None
        )
        loss = queue_relation_kl(
            ft, fs, self.queue.bank[index], self.tau, self.kd_temperature, anchor_weights=weights
        )
        self.queue.push(sample_pixels(fp_feat.detach(), self.enqueue, self._gen), timestep)
        return self.weight * loss
