"""Trains the reference diffusion model from scratch (docs/reference-benchmark.md, Q2 recipe).

v-prediction DDPM loss `|| v_theta(x_t, t) - (sqrt(a_t) eps - sqrt(1 - a_t) x0) ||^2` with
uniform t, AdamW 2e-3 with 200 warm-up steps, batch 128, gradient clip 1.0, EMA 0.999 (the EMA
weights are saved), seed 0. Budgeted by steps because the host's speed varies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from edgediff.reference.data import load_digits16
from edgediff.reference.model import build_scheduler, build_unet, save_pipeline
from edgediff.train.loop import LoopConfig, TrainLoop, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceTrainConfig:
    steps: int = 2400
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 200


def train_reference(
    out: Path, cfg: ReferenceTrainConfig = ReferenceTrainConfig(), progress: bool = True
) -> Path:
    """Train, save a `DDPMPipeline` folder with the EMA weights to `out`, return `out`."""
    seed_everything(cfg.seed)
    images, _ = load_digits16()
    unet = build_unet(cfg.seed)
    scheduler = build_scheduler()
    loop = TrainLoop(
        unet,
        LoopConfig(
            steps=cfg.steps,
            lr=cfg.lr,
            warmup_steps=cfg.warmup_steps,
            grad_clip=1.0,
            ema_decay=cfg.ema_decay,
            checkpoint_every=cfg.checkpoint_every,
            seed=cfg.seed,
            progress=progress,
            description="reference train",
        ),
        checkpoint_dir=Path(out).with_name(Path(out).name + ".ckpt"),
    )
    loop.maybe_resume()
    generator = torch.Generator().manual_seed(cfg.seed)
    alphas = scheduler.alphas_cumprod
    n = images.shape[0]

    def loss_fn(step: int) -> torch.Tensor:
        # Draw the batch from a generator seeded by step so that resuming is exact.
        generator.manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, n, (cfg.batch_size,), generator=generator)
        x0 = images[idx].to(loop.device)
        noise = torch.randn(x0.shape, generator=generator).to(loop.device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1).to(loop.device)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        v_target = a.sqrt() * noise - (1 - a).sqrt() * x0
        v_pred = loop.model(x_t, t.to(loop.device)).sample
        return F.mse_loss(v_pred, v_target)

    losses = loop.run(loss_fn)
    if losses:
        log.info("final loss (mean of last 50 steps): %.4f", sum(losses[-50:]) / len(losses[-50:]))
    save_pipeline(loop.trained_model().cpu(), scheduler, Path(out))
    return Path(out)
