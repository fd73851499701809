"""The one training loop (docs/design.md section 2), on `accelerate`.

Used by the reference trainer, quantization-aware fine-tuning and step distillation. A task
supplies `loss_fn(step) -> Tensor`; the loop owns the optimizer step, gradient clipping,
warm-up + schedule, EMA, progress bar, periodic checkpoints and resumption. One process on a
laptop; `accelerate launch` runs the same code on several processes (data parallel).

Several processes: every process draws the same *global* batch from the same seeds and trains
on its own contiguous slice of it (`TrainLoop.shard`); DDP averages the gradients, so with a
per-sample-mean loss one update equals the one-process update on the global batch up to the
floating-point order of the reduction. The learning-rate schedule advances once per update
whatever the process count (it is not handed to `accelerate.prepare`, which would step it once
per process). Only the main process writes checkpoints.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from torch import nn
from tqdm.auto import tqdm

from edgediff.errors import EdgediffError
from edgediff.train.ema import EMA
from edgediff.utils.atomic import atomic_file

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


@dataclass(frozen=True)
class Checkpointing:
    """Where a run writes its checkpoint, every how many updates, and whether it resumes from it."""

    folder: Path | None = None
    every: int = 0
    resume: bool = False

    def __post_init__(self) -> None:
        if self.every < 0:
            raise EdgediffError(f"checkpoint interval must be >= 0 updates, got {self.every}")
        if self.resume and self.folder is None:
            raise EdgediffError("resuming needs a checkpoint folder")


class Stateful(Protocol):
    """Anything whose state goes into a checkpoint (modules, data streams, loss bookkeeping)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> Any: ...


def launched_processes() -> tuple[int, int, int]:
    """`(rank, local_rank, world_size)` set by `accelerate launch` / torchrun; `(0, 0, 1)` otherwise."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """True outside a multi-process launch and on rank 0 inside one (the process that writes files)."""
    return launched_processes()[0] == 0


def process_device(device: torch.device) -> torch.device:
    """`cuda` -> this process's GPU (`cuda:LOCAL_RANK`) under a multi-process launch; else unchanged."""
    _, local, world = launched_processes()
    if world > 1 and device.type == "cuda" and device.index is None:
        return torch.device("cuda", local)
    return device


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
        extra_modules: dict[str, Stateful] | None = None,
        device: torch.device | str | None = None,
        fingerprint: dict | None = None,
    ) -> None:
        """`device`: where the model trains (it is moved there); None = CUDA when available, else CPU.

        `extra_modules`: further state saved with each checkpoint (anything with
        `state_dict`/`load_state_dict`). `fingerprint`: a JSON-able description of the run; a
        checkpoint written under another fingerprint is refused on resume.
        """
        self.cfg = cfg
        target = torch.device(device) if device is not None else None
        if target is not None and target.type not in ("cpu", "cuda"):
            raise ValueError(f"TrainLoop trains on cpu or cuda, got device {target}")
        use_cpu = not torch.cuda.is_available() if target is None else target.type == "cpu"
        self.accelerator = _accelerator("cpu" if use_cpu else "cuda")
        groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        # not prepared: accelerate would step it once per process per update
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg))
        self.ema = EMA(self.accelerator.unwrap_model(self.model), cfg.ema_decay) if cfg.ema_decay else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.extra_modules = extra_modules or {}
        self.fingerprint = fingerprint
        self.step = 0
        self.losses: list[float] = []

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's contiguous slice of a global batch (dim 0); the whole batch with one process."""
        n, world = batch.shape[0], self.accelerator.num_processes
        if world == 1:
            return batch
        if n % world:
            raise EdgediffError(
                f"a global batch of {n} does not split over {world} processes; use a multiple of {world}"
            )
        per = n // world
        rank = self.accelerator.process_index
        return batch[rank * per : (rank + 1) * per]

    def _checkpoint_path(self) -> Path | None:
        return self.checkpoint_dir / "checkpoint.pt" if self.checkpoint_dir else None

    def save_checkpoint(self) -> None:
        """Write the full training state atomically (main process only; the others wait)."""
        path = self._checkpoint_path()
        if path is None:
            return
        if not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "fingerprint": self.fingerprint,
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
        with atomic_file(path) as tmp:
            torch.save(state, tmp)
        self.accelerator.wait_for_everyone()

    def maybe_resume(self) -> bool:
        """Load the last checkpoint if one exists; returns True when training resumes."""
        path = self._checkpoint_path()
        if path is None or not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=False)
        if self.fingerprint is not None and state.get("fingerprint") != self.fingerprint:
            raise EdgediffError(
                f"the checkpoint {path} belongs to another run (different settings); "
                "rerun with the same settings or without --resume to start over"
            )
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
        # A bar on a terminal only (disable=None); a log file or pipe gets one line per 5 %.
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc=cfg.description,
            disable=None if cfg.progress else True,
            leave=False,
        )
        log_every = max(1, cfg.steps // 20) if cfg.progress and bar.disable else 0
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
            value = loss.detach()
            if self.accelerator.num_processes > 1:  # the global batch's loss, the same on every process
                value = self.accelerator.reduce(value.reshape(1), reduction="mean")[0]
            self.losses.append(float(value))
            bar.update(1)
            if self.step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(self.losses[-20:]):.4f}")
            if log_every and (self.step % log_every == 0 or self.step == cfg.steps):
                recent = np.mean(self.losses[-log_every:])
                log.info("%s: step %d/%d, loss %.4f", cfg.description, self.step, cfg.steps, recent)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        self.model.eval()
        return self.losses

    def trained_model(self) -> nn.Module:
        """The EMA weights when EMA is on, else the trained model."""
        return self.ema.shadow if self.ema else self.accelerator.unwrap_model(self.model)
