"""RDD: relational diffusion distillation losses on top of the PD target (docs/methods.md 4.2, 4.4).

The frozen feature network is the bundled benchmark classifier (`TinyCNN`, the same network
whose penultimate features define FD; a known caveat: the metric network is also the teacher
of the feature losses). Its two feature spaces:

* `φ_map`: the last spatial map, 64 x 4 x 4 for a 16 x 16 image (last conv, GELU, 2x2 max-pool;
  the input of the flatten + FC head). It plays the role of DenseNet's 1920 x 4 x 4 map before
  the global pooling, with the same 16 pixels per image. Read with a forward hook on the
  `Flatten`, so the classifier is not modified. (The 8 x 8 pre-pool map was tried first; its
  in-batch relation tensor `B·B·64·64` doubled the iteration time.)
* `φ_vec`: the 128-d penultimate vector (`TinyCNN.features`, after the FC + GELU).

Teacher side = the PD target image `x̃`, student side = the student's `x̂0` (both unclipped,
as in RCFD's code). Total loss as in the released command:
`L = w_cfd·L_CFD + w_is·L_IS + w_m·L_M (+ w_pd·L_PD, off by default)` (a term whose weight is 0
is not computed; `w_is = w_m = 0` is RCFD, the CFD term alone) with
* `L_CFD = KL(softmax(φ_vec(x̃)/0.9) ‖ softmax(φ_vec(x̂0)))` (`feature_kl`),
* `L_IS`  = in-batch pixel relation KL on `φ_map` over all sample pairs (`batch_relation_kl`),
* `L_M`   = student pixels through a trainable projection head vs `anchors` evenly spaced rows
  of a FIFO queue of teacher pixels, τ 0.1 (`queue_relation_kl`), weight 0.1.

Scaled defaults (docs/methods.md 4.4 has 20 000 x 1920, 4 096 anchors, 128 enqueued per step for a
1920 x 4 x 4 map): here `φ_map` is 64-d with 16 pixels per image, so queue 4 096 rows, 1 024
anchors, 64 teacher pixels enqueued per step (the queue turns over every 64 steps).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgediff.distill.config import RDDConfig
from edgediff.distill.pd import PDBatch, truncated_snr_loss
from edgediff.distill.relation import (
    MemoryQueue,
    ProjectionHead,
    batch_relation_kl,
    feature_kl,
    pixel_embeddings,
    queue_relation_kl,
    sample_pixels,
)
from edgediff.errors import EdgediffError
from edgediff.reference.classifier import TinyCNN


class FrozenFeatures(nn.Module):
    """`(φ_map, φ_vec)` of a frozen `TinyCNN`: last conv output (hooked) and penultimate vector."""

    def __init__(self, classifier: TinyCNN) -> None:
        super().__init__()
        flat = [m for m in classifier.body if isinstance(m, nn.Flatten)]
        convs = [m for m in classifier.body if isinstance(m, nn.Conv2d)]
        if not flat or not convs:
            raise EdgediffError(
                "the feature network has no Conv2d + Flatten body; pass the TinyCNN classifier"
            )
        self.classifier = classifier.eval()
        for p in self.classifier.parameters():
            p.requires_grad_(False)
        self.channels = convs[-1].out_channels
        self._map: Tensor | None = None
        flat[0].register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, inp: tuple, _out: Tensor) -> None:
        self._map = inp[0]

    def train(self, mode: bool = True) -> FrozenFeatures:
        """The classifier stays in eval mode whatever the caller sets."""
        super().train(mode)
        self.classifier.eval()
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        vec = self.classifier.features(x)
        fmap, self._map = self._map, None
        assert fmap is not None
        return fmap, vec


class RDDLoss(nn.Module):
    """The RDD objective for one stage; holds the queue (buffers) and the projection head (trained)."""

    def __init__(self, classifier: TinyCNN, cfg: RDDConfig = RDDConfig(), seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.features = FrozenFeatures(classifier)
        c = self.features.channels
        self.queue = MemoryQueue(cfg.queue_size, c, seed=seed)
        self.head = ProjectionHead(c)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def forward(self, batch: PDBatch, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        """Total loss and its parts; enqueues `cfg.enqueue` teacher pixels after computing the loss."""
        cfg = self.cfg
        with torch.no_grad():
            map_t, vec_t = self.features(batch.x_tilde)
        map_s, vec_s = self.features(batch.x_hat)
        parts: dict[str, Tensor] = {}
        if cfg.weight_cfd:
            parts["cfd"] = feature_kl(vec_t, vec_s, cfg.teacher_temperature)
        if cfg.weight_is:
            parts["is_p2p"] = batch_relation_kl(map_t, map_s)
        if cfg.weight_queue:
            proj = self.head(map_s)
            parts["m_p2p"] = queue_relation_kl(
                pixel_embeddings(map_t).reshape(-1, map_t.shape[1]),
                pixel_embeddings(proj).reshape(-1, proj.shape[1]),
                self.queue.anchors(cfg.anchors),
                tau=cfg.queue_tau,
            )
        weights = {"cfd": cfg.weight_cfd, "is_p2p": cfg.weight_is, "m_p2p": cfg.weight_queue}
        total = sum((weights[k] * v for k, v in parts.items()), map_s.new_zeros(()))
        if cfg.weight_pd:
            parts["pd"] = truncated_snr_loss(batch)
            total = total + cfg.weight_pd * parts["pd"]
        self.queue.push(sample_pixels(map_t, cfg.enqueue, generator, cfg.released_enqueue_reshape))
        return total, {k: float(v.detach()) for k, v in parts.items()}
