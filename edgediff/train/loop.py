"""The one training loop (docs/design.md section 2), on `accelerate`.

Used by the reference trainer, quantization-aware fine-tuning and step distillation. A task
supplies `loss_fn(step) -> Tensor`; the loop owns the optimizer step, gradient clipping,
warm-up + schedule, EMA, progress bar, periodic checkpoints and resumption. One process on a
laptop; `accelerate launch` runs the same code on several GPUs.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from torch import nn
from tqdm.auto import tqdm

from edgediff.train.ema import EMA

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    """Budget and optimiser settings of one training run (budgeted by steps, not wall time)."""

    steps: int
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"  # "constant" | "cosine" | "linear"
    grad_clip: float | None = 1.0
    ema_decay: float | None = None
    checkpoint_every: int = 0
    seed: int = 0
    progress: bool = True
    description: str = "train"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _lr_lambda(cfg: LoopConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(1, cfg.steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 1.0

    return factor


def _accelerator(device_type: str) -> Accelerator:
    """An `Accelerator` on `device_type` ("cpu" | "cuda").

    accelerate keeps one process-wide state, so without a reset the first loop's device would
    win (a CPU run followed by a GPU run in one process would train the second on the CPU).
    """
    cpu = device_type == "cpu"
    try:
        accelerator: Accelerator | None = Accelerator(cpu=cpu)
    except ValueError:  # accelerate refuses cpu=True over a state already on CUDA
        accelerator = None
    if accelerator is None or accelerator.device.type != device_type:
        if PartialState().num_processes > 1:
            raise RuntimeError(f"cannot move a {PartialState().num_processes}-process run to {device_type}")
        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = Accelerator(cpu=cpu)
    if accelerator.device.type != device_type:
        raise RuntimeError(f"accelerate placed training on {accelerator.device}, not on {device_type}")
    return accelerator


class TrainLoop:
    """Runs `cfg.steps` optimisation steps of `loss_fn` over `model`'s trainable parameters."""

    def __init__(
        self,
        model: nn.Module,
        cfg: LoopConfig,
        param_groups: list[dict] | None = None,
        checkpoint_dir: Path | None = None,
        extra_modules: dict[str, nn.Module] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """`device`: where the model trains (it is moved there); None = CUDA when available, else CPU."""
        self.cfg = cfg
        target = torch.device(device) if device is not None else None
        if target is not None and target.type not in ("cpu", "cuda"):
            raise ValueError(f"TrainLoop trains on cpu or cuda, got device {target}")
        use_cpu = not torch.cuda.is_available() if target is None else target.type == "cpu"
        self.accelerator = _accelerator("cpu" if use_cpu else "cuda")
        groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.ema = EMA(self.accelerator.unwrap_model(self.model), cfg.ema_decay) if cfg.ema_decay else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.extra_modules = extra_modules or {}
        self.step = 0
        self.losses: list[float] = []

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def _checkpoint_path(self) -> Path | None:
        return self.checkpoint_dir / "checkpoint.pt" if self.checkpoint_dir else None

    def save_checkpoint(self) -> None:
        path = self._checkpoint_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            "model": self.accelerator.unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "extra": {k: m.state_dict() for k, m in self.extra_modules.items()},
            "losses": self.losses,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def maybe_resume(self) -> bool:
        """Load the last checkpoint if one exists; returns True when training resumes."""
        path = self._checkpoint_path()
        if path is None or not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.accelerator.unwrap_model(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        for k, m in self.extra_modules.items():
            m.load_state_dict(state["extra"][k])
        self.losses = list(state["losses"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        self.step = int(state["step"])
        log.info("resumed from %s at step %d", path, self.step)
        return True

    def run(self, loss_fn: Callable[[int], torch.Tensor]) -> list[float]:
        """Optimise until `cfg.steps`; returns the per-step losses."""
        cfg = self.cfg
        self.model.train()
        bar = tqdm(
            total=cfg.steps, initial=self.step, desc=cfg.description, disable=not cfg.progress, leave=False
        )
        while self.step < cfg.steps:
            loss = loss_fn(self.step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {self.step}")
            self.optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(loss)
            if cfg.grad_clip:
                self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            if self.ema:
                self.ema.update(self.accelerator.unwrap_model(self.model))
            self.step += 1
            self.losses.append(float(loss.detach()))
            bar.update(1)
            if self.step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(self.losses[-20:]):.4f}")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        self.model.eval()
        return self.losses

    def trained_model(self) -> nn.Module:
        """The EMA weights when EMA is on, else the trained model."""
        return self.ema.shadow if self.ema else self.accelerator.unwrap_model(self.model)
