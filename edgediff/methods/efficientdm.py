"""`efficientdm`: QALoRA + per-step activation quantizers + data-free distillation (docs/methods.md 6.6).

LoRA of rank 32 is merged into the weight before weight quantization (so it folds into the
integer weights at export), activation quantizers keep one (scale, zero point) per sampler step
(docs/methods.md 6.3), and the model is fine-tuned along the FP model's own DDIM trajectories with
`MSE(f_Q(x_t, t), f_FP(x_t, t))` on the model output, one update per sampling step. Learning rates
follow docs/methods.md 1.2(8) (weight step 1e-6, activation steps 5e-4) with the LoRA rate scaled to
the model; linear decay to 0, no warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgediff.methods.common import TrajectoryStream, quant_forward, quantize_and_calibrate, sample_shape
from edgediff.methods.registry import Method, QuantizeJob, register
from edgediff.models.conditioning import Conditioning
from edgediff.quant import (
    BitSetting,
    LoRASpec,
    Recipe,
    default_recipe,
    quant_layers,
)
from edgediff.train.loop import Checkpointing, LoopConfig, TrainLoop, seed_everything


@dataclass(frozen=True)
class EfficientDMConfig:
    num_steps: int = 50  # the sampler the model is fine-tuned for (per-step table size)
    trajectories: int = 20  # updates = trajectories * num_steps
    batch_size: int = 32
    lora_rank: int = 32
    lora_lr: float = 1e-3
    weight_scale_lr: float = 1e-6
    act_scale_lr: float = 5e-4
    calib_samples: int = 64
    seed: int = 0

    @property
    def updates(self) -> int:
        return self.trajectories * self.num_steps


def param_groups(model: nn.Module, cfg: EfficientDMConfig) -> list[dict]:
    """LoRA factors, weight-quantizer steps and activation-quantizer steps; nothing else trains."""
    groups: dict[str, list[nn.Parameter]] = {"lora": [], "w_scale": [], "a_scale": []}
    for name, p in model.named_parameters():
        if ".lora." in name:
            groups["lora"].append(p)
        elif name.endswith("weight_quant.scale"):
            groups["w_scale"].append(p)
        elif name.endswith("act_quant.scale"):
            groups["a_scale"].append(p)
        else:
            p.requires_grad_(False)
            continue
        p.requires_grad_(True)
    lrs = {"lora": cfg.lora_lr, "w_scale": cfg.weight_scale_lr, "a_scale": cfg.act_scale_lr}
    return [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps]


def efficientdm_recipe(bits: BitSetting | str, model: nn.Module, cfg: EfficientDMConfig) -> Recipe:
    """The default recipe at `bits` with merged rank-r LoRA and per-step activations on the main layers."""
    base = default_recipe(bits, model, a_mode="per_step", lora=LoRASpec(rank=cfg.lora_rank, mode="merged"))
    return base.with_name(f"efficientdm-{base.label}")


DEFAULT_UPDATES = 1000


def base_config(job: QuantizeJob) -> EfficientDMConfig:
    """The fine-tuning budget of a job: `updates` (default 1000) as whole trajectories of
    `num_steps` updates, the job's batch (default 32), seed and calibration size."""
    trajectories = max(1, (job.updates or DEFAULT_UPDATES) // job.num_steps)
    extra = {"batch_size": job.batch} if job.batch else {}
    return EfficientDMConfig(
        num_steps=job.num_steps,
        trajectories=trajectories,
        seed=job.seed,
        calib_samples=job.calib_samples,
        **extra,
    )


def run_fingerprint(model: nn.Module, fp: nn.Module, cfg: EfficientDMConfig) -> dict:
    """What a checkpoint must match to be resumed: the config, every quantized layer's settings
    (bits, LoRA, residual, ...) and a digest of the FP weights (another source model differs)."""
    with torch.no_grad():
        digest = sum(float(p.double().abs().sum()) for p in fp.parameters())
    layers = [f"{name}: {layer.config}" for name, layer in quant_layers(model).items()]
    return {"config": asdict(cfg), "layers": layers, "fp_digest": round(digest, 6)}


def _conditioning_fingerprint(conditioning: Conditioning | None, guidance_scale: float | None) -> dict:
    """The trajectories' conditions and guidance, for the checkpoint fingerprint."""
    with torch.no_grad():
        values = (conditioning or Conditioning({})).values
        cond = {k: round(float(v.double().abs().sum()), 6) for k, v in values.items()}
    return {"conditioning": cond, "guidance_scale": guidance_scale}


def finetune(
    model: nn.Module,
    fp: nn.Module,
    scheduler_config: dict,
    cfg: EfficientDMConfig,
    extra_loss=None,
    progress: bool = True,
    description: str = "efficientdm",
    groups: list[dict] | None = None,
    on_step=None,
    conditioning: Conditioning | None = None,
    guidance_scale: float | None = None,
    task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    schedule: str = "linear",
    checkpoints: Checkpointing = Checkpointing(),
    fingerprint: dict | None = None,
) -> dict:
    """Distil `fp` into the quantized `model` along FP trajectories; returns the training record.

    `extra_loss(step, x, t)` is added to the task loss after the quantized forward (forward
    hooks on both models see the FP and quantized features of the same step); `groups`
    replaces `param_groups(model, cfg)`; `on_step(update, model)` runs before every update.
    `conditioning`/`guidance_scale` condition the FP trajectories (`TrajectoryStream`).
    `task_loss(quantized_output, fp_output)` replaces the MSE (Q-VDiT's TMD); `schedule` is the
    learning-rate decay (`LoopConfig.schedule`).
    `checkpoints`: the full state (model, optimizer, schedule, RNG, trajectory stream,
    `extra_loss` state) is written to `checkpoints.folder` every `checkpoints.every` updates;
    `checkpoints.resume` continues from it (refused when written under another `fingerprint`).
    Under `accelerate launch` each process trains on its slice of the global `batch_size`.
    """
    seed_everything(cfg.seed)
    for p in fp.parameters():
        p.requires_grad_(False)
    loop = TrainLoop(
        model,
        LoopConfig(
            steps=cfg.updates,
            lr=cfg.lora_lr,
            schedule=schedule,
            grad_clip=None,
            seed=cfg.seed,
            progress=progress,
            description=description,
            checkpoint_every=checkpoints.every,
        ),
        param_groups=groups if groups is not None else param_groups(model, cfg),
        checkpoint_dir=checkpoints.folder,
        device=next(fp.parameters()).device,  # train where the FP model runs (its trajectories feed the loss)
        fingerprint={
            **run_fingerprint(model, fp, cfg),
            **_conditioning_fingerprint(conditioning, guidance_scale),
            **(fingerprint or {}),
        },
    )
    shard = (loop.accelerator.process_index, loop.num_processes)
    stream = TrajectoryStream(
        fp,
        scheduler_config,
        cfg.num_steps,
        cfg.batch_size,
        sample_shape(fp),
        cfg.seed,
        conditioning=conditioning,
        guidance_scale=guidance_scale,
        shard=shard,
    )
    loop.extra_modules = {"stream": stream}
    if extra_loss is not None and hasattr(extra_loss, "state_dict"):
        loop.extra_modules["extra_loss"] = extra_loss
    if checkpoints.resume:
        loop.maybe_resume()
    start = loop.step

    def loss_fn(update: int) -> torch.Tensor:
        if on_step is not None:
            on_step(update, loop.model)
        step, x, t, target = stream.next()
        out = quant_forward(loop.model, x, t, step, stream.cond)
        loss = F.mse_loss(out, target) if task_loss is None else task_loss(out, target)
        if extra_loss is not None:
            loss = loss + extra_loss(step, x, t)
        return loss

    t0 = time.perf_counter()
    losses = loop.run(loss_fn)
    if on_step is not None:
        on_step(cfg.updates, loop.model)
    model.eval()
    return {
        "updates": cfg.updates,
        "resumed_at_update": start,
        "processes": loop.num_processes,
        "seconds": round(time.perf_counter() - t0, 1),
        "loss_first_50": float(sum(losses[:50]) / max(1, len(losses[:50]))),
        "loss_last_50": float(sum(losses[-50:]) / max(1, len(losses[-50:]))),
        "config": asdict(cfg),
    }


def run_efficientdm(
    fp: nn.Module,
    scheduler_config: dict,
    bits: BitSetting | str,
    recipe: Recipe | None = None,
    cfg: EfficientDMConfig = EfficientDMConfig(),
    progress: bool = True,
    conditioning: Conditioning | None = None,
    guidance_scale: float | None = None,
    checkpoints: Checkpointing = Checkpointing(),
) -> tuple[nn.Module, Recipe, dict]:
    """Quantize, calibrate on FP trajectories, then fine-tune; returns (model, recipe, training record)."""
    seed_everything(cfg.seed)  # the LoRA factors are drawn from the global generator
    recipe = recipe or efficientdm_recipe(bits, fp, cfg)
    model, _ = quantize_and_calibrate(
        fp,
        scheduler_config,
        recipe,
        calib_steps=cfg.num_steps,
        calib_samples=cfg.calib_samples,
        seed=cfg.seed,
        table_steps=cfg.num_steps,
        progress=progress,
        conditioning=conditioning,
        guidance_scale=guidance_scale,
    )
    record = finetune(
        model,
        fp,
        scheduler_config,
        cfg,
        progress=progress,
        conditioning=conditioning,
        guidance_scale=guidance_scale,
        checkpoints=checkpoints,
    )
    return model, recipe, record


def run_job(job: QuantizeJob, options: dict) -> tuple[nn.Module, Recipe, dict]:
    """`edgediff quantize --method efficientdm` (no switches of its own)."""
    cfg = base_config(job)
    recipe = job.recipe
    if job.symmetric_weights:
        recipe = (recipe or efficientdm_recipe(job.bits, job.fp, cfg)).with_symmetric_weights()
    return run_efficientdm(
        job.fp,
        job.scheduler_config,
        job.bits,
        recipe,
        cfg,
        job.progress,
        conditioning=job.conditioning,
        guidance_scale=job.guidance_scale,
        checkpoints=job.checkpoints(),
    )


METHOD = register(
    Method(
        "efficientdm",
        EfficientDMConfig,
        run_job,
        help="QALoRA + per-step activations + data-free distillation",
        symmetric_weights=True,
    )
)
