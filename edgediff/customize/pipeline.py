"""The two MCA-Ctrl tasks on a loaded model (docs/customize.md).

* subject editing (a condition image is given): the subject and the condition image are
  DDIM-inverted; the target starts from the condition's inverted noise and, after every step,
  keeps the condition's latent outside the editable region, `z <- (1 - M_C) z_con + M_C z`;
* subject-driven generation (no condition image): the condition process is plain sampling from
  seeded noise with the target's conditioning, run first; a `Localizer` gives `M_C` from its
  cross-attention maps and image, and its latents play the condition's stored latents; no blending.

In the main pass the subject and condition streams are reset to their stored latents at every
step (they only supply keys, values and source queries); the target denoises under the control
(`ControlSchedule`). The subject and condition streams use the null conditioning when the model
has one (the table's null row), the target's otherwise; the generation condition stream uses
the target's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from edgediff.customize.attention import Controller, controlled
from edgediff.customize.errors import CustomizeError
from edgediff.customize.inversion import ddim_grid, ddim_invert
from edgediff.customize.masks import CrossAttentionLocalizer, Localizer, check_mask
from edgediff.customize.schedule import ControlSchedule, Task
from edgediff.models.call import denoise
from edgediff.models.conditioning import Conditioning
from edgediff.models.loading import LoadedModel
from edgediff.sampling import cfg_combine, ddim_sample, ddim_step, seeded_noise

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CustomizeInputs:
    """Images (C, H, W) in the model's sample space and bool (H, W) masks on its sample grid;
    `conditioning`: the target's, one row (null rows for guidance)."""

    subject: Tensor
    conditioning: Conditioning
    subject_mask: Tensor | None = None
    condition: Tensor | None = None
    condition_mask: Tensor | None = None
    guidance: float | None = None

    @property
    def task(self) -> Task:
        return Task.EDIT if self.condition is not None else Task.GENERATE


@dataclass
class CustomizeResult:
    """The target image and, for parity checks of exported bundles, the stored source latents
    (`states[i]`: input of step `i`, `states[steps]`: the image) and the target after each step."""

    image: Tensor  # (C, H, W)
    task: Task
    schedule: ControlSchedule
    subject_mask: Tensor
    condition_mask: Tensor
    subject_states: list[Tensor] = field(default_factory=list)
    condition_states: list[Tensor] = field(default_factory=list)
    trajectory: list[Tensor] = field(default_factory=list)


def check_task(has_condition: bool, has_condition_mask: bool) -> None:
    """Editing needs both the condition image and its region; generation neither."""
    if has_condition_mask and not has_condition:
        raise CustomizeError("--condition-mask needs --condition (the image to edit); or drop it to generate")
    if has_condition and not has_condition_mask:
        raise CustomizeError("subject editing needs --condition-mask (the region to fill with the subject)")


def check_inputs(loaded: LoadedModel, inputs: CustomizeInputs) -> None:
    """Shapes against the model's sample shape, masks not empty, editing has its condition."""
    shape = tuple(loaded.sample_shape)
    if len(shape) != 3:
        raise CustomizeError(f"customization needs image models (C, H, W); this one makes {shape}")
    hw = shape[1:]
    for what, img in (("subject image", inputs.subject), ("condition image", inputs.condition)):
        if img is not None and tuple(img.shape) != shape:
            raise CustomizeError(f"{what} has shape {tuple(img.shape)} but the model samples {shape}")
    check_task(inputs.condition is not None, inputs.condition_mask is not None)
    for what, m in (("subject mask", inputs.subject_mask), ("condition mask", inputs.condition_mask)):
        if m is not None:
            check_mask(m, hw, what)


def source_conditioning(cond: Conditioning) -> Conditioning:
    """The sources' conditioning: the null rows when there are any, else the target's."""
    return Conditioning(dict(cond.null), dict(cond.null)) if cond.null is not None else cond


def _stack(conds: list[Conditioning], guided: bool) -> dict[str, Tensor]:
    values = {k: torch.cat([c.values[k] for c in conds]) for k in conds[0].values}
    if not guided:
        return values
    return {k: torch.cat([v, torch.cat([c.null[k] for c in conds])]) for k, v in values.items()}


