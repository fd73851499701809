"""Staged step distillation: `from_steps -> from_steps/2 -> ... -> to_steps` (docs/methods.md 4.4, 6.11).

Each stage trains a student (initialised from its teacher) on the one training loop, saves it as
a diffusers folder `OUT/<method>-<2N>to<N>/` with `distill.json` (sampler settings, budget, wall
time, final loss), and the student becomes the next teacher. A stage folder that holds
`distill.json` is finished and skipped on rerun; inside a stage, `TrainLoop` checkpoints in
`OUT/.ckpt/<stage>/` let an interrupted stage resume (automatically, on the rerun).
Under `accelerate launch` a PD stage trains each process on its slice of the global batch
(the same update as one process, up to float reduction order); RDD stages need one process.

`rdd` follows the paper's pipeline: PD stages down to `rdd_from` steps (default 8), RDD for the
later halvings. The PD stages use the same folder names as a `pd` run, so `pd` and `rdd` runs
into the same `OUT` share the stages above `rdd_from`.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from torch import nn

from edgediff.distill.pd import pd_batch, stage_grid, truncated_snr_loss
from edgediff.distill.rdd import RDDConfig, RDDLoss
from edgediff.errors import EdgediffError
from edgediff.reference.classifier import TinyCNN, load_classifier
from edgediff.reference.data import load_digits16
from edgediff.reference.model import BUNDLED_CLASSIFIER, load_pipeline_parts, save_pipeline
from edgediff.sampling import DEFAULT_SPACING
from edgediff.train.loop import LoopConfig, TrainLoop, is_main_process, seed_everything
from edgediff.utils.atomic import atomic_file, check_writable

log = logging.getLogger(__name__)

METHODS = ("pd", "rdd")
STAGE_FILE = "distill.json"


@dataclass(frozen=True)
class StageBudget:
    """Training budget of one halving stage."""

    iterations: int = 500
    batch_size: int = 64
    lr: float = 1e-4
    schedule: str = "cosine"
    warmup_steps: int = 0
    grad_clip: float = 1.0


@dataclass(frozen=True)
class Stage:
    method: str
    teacher_steps: int
    student_steps: int
    variant: str = ""  # non-default RDD objective, e.g. "pd1" (PD pixel term weight 1)

    @property
    def name(self) -> str:
        kind = f"{self.method}+{self.variant}" if self.variant else self.method
        return f"{kind}-{self.teacher_steps}to{self.student_steps}"


def rdd_variant(cfg: RDDConfig) -> str:
    """Folder tag of a non-default RDD objective, so that variants never reuse each other's stages.

    Term weights that differ from the defaults are tagged `cfd<w>`, `is<w>`, `m<w>` (so RCFD,
    `is0+m0`, gets its own stages), the PD pixel term `pd<w>`.
    """
    default = RDDConfig()
    parts = [
        f"{tag}{getattr(cfg, field):g}"
        for tag, field in (("cfd", "weight_cfd"), ("is", "weight_is"), ("m", "weight_queue"))
        if getattr(cfg, field) != getattr(default, field)
    ]
    parts += [f"pd{cfg.weight_pd:g}"] if cfg.weight_pd else []
    if cfg.released_enqueue_reshape:
        parts.append("released")
    return "+".join(parts)


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def plan_stages(
    method: str, from_steps: int, to_steps: int, rdd_from: int = 8, variant: str = ""
) -> list[Stage]:
    """Halvings from `from_steps` down to `to_steps`; for `rdd`, PD until `rdd_from` steps.

    `variant` tags the RDD stages (see `rdd_variant`); PD stages are shared by every variant.
    """
    if method not in METHODS:
        raise EdgediffError(f"unknown distillation method {method!r}: use pd or rdd")
    for name, n in (("--from-steps", from_steps), ("--to-steps", to_steps)):
        if not is_power_of_two(n):
            raise EdgediffError(f"{name} must be a power of two (1, 2, 4, ...), got {n}")
    if to_steps >= from_steps:
        raise EdgediffError(f"--to-steps ({to_steps}) must be smaller than --from-steps ({from_steps})")
    stages, n = [], from_steps
    while n > to_steps:
        if method == "rdd" and n <= rdd_from:
            stages.append(Stage("rdd", n, n // 2, variant))
        else:
            stages.append(Stage("pd", n, n // 2))
        n //= 2
    return stages


def stage_finished(folder: Path) -> dict | None:
    """The stage record when `folder` holds a finished stage, else None."""
    meta = Path(folder) / STAGE_FILE
    if not meta.is_file() or not (Path(folder) / "unet").is_dir():
        return None
    try:
        return json.loads(meta.read_text())
    except json.JSONDecodeError:
        return None


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients (teacher, feature network)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def train_stage(
    teacher: nn.Module,
    scheduler_config: dict,
    stage: Stage,
    budget: StageBudget,
    *,
    seed: int = 0,
    classifier: TinyCNN | None = None,
    rdd: RDDConfig = RDDConfig(),
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    images: torch.Tensor | None = None,
) -> tuple[nn.Module, dict]:
    """Distil `teacher` (2N steps) into a student of N steps; returns `(student, record)`."""
    seed_everything(seed)
    grid = stage_grid(scheduler_config, stage.student_steps)
    teacher = freeze(teacher)
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    data = load_digits16()[0] if images is None else images
    rdd_loss: RDDLoss | None = None
    groups = [{"params": list(student.parameters())}]
    extra: dict[str, nn.Module] = {}
    if stage.method == "rdd":
        rdd_loss = RDDLoss(
            classifier if classifier is not None else load_classifier(BUNDLED_CLASSIFIER), rdd, seed
        )
        groups.append({"params": rdd_loss.trainable_parameters()})  # the head: own group, same lr
        extra = {"rdd": rdd_loss}
    loop = TrainLoop(
        student,
        LoopConfig(
            steps=budget.iterations,
            lr=budget.lr,
            warmup_steps=budget.warmup_steps,
            schedule=budget.schedule,
            grad_clip=budget.grad_clip,
            checkpoint_every=max(1, budget.iterations // 10),
            seed=seed,
            progress=progress,
            description=stage.name,
        ),
        param_groups=groups,
        checkpoint_dir=checkpoint_dir,
        extra_modules=extra,
    )
    if rdd_loss is not None and loop.num_processes > 1:
        raise EdgediffError(
            "RDD stages train in one process (the in-batch relation and the memory queue span the "
            "whole batch); run them without accelerate launch, or use --method pd"
        )
    loop.maybe_resume()
    teacher.to(loop.device)
    if rdd_loss is not None:
        rdd_loss.to(loop.device).train()
    generator = torch.Generator()
    parts_log: list[dict] = []

    def loss_fn(step: int) -> torch.Tensor:
        # Batch, noise and grid positions come from a generator seeded by the step: exact resume.
        generator.manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, data.shape[0], (budget.batch_size,), generator=generator)
        x0 = data[idx].to(loop.device)
        noise = torch.randn(x0.shape, generator=generator).to(loop.device)
        k = torch.randint(0, stage.student_steps, (budget.batch_size,), generator=generator)
        x0, noise, k = loop.shard(x0), loop.shard(noise), loop.shard(k)  # this process's slice
        batch = pd_batch(teacher, loop.model, x0, noise, k, grid)
        if rdd_loss is None:
            return truncated_snr_loss(batch)
        loss, parts = rdd_loss(batch, generator)
        parts_log.append(parts)
        return loss

    t0 = time.perf_counter()
    start_step = loop.step
    losses = loop.run(loss_fn)
    tail = losses[-50:]
    record = {
        "method": stage.method,
        "stage": stage.name,
        "teacher_steps": stage.teacher_steps,
        "num_steps": stage.student_steps,
        "sampler": "ddim",
        "spacing": grid.spacing,
        "eta": 0.0,
        "clip_sample": True,
        "set_alpha_to_one": True,
        "timesteps": grid.student_t.tolist(),
        "budget": asdict(budget),
        "seed": seed,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "resumed_at_step": start_step,
        "final_loss": float(sum(tail) / len(tail)) if tail else None,
    }
    if rdd_loss is not None:
        record["rdd"] = rdd.to_dict()
        record["feature_network"] = "bundled TinyCNN classifier (phi_map: last conv, phi_vec: penultimate)"
        if parts_log:
            last = parts_log[-50:]
            record["final_loss_parts"] = {k: sum(p[k] for p in last) / len(last) for k in last[0]}
    return freeze(loop.accelerator.unwrap_model(loop.model)), record


def distill(
    model: str | Path,
    method: str,
    from_steps: int,
    to_steps: int,
    out: Path,
    budgets: dict[int, StageBudget] | StageBudget | None = None,
    *,
    seed: int = 0,
    rdd_from: int = 8,
    rdd: RDDConfig = RDDConfig(),
    progress: bool = True,
    classifier: TinyCNN | None = None,
) -> list[dict]:
    """Run (or resume) the stage chain; returns one record per stage (finished ones are reloaded).

    `budgets` maps the student step count of a stage to its `StageBudget` (one budget for all
    stages, or None for the default).
    """
    stages = plan_stages(method, from_steps, to_steps, rdd_from, rdd_variant(rdd))
    out = Path(out)
    check_writable(out / "x")
    teacher, scheduler = load_pipeline_parts(model)
    # students learn the trailing grid that ends at alpha-bar 1 (pd.py); their folders must say so
    trailing = {"timestep_spacing": DEFAULT_SPACING, "set_alpha_to_one": True}
    scheduler = DDPMScheduler.from_config({**dict(scheduler.config), **trailing})
    scheduler_config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    if scheduler_config.get("prediction_type") != "v_prediction":
        raise EdgediffError(
            f"step distillation needs a v_prediction model, {model} predicts "
            f"{scheduler_config.get('prediction_type')!r}; retrain with prediction_type='v_prediction'"
        )
    records = []
    for i, stage in enumerate(stages):
        folder = out / stage.name
        budget = _budget_for(budgets, stage.student_steps)
        done = stage_finished(folder)
        if done is not None:
            if done.get("budget") != asdict(budget):
                raise EdgediffError(
                    f"{folder} was trained with budget {done.get('budget')}, not {asdict(budget)}; "
                    "use another --out or delete that stage folder"
                )
            log.info("stage %s already finished, loading %s", stage.name, folder)
            teacher, _ = load_pipeline_parts(folder)
            records.append(done | {"skipped": True})
            continue
        ckpt = out / ".ckpt" / stage.name
        student, record = train_stage(
            teacher,
            scheduler_config,
            stage,
            budget,
            seed=seed + i,
            classifier=classifier,
            rdd=rdd,
            checkpoint_dir=ckpt,
            progress=progress,
        )
        record["teacher"] = str(model) if i == 0 else str(out / stages[i - 1].name)
        if is_main_process():
            save_stage(student.cpu(), scheduler, folder, record)
            shutil.rmtree(ckpt, ignore_errors=True)
        records.append(record)
        teacher = student
    return records


def save_stage(student: nn.Module, scheduler: DDPMScheduler, folder: Path, record: dict) -> None:
    """The diffusers folder, then `distill.json` (its presence marks the stage finished)."""
    save_pipeline(student, scheduler, folder)
    with atomic_file(folder / STAGE_FILE) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


def _budget_for(budgets: dict[int, StageBudget] | StageBudget | None, student_steps: int) -> StageBudget:
    if budgets is None:
        return StageBudget()
    if isinstance(budgets, StageBudget):
        return budgets
    if student_steps not in budgets:
        raise EdgediffError(f"no budget for the {student_steps}-step stage; give one per stage")
    return budgets[student_steps]
