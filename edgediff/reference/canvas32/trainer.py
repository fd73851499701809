"""Trains canvas32: v-prediction DDPM loss with the label table learned jointly, CFG null drop.

Loss `|| v_theta(x_t, t, c) - (sqrt(a_t) eps - sqrt(1 - a_t) x0) ||^2`, uniform t; the condition
`c` (both slot labels) is replaced by the null row with probability `null_prob` per sample, which
trains the unconditional branch of classifier-free guidance (Ho & Salimans 2022). AdamW with
warm-up, gradient clip 1.0, EMA (saved), seeded batches drawn per step so that resuming is exact.
Every `snapshot_every` steps the EMA weights are written as a usable pipeline folder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from edgediff.reference.canvas32.data import DigitPool, make_batch
from edgediff.reference.canvas32.model import build_denoiser, build_scheduler, save_pipeline
from edgediff.train.loop import LoopConfig, TrainLoop, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Canvas32TrainConfig:
    steps: int = 1800
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    ema_decay: float = 0.995
    null_prob: float = 0.1
    seed: int = 0
    snapshot_every: int = 100


def drop_condition(labels: torch.Tensor, null: int, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each sample's labels (all slots) by `null` with probability `prob`."""
    drop = torch.rand(labels.shape[0], generator=generator) < prob
    return torch.where(drop.unsqueeze(1), torch.full_like(labels, null), labels)


def train_canvas32(
    out: Path,
    cfg: Canvas32TrainConfig = Canvas32TrainConfig(),
    progress: bool = True,
    unet_config: dict | None = None,
    device: str | None = None,
) -> dict:
    """Train, save the EMA pipeline folder to `out`; returns a summary (steps, seconds, loss).

    `device`: None trains on CUDA when available, else on the CPU. Batches are drawn on the CPU
    from a per-step seed and then moved, so a run is the same whichever device resumes it."""
    out = Path(out)
    seed_everything(cfg.seed)
    pool = DigitPool.split("train", seed=0)
    denoiser = build_denoiser(cfg.seed, unet_config)
    null = denoiser.table().null
    alphas = build_scheduler().alphas_cumprod
    loop = TrainLoop(
        denoiser,
        LoopConfig(
            steps=cfg.steps,
            lr=cfg.lr,
            warmup_steps=cfg.warmup_steps,
            grad_clip=1.0,
            ema_decay=cfg.ema_decay,
            checkpoint_every=cfg.snapshot_every,
            seed=cfg.seed,
            progress=progress,
            description="canvas32 train",
        ),
        checkpoint_dir=out.with_name(out.name + ".ckpt"),
        device=device,
    )
    loop.maybe_resume()
    generator = torch.Generator()
    t0 = time.perf_counter()

    def loss_fn(step: int) -> torch.Tensor:
        if cfg.snapshot_every and step and step % cfg.snapshot_every == 0:
            save_pipeline(loop.trained_model(), out)
            log.info(
                "step %d: EMA snapshot saved to %s (%.0f ms/step)",
                step,
                out,
                1000 * (time.perf_counter() - t0) / max(1, step - start),
            )
        generator.manual_seed(cfg.seed * 1_000_003 + step)
        x0, labels = make_batch(pool, cfg.batch_size, generator)
        labels = drop_condition(labels, null, cfg.null_prob, generator)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, len(alphas), (cfg.batch_size,), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        v_target = a.sqrt() * noise - (1 - a).sqrt() * x0
        dev = loop.device
        return F.mse_loss(loop.model(x_t.to(dev), t.to(dev), labels.to(dev)), v_target.to(dev))

    start = loop.step
    losses = loop.run(loss_fn)
    seconds = time.perf_counter() - t0
    save_pipeline(loop.trained_model(), out)
    tail = losses[-50:]
    summary = {
        "steps": cfg.steps,
        "steps_this_run": cfg.steps - start,
        "seconds": round(seconds, 1),
        "ms_per_step": round(1000 * seconds / max(1, cfg.steps - start), 1),
        "final_loss": round(sum(tail) / max(1, len(tail)), 5),
        "batch_size": cfg.batch_size,
        "threads": torch.get_num_threads(),
        "device": str(loop.device),
    }
    log.info("canvas32 trained: %s", summary)
    return summary