@torch.no_grad()
def customize(
    loaded: LoadedModel,
    inputs: CustomizeInputs,
    steps: int,
    seed: int = 0,
    schedule: ControlSchedule | None = None,
    localizer: Localizer | None = None,
    progress: bool = False,
    invert_refine: int = 0,
) -> CustomizeResult:
    """Run MCA-Ctrl (module doc) and return the target image; `invert_refine`: fixed-point
    refinements per inversion step (`ddim_invert`, 0 = the paper's plain inversion)."""
    check_inputs(loaded, inputs)
    unet, cfg = loaded.unet, loaded.scheduler_config
    device = next(unet.parameters()).device
    task = inputs.task
    schedule = schedule or ControlSchedule.for_task(task, steps)
    hw = tuple(loaded.sample_shape[1:])
    guided = inputs.guidance is not None and inputs.guidance != 1.0
    target = inputs.conditioning.repeat_to(1)
    if guided:
        target.require_null()
    source = source_conditioning(target)
    controller = Controller(schedule=schedule, sample_hw=hw)

    m_s = inputs.subject_mask
    if m_s is None:
        log.info("no subject mask: the whole subject image is the subject")
        m_s = torch.ones(hw, dtype=torch.bool)
    sub_states = ddim_invert(unet, cfg, inputs.subject[None], steps, source, invert_refine, progress)
    if task is Task.EDIT:
        con_states = ddim_invert(unet, cfg, inputs.condition[None], steps, source, invert_refine, progress)
        con_cond, m_c = source, inputs.condition_mask
    else:
        con_cond = target
        noise = seeded_noise(1, loaded.sample_shape, seed)
        controller.recording = True
        with controlled(unet, controller):
            run = ddim_sample(
                unet,
                cfg,
                noise,
                steps,
                keep_trajectory=True,
                set_step=loaded.set_step,
                conditioning=target,
                guidance_scale=inputs.guidance if guided else None,
                progress=progress,
            )
        con_states = [noise.to(device), *[z.to(device) for z in run.trajectory]]
        controller.recording = False
        m_c = (localizer or CrossAttentionLocalizer())(controller.attention_maps(), run.images[0])
    controller.set_masks(m_s.bool(), m_c.bool())

    scheduler, timesteps, prevs = ddim_grid(cfg, steps)
    kwargs = {k: v.to(device) for k, v in _stack([source, con_cond, target], guided).items()}
    target_kwargs = {k: v.to(device) for k, v in _stack([target], guided).items()}
    keep = m_c.to(device)[None, None]
    z = con_states[0].clone()
    trajectory = []
    with controlled(unet, controller):
        for i, t in enumerate(tqdm(timesteps, desc="customize", disable=not progress, leave=False)):
            controller.step = i
            if loaded.set_step is not None:
                loaded.set_step(i)
            if schedule.controls(i):
                x, kw, row = torch.cat([sub_states[i], con_states[i], z]), kwargs, 2
            else:  # no layer is controlled: the target alone, exactly as plain sampling calls it
                x, kw, row = z, target_kwargs, 0
            n = x.shape[0]
            if guided:
                tt = torch.full((2 * n,), t, device=device, dtype=torch.long)
                out = denoise(unet, torch.cat([x, x]), tt, kw)
                eps = cfg_combine(out[row : row + 1], out[n + row : n + row + 1], float(inputs.guidance))
            else:
                tt = torch.full((n,), t, device=device, dtype=torch.long)
                eps = denoise(unet, x, tt, kw)[row : row + 1]
            z = ddim_step(scheduler, eps, t, prevs[i], z)
            if task is Task.EDIT:  # z <- (1 - M_C) z_con + M_C z, M_C binary
                z = torch.where(keep, z, con_states[i + 1])
            trajectory.append(z[0].cpu())
    image = z[0].cpu()
    if scheduler.config.clip_sample:
        bound = float(scheduler.config.clip_sample_range)
        image = image.clamp(-bound, bound)
    return CustomizeResult(
        image,
        task,
        schedule,
        m_s.bool(),
        m_c.bool(),
        [s[0].cpu() for s in sub_states],
        [s[0].cpu() for s in con_states],
        trajectory,
    )
