"""MCA-Ctrl benchmark on `reference:canvas32` with exact compositing masks (docs/customize.md).

Cases (seeded, digits from the held-out 20 % of the pool, which neither canvas32 nor its slot
classifier was trained on), `--cases` per task and seed:

* editing: a condition canvas with two digits; slot `s` is to take the subject's digit (another
  class). The subject canvas holds that digit in slot `s` and a distractor digit in the other
  slot. `M_S` = where the subject digit was pasted, `M_C` = where the condition's slot-`s` digit
  was pasted (`canvas32.data.slot_mask`); target labels = the condition's with slot `s` swapped.
* generation: the target labels put the subject's class in slot `s` and a random digit in the
  other; `M_S` as above, `M_C` = every pixel slot `s` can reach (all jitters). The condition image
  is the plain guided sample of the target labels from the case's noise (what MCA-Ctrl's
  condition process draws).

Methods: MCA-Ctrl (default schedule, exact masks; in generation the exact `M_C` enters through
the `Localizer` interface), its ablations (no SAGI, no SALQ, reversed order, masks localized from
cross-attention (top 30 %, 3x3 dilation) and the same without dilation; and, to size the
attention control itself, no control at all (editing: inversion, regeneration and latent
blending only; generation: plain sampling) and SAGI on every step and layer), baselines (DDIM
inversion of the condition image (editing) or of the subject (generation) regenerated with the
target labels; copy-paste of the subject under `M_S` into the condition with `M_C` erased, then
SDEdit: noised to `--sdedit-strength` of the grid and denoised with the target labels) and
references (the condition image unchanged; the copy-paste itself; the copy-paste of another digit
of the subject's class, what the class alone scores).

Metrics, always on the exact masks, per seed over its cases:
* subject fidelity: cosine of the slot classifier's 128-d penultimate features (its FD space) of
  the output with everything outside `M_C` set to background (-1) and of the subject canvas
  with everything outside `M_S` set to background (both digits sit in slot `s`);
* subject identification: the fraction of cases where, in that feature space, the output is
  nearer the subject than any of `GALLERY` other digits of its class placed where the subject is
  (chance 1 / (GALLERY + 1)): the subject's own appearance, beyond its class;
* background PSNR (range [-1, 1]) outside `M_C` against the condition image, pooled over the cases'
  pixels (inf = identical);
* condition alignment: the slot classifier's accuracy on slot `s` (the target's label) and on the
  other slot (unchanged label).
Rows report mean and spread (min-max) over the seeds; `verdict` compares MCA-Ctrl with both
baselines per seed and beyond the seed spread. `properties` checks the three properties of
docs/customize.md on canvas32 itself.

Usage: `python -m bench.customize [--cases 4] [--seeds 0 1 2] [--steps 10]` (writes
bench/results/customize.json, a section of docs/RESULTS.md and docs/figures/customize_examples.png).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from bench._report import ROOT, host_info, update_results_section, write_json
from edgediff.customize.attention import Controller, controlled
from edgediff.customize.inversion import ddim_grid, ddim_invert
from edgediff.customize.masks import CrossAttentionLocalizer
from edgediff.customize.pipeline import CustomizeInputs, customize, source_conditioning
from edgediff.customize.schedule import ControlSchedule, Task
from edgediff.models.call import denoise
from edgediff.models.conditioning import Conditioning, guided_batch, label_conditioning
from edgediff.models.loading import LoadedModel, load_model
from edgediff.models.sample import sample_model
from edgediff.reference.canvas32 import CLASSIFIER_DIR
from edgediff.reference.canvas32.classifier import SlotCNN, load_slot_classifier
from edgediff.reference.canvas32.data import JITTER, SLOTS, DigitPool, compose, slot_mask
from edgediff.reference.canvas32.evaluate import DEFAULT_GUIDANCE
from edgediff.reference.metrics import psnr
from edgediff.sampling import cfg_combine, ddim_sample, ddim_step, seeded_noise

log = logging.getLogger(__name__)

FIGURE = ROOT / "docs" / "figures" / "customize_examples.png"
SHORT = {  # column titles of the picture strip (16 characters fit a tile)
    "copy-paste+sdedit": "paste + SDEdit",
    "localized-masks": "localized masks",
    "localized-no-dilation": "localized no dil",
    "same-class-paste": "same-class paste",
}
MCA = "mca-ctrl"
ABLATIONS = (
    "no-sagi",
    "no-salq",
    "reversed-order",
    "localized-masks",
    "localized-no-dilation",
    "no-control",
    "sagi-all-steps",
)
BASELINES = ("ddim-inversion", "copy-paste+sdedit")
REFERENCES = ("condition-unchanged", "copy-paste", "same-class-paste")
METHODS = (MCA, *ABLATIONS, *BASELINES, *REFERENCES)
BACKGROUND = -1.0
GALLERY = 9  # same-class digits the subject is told apart from (identification chance 1 / 10)


@dataclass(frozen=True)
class Case:
    """One customization problem with its exact masks (module doc)."""

    task: Task
    slot: int
    subject: Tensor  # (1, 32, 32)
    subject_mask: Tensor  # bool (32, 32)
    subject_labels: tuple[int, int]
    labels: tuple[int, int]  # the target's
    condition_mask: Tensor  # bool (32, 32), exact M_C
    condition: Tensor | None  # editing: the image to edit; generation: None (plain sample)
    condition_labels: tuple[int, int]
    noise_seed: int
    gallery: Tensor  # (K, 1, 32, 32): other digits of the subject's class, alone at the subject's place
    stand_in: Tensor  # (1, 32, 32): one more such digit, not in the gallery


def _pick(pool: DigitPool, cls: int, gen: torch.Generator) -> Tensor:
    members = pool.by_class[cls]
    return pool.images[members[int(torch.randint(len(members), (1,), generator=gen))]]


def _offsets(gen: torch.Generator) -> list[tuple[int, int]]:
    return [tuple(o) for o in torch.randint(-JITTER, JITTER + 1, (SLOTS, 2), generator=gen).tolist()]


def _gallery(pool: DigitPool, cls: int, subject: Tensor, slot: int, offset, size: int, gen) -> Tensor:
    """`size` digits of class `cls` other than `subject`, each alone in `slot` at `offset`."""
    members = pool.by_class[cls]
    others = [int(m) for m in members[torch.randperm(len(members), generator=gen)]]
    digits = [pool.images[m] for m in others if not torch.equal(pool.images[m], subject)][:size]
    place = [offset, offset]
    return torch.stack([compose([d if k == slot else None for k in range(SLOTS)], place) for d in digits])


def make_cases(seed: int, per_task: int, pool: DigitPool, gallery: int = GALLERY) -> list[Case]:
    """`per_task` editing and `per_task` generation cases, all drawn from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for task in (Task.EDIT, Task.GENERATE):
        for _ in range(per_task):
            slot = int(torch.randint(SLOTS, (1,), generator=gen))
            other = 1 - slot
            cls, distractor, other_cls = (int(c) for c in torch.randint(10, (3,), generator=gen))
            sub_labels = [0, 0]
            sub_labels[slot], sub_labels[other] = cls, distractor
            digits: list[Tensor | None] = [None, None]
            digits[slot], digits[other] = _pick(pool, cls, gen), _pick(pool, distractor, gen)
            sub_off = _offsets(gen)
            subject = compose(digits, sub_off)
            others = _gallery(pool, cls, digits[slot], slot, sub_off[slot], gallery + 1, gen)
            labels = [0, 0]
            labels[slot], labels[other] = cls, other_cls
            condition, cond_labels, m_c = None, tuple(labels), slot_mask(slot)
            if task is Task.EDIT:
                old = (cls + 1 + int(torch.randint(9, (1,), generator=gen))) % 10  # any other class
                cond_labels_l = list(labels)
                cond_labels_l[slot] = old
                cond_digits: list[Tensor | None] = [None, None]
                cond_digits[slot], cond_digits[other] = _pick(pool, old, gen), _pick(pool, other_cls, gen)
                cond_off = _offsets(gen)
                condition, cond_labels = compose(cond_digits, cond_off), tuple(cond_labels_l)
                m_c = slot_mask(slot, cond_off[slot])
            cases.append(
                Case(
                    task=task,
                    slot=slot,
                    subject=subject,
                    subject_mask=slot_mask(slot, sub_off[slot]),
                    subject_labels=tuple(sub_labels),
                    labels=tuple(labels),
                    condition_mask=m_c,
                    condition=condition,
                    condition_labels=cond_labels,
                    noise_seed=seed * 1000 + len(cases),
                    gallery=others[:-1],
                    stand_in=others[-1],
                )
            )
    return cases


@dataclass(frozen=True)
class Settings:
    steps: int = 10
    guidance: float = DEFAULT_GUIDANCE
    sdedit_strength: float = 0.5


@dataclass(frozen=True)
class FixedMask:
    """A `Localizer` that returns a given mask (how exact masks enter subject-driven generation)."""

    mask: Tensor

    def __call__(self, maps: Tensor, image: Tensor | None = None) -> Tensor:
        return self.mask


def _conditioning(loaded: LoadedModel, labels: tuple[int, int]) -> Conditioning:
    return label_conditioning(loaded, torch.tensor([labels]))


def condition_image(loaded: LoadedModel, case: Case, s: Settings) -> Tensor:
    """The image whose background is kept: the given one (editing) or the plain guided sample."""
    if case.condition is not None:
        return case.condition
    cond = _conditioning(loaded, case.labels)
    return sample_model(loaded, 1, s.steps, case.noise_seed, conditioning=cond, guidance_scale=s.guidance)[0]


@torch.no_grad()
def localize(
    loaded: LoadedModel, image: Tensor, labels: tuple[int, int], token: int, steps: int, dilation: int
) -> Tensor:
    """The cross-attention localizer's mask of slot token `token` of `image`, with maps recorded
    while DDIM-inverting the image under its own labels."""
    hw = tuple(loaded.sample_shape[1:])
    controller = Controller(ControlSchedule.off(), hw, recording=True)
    with controlled(loaded.unet, controller):
        ddim_invert(loaded.unet, loaded.scheduler_config, image[None], steps, _conditioning(loaded, labels))
    return CrossAttentionLocalizer(token=token, dilation=dilation)(controller.attention_maps(), image)


def schedule_for(variant: str, task: Task, steps: int) -> ControlSchedule:
    """The step x layer schedule of MCA-Ctrl (the task's default) or of an ablation."""
    schedule = ControlSchedule.for_task(task, steps)
    return {
        "no-sagi": replace(schedule, sagi_parts=()),
        "no-salq": replace(schedule, salq_parts=()),
        "reversed-order": schedule.reversed(),
        "no-control": ControlSchedule.off(),
        "sagi-all-steps": ControlSchedule(steps, steps),
    }.get(variant, schedule)


def run_mca(loaded: LoadedModel, case: Case, s: Settings, variant: str = MCA) -> Tensor:
    """MCA-Ctrl or one of its ablations (module doc) on `case`."""
    schedule = schedule_for(variant, case.task, s.steps)
    m_s, m_c = case.subject_mask, case.condition_mask
    localizer = FixedMask(m_c)
    if variant.startswith("localized"):
        dilation = 1 if variant == "localized-no-dilation" else 3
        m_s = localize(loaded, case.subject, case.subject_labels, case.slot, s.steps, dilation)
        localizer = CrossAttentionLocalizer(token=case.slot, dilation=dilation)
        if case.condition is not None:
            m_c = localize(loaded, case.condition, case.condition_labels, case.slot, s.steps, dilation)
    cond = _conditioning(loaded, case.labels)
    if case.task is Task.EDIT:
        inputs = CustomizeInputs(case.subject, cond, m_s, case.condition, m_c, s.guidance)
    else:
        inputs = CustomizeInputs(case.subject, cond, m_s, guidance=s.guidance)
    result = customize(loaded, inputs, s.steps, seed=case.noise_seed, schedule=schedule, localizer=localizer)
    return result.image


@torch.no_grad()
def ddim_inversion_baseline(loaded: LoadedModel, case: Case, s: Settings) -> Tensor:
    """Invert the condition image (editing) or the subject (generation) under the null condition,
    as MCA-Ctrl inverts its sources, and regenerate with the target labels and guidance."""
    cond = _conditioning(loaded, case.labels)
    source = case.condition if case.condition is not None else case.subject
    unet, config = loaded.unet, loaded.scheduler_config
    states = ddim_invert(unet, config, source[None], s.steps, source_conditioning(cond))
    run = ddim_sample(unet, config, states[0], s.steps, conditioning=cond, guidance_scale=s.guidance)
    return run.images[0]


def copy_paste(base: Tensor, subject: Tensor, m_s: Tensor, m_c: Tensor) -> Tensor:
    """`base` with `M_C` erased to background and the subject's pixels under `M_S` pasted in."""
    out = torch.where(m_c, torch.full_like(base, BACKGROUND), base)
    return torch.where(m_s, subject, out)


@torch.no_grad()
def sdedit(loaded: LoadedModel, image: Tensor, cond: Conditioning, s: Settings, seed: int) -> Tensor:
    """SDEdit (Meng et al. 2022): noise `image` to the grid step `round(steps * (1 - strength))`,
    `z = sqrt(a_t) x + sqrt(1 - a_t) n`, and run the remaining DDIM steps with guidance;
    strength 0 returns the image."""
    scheduler, timesteps, prevs = ddim_grid(loaded.scheduler_config, s.steps)
    start = round(s.steps * (1 - s.sdedit_strength))
    if start >= s.steps:
        return image.clone()
    a = scheduler.alphas_cumprod[timesteps[start]]
    noise = seeded_noise(1, tuple(image.shape), seed)
    z = a.sqrt() * image[None] + (1 - a).sqrt() * noise
    kwargs = guided_batch(cond)
    for i in range(start, s.steps):
        tt = torch.full((2,), timesteps[i], dtype=torch.long)
        out_cond, out_null = denoise(loaded.unet, torch.cat([z, z]), tt, kwargs).chunk(2)
        z = ddim_step(scheduler, cfg_combine(out_cond, out_null, s.guidance), timesteps[i], prevs[i], z)
    bound = float(scheduler.config.clip_sample_range) if scheduler.config.clip_sample else math.inf
    return z[0].clamp(-bound, bound)


def run_method(loaded: LoadedModel, method: str, case: Case, condition: Tensor, s: Settings) -> Tensor:
    if method == MCA or method in ABLATIONS:
        return run_mca(loaded, case, s, method)
    if method == "ddim-inversion":
        return ddim_inversion_baseline(loaded, case, s)
    pasted = copy_paste(condition, case.subject, case.subject_mask, case.condition_mask)
    if method == "copy-paste":
        return pasted
    if method == "copy-paste+sdedit":
        return sdedit(loaded, pasted, _conditioning(loaded, case.labels), s, case.noise_seed + 500)
    if method == "same-class-paste":
        return copy_paste(condition, case.stand_in, case.subject_mask, case.condition_mask)
    if method == "condition-unchanged":
        return condition.clone()
    raise ValueError(f"unknown method {method!r}")


def masked(images: Tensor, masks: Tensor) -> Tensor:
    """Everything outside each image's mask set to background: images (N, 1, H, W), masks (N, H, W)."""
    return torch.where(masks[:, None], images, torch.full_like(images, BACKGROUND))


@torch.no_grad()
def score(classifier: SlotCNN, outputs: Tensor, cases: list[Case], conditions: Tensor) -> dict[str, float]:
    """The metrics of the module doc for outputs (N, 1, 32, 32) of `cases`, pooled over the cases."""
    m_c = torch.stack([c.condition_mask for c in cases])
    m_s = torch.stack([c.subject_mask for c in cases])
    subjects = torch.stack([c.subject for c in cases])
    f_out = classifier.features(masked(outputs, m_c))
    f_sub = classifier.features(masked(subjects, m_s))
    fidelity = F.cosine_similarity(f_out, f_sub, dim=1)
    # identification: the subject is the nearest of itself and its gallery to the output
    identified = []
    for i, c in enumerate(cases):
        f_gal = classifier.features(masked(c.gallery, m_s[i].expand(len(c.gallery), -1, -1)))
        rival = F.cosine_similarity(f_out[i : i + 1], f_gal, dim=1).max()
        identified.append(fidelity[i] > rival)
    identified = torch.stack(identified)
    outside = ~m_c[:, None]
    bg = psnr(outputs[outside], conditions[outside])
    preds = classifier(outputs).argmax(-1)
    slots = torch.tensor([c.slot for c in cases])
    labels = torch.tensor([c.labels for c in cases])
    rows = torch.arange(len(cases))
    return {
        "fidelity": float(fidelity.mean()),
        "identification": float(identified.float().mean()),
        "background_psnr": bg,
        "edited_slot_accuracy": float((preds[rows, slots] == labels[rows, slots]).float().mean()),
        "other_slot_accuracy": float((preds[rows, 1 - slots] == labels[rows, 1 - slots]).float().mean()),
    }


@torch.no_grad()
def properties(loaded: LoadedModel, case: Case, s: Settings) -> dict:
    """The three properties of docs/customize.md measured on canvas32 (one editing case)."""
    cond = _conditioning(loaded, case.labels)
    off = customize(
        loaded,
        CustomizeInputs(case.subject, cond, guidance=s.guidance),
        s.steps,
        seed=case.noise_seed,
        schedule=ControlSchedule.off(),
    ).image
    plain = sample_model(loaded, 1, s.steps, case.noise_seed, conditioning=cond, guidance_scale=s.guidance)[0]
    full = torch.ones(case.subject_mask.shape, dtype=torch.bool)
    own = Conditioning(_conditioning(loaded, case.subject_labels).values)  # no null rows: one conditioning
    recon = {}
    for refine in (0, 10):
        inputs = CustomizeInputs(case.subject, own, full, case.subject, full)
        sagi_everywhere = ControlSchedule(s.steps, s.steps)
        out = customize(loaded, inputs, s.steps, schedule=sagi_everywhere, invert_refine=refine).image
        recon[f"refine_{refine}"] = round(psnr(out, case.subject), 2)
    edited = run_mca(loaded, case, s)
    outside = ~case.condition_mask
    return {
        "control_off_equals_plain_sampling": bool(torch.equal(off, plain)),
        "reconstruction_psnr_db": recon,
        "editing_outside_mask_bit_exact": bool(torch.equal(edited[:, outside], case.condition[:, outside])),
    }


@torch.no_grad()
def attention_shares(loaded: LoadedModel, case: Case, s: Settings) -> dict[str, float]:
    """How much self- and cross-attention write into the residual stream of the transformer
    blocks: mean over blocks and steps of `||attn(x)|| / ||h||` (`h` the block's input), on one
    plain guided sample. Self-attention is the only path of the attention control."""
    ratios: dict[str, list[float]] = {"attn1": [], "attn2": []}
    stream: list[float] = []
    hooks = []
    for name, module in loaded.unet.named_modules():
        if type(module).__name__ == "BasicTransformerBlock":
            hooks.append(module.register_forward_pre_hook(lambda m, a: stream.append(float(a[0].norm()))))
        elif name.rsplit(".", 1)[-1] in ratios:
            key = name.rsplit(".", 1)[-1]
            hooks.append(
                module.register_forward_hook(lambda m, a, out, k=key: ratios[k].append(float(out.norm())))
            )
    try:
        condition_image(loaded, replace(case, condition=None), s)
    finally:
        for h in hooks:
            h.remove()
    return {
        "self_attention": float(np.mean([a / h for a, h in zip(ratios["attn1"], stream, strict=True)])),
        "cross_attention": float(np.mean([a / h for a, h in zip(ratios["attn2"], stream, strict=True)])),
    }


def run_seed(loaded, classifier, pool, seed: int, per_task: int, s: Settings, methods=METHODS) -> dict:
    """Every method on the seed's cases; returns per-task metrics, seconds and the images."""
    cases = make_cases(seed, per_task, pool)
    conditions = [condition_image(loaded, c, s) for c in cases]
    outputs = {m: [] for m in methods}
    seconds = dict.fromkeys(methods, 0.0)
    for case, cond in tqdm(list(zip(cases, conditions)), desc=f"seed {seed}", leave=False):
        for m in methods:
            t0 = time.perf_counter()
            outputs[m].append(run_method(loaded, m, case, cond, s))
            seconds[m] += time.perf_counter() - t0
    out = {"seed": seed, "tasks": {}, "control_effect_psnr": {}}
    for task in (Task.EDIT, Task.GENERATE):
        idx = [i for i, c in enumerate(cases) if c.task is task]
        sub_cases, sub_cond = [cases[i] for i in idx], torch.stack([conditions[i] for i in idx])
        if MCA in methods and "no-control" in methods:  # how far the attention control moves the output
            inside = torch.stack([cases[i].condition_mask for i in idx])[:, None]
            with_control = torch.stack([outputs[MCA][i] for i in idx])
            without = torch.stack([outputs["no-control"][i] for i in idx])
            out["control_effect_psnr"][task.value] = psnr(with_control[inside], without[inside])
        out["tasks"][task.value] = {
            m: score(classifier, torch.stack([outputs[m][i] for i in idx]), sub_cases, sub_cond)
            | {"seconds_per_case": seconds[m] / len(cases)}
            for m in methods
        }
    return out | {"cases": cases, "conditions": conditions, "outputs": outputs}


def _per_seed(seeds: list[dict], task: str, method: str, metric: str) -> list[float]:
    return [r["tasks"][task][method][metric] for r in seeds]


def verdict(seeds: list[dict]) -> dict:
    """MCA-Ctrl against each baseline: fidelity higher and background PSNR not lower, on every
    seed (paired: the same cases) and beyond the seed spread (min of one above max of the other)."""
    out = {}
    for task in seeds[0]["tasks"]:
        for base in BASELINES:
            if base not in seeds[0]["tasks"][task] or MCA not in seeds[0]["tasks"][task]:
                continue
            f_m, f_b = _per_seed(seeds, task, MCA, "fidelity"), _per_seed(seeds, task, base, "fidelity")
            i_m = _per_seed(seeds, task, MCA, "identification")
            i_b = _per_seed(seeds, task, base, "identification")
            p_m = _per_seed(seeds, task, MCA, "background_psnr")
            p_b = _per_seed(seeds, task, base, "background_psnr")
            out[f"{task}: {MCA} vs {base}"] = {
                "fidelity_higher_every_seed": all(a > b for a, b in zip(f_m, f_b)),
                "fidelity_higher_beyond_seed_spread": min(f_m) > max(f_b),
                "background_not_lower_every_seed": all(a >= b for a, b in zip(p_m, p_b)),
                "background_not_lower_beyond_seed_spread": min(p_m) >= max(p_b),
                "identification_higher_every_seed": all(a > b for a, b in zip(i_m, i_b)),
                "identification_higher_beyond_seed_spread": min(i_m) > max(i_b),
                "fidelity": {MCA: f_m, base: f_b},
                "identification": {MCA: i_m, base: i_b},
                "background_psnr": {MCA: p_m, base: p_b},
            }
    return out


def _jsonable(x):
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    return x


def _cell(values: list[float], digits: int) -> str:
    if all(math.isinf(v) for v in values):
        return "identical"
    lo, hi, mean = min(values), max(values), float(np.mean(values))
    return f"{mean:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"### MCA-Ctrl on canvas32 (`python -m bench.customize`, {s['cases_per_task']} cases per task and "
        f"seed, seeds {s['seeds']}, {s['steps']} DDIM steps, guidance {s['guidance']}, "
        f"{result['seconds']:.0f} s on {result['host']['torch_threads']} thread(s))",
        "",
        f"Model `{result['model']}`. Each cell: mean over seeds (min-max over seeds). Fidelity: cosine of "
        "slot-classifier features inside the masks; identification: output nearer the subject than "
        f"{GALLERY} other digits of its class (chance {1 / (GALLERY + 1):.2f}); background: PSNR outside "
        "`M_C` against the condition image (identical = bit exact); accuracies: slot classifier on the "
        "edited slot / the other slot.",
        "",
        "| task | method | subject fidelity | identification | background PSNR (dB) | edited slot acc. "
        "| other slot acc. | s/case |",
        "|---|---|---|---|---|---|---|---|",
    ]
    seeds = result["seeds"]
    for task in seeds[0]["tasks"]:
        for m in seeds[0]["tasks"][task]:
            cells = [
                _cell(_per_seed(seeds, task, m, "fidelity"), 3),
                _cell(_per_seed(seeds, task, m, "identification"), 2),
                _cell(_per_seed(seeds, task, m, "background_psnr"), 1),
                _cell(_per_seed(seeds, task, m, "edited_slot_accuracy"), 2),
                _cell(_per_seed(seeds, task, m, "other_slot_accuracy"), 2),
                f"{np.mean(_per_seed(seeds, task, m, 'seconds_per_case')):.2f}",
            ]
            lines.append(f"| {task} | {m} | " + " | ".join(cells) + " |")
    p = result["properties"]
    lines += [
        "",
        f"Properties on canvas32: control off = plain sampling bit for bit: "
        f"{p['control_off_equals_plain_sampling']}; editing keeps the condition outside `M_C` bit for bit: "
        f"{p['editing_outside_mask_bit_exact']}; subject = condition with full masks reconstructs the "
        f"subject at {p['reconstruction_psnr_db']['refine_0']} dB (plain inversion), "
        f"{p['reconstruction_psnr_db']['refine_10']} dB (10 refinements). Self-attention output / residual "
        f"stream norm: {result['attention_share_of_residual']['self_attention']:.3f} (cross-attention "
        f"{result['attention_share_of_residual']['cross_attention']:.3f}).",
        "",
        "| comparison | fidelity higher: every seed / beyond spread | identification higher: every seed / "
        "beyond spread | background not lower: every seed / beyond spread |",
        "|---|---|---|---|",
    ]
    for name, v in result["verdict"].items():
        lines.append(
            f"| {name} | {v['fidelity_higher_every_seed']} / {v['fidelity_higher_beyond_seed_spread']} | "
            f"{v['identification_higher_every_seed']} / {v['identification_higher_beyond_seed_spread']} | "
            f"{v['background_not_lower_every_seed']} / {v['background_not_lower_beyond_seed_spread']} |"
        )
    effect = {
        t: _cell([r["control_effect_psnr"][t] for r in seeds], 1) for t in seeds[0]["control_effect_psnr"]
    }
    lines += [
        "",
        "How far the attention control moves the output: PSNR inside `M_C` between MCA-Ctrl and the same "
        "run without control: " + ", ".join(f"{t} {v} dB" for t, v in effect.items()) + ".",
        "",
        f"Examples: `{FIGURE.relative_to(ROOT)}`.",
    ]
    return "\n".join(lines)


def picture_strip(run: dict, methods: list[str], out: Path, per_task: int = 2, scale: int = 3) -> None:
    """Rows: the first `per_task` cases of each task; columns: subject, condition, each method."""
    from PIL import Image, ImageDraw

    cases = run["cases"]
    by_task = [[j for j, c in enumerate(cases) if c.task is t] for t in (Task.EDIT, Task.GENERATE)]
    rows = [i for idx in by_task for i in idx[:per_task]]
    cols = ["subject", "condition", *methods]
    cell, pad, head, left = 32 * scale, 4, 14, 70
    width = left + len(cols) * (cell + pad)
    canvas = Image.new("L", (width, head + len(rows) * (cell + pad)), 255)
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(cols):
        draw.text((left + j * (cell + pad), 1), SHORT.get(name, name)[:16], fill=0)
    for r, i in enumerate(rows):
        y = head + r * (cell + pad)
        draw.text((2, y + cell // 2), cases[i].task.value, fill=0)
        images = [cases[i].subject, run["conditions"][i], *[run["outputs"][m][i] for m in methods]]
        for j, img in enumerate(images):
            arr = ((img[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
            tile = Image.fromarray(arr).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (left + j * (cell + pad), y))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    canvas.save(tmp)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="reference:canvas32")
    ap.add_argument("--cases", type=int, default=4, help="cases per task and seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    ap.add_argument("--sdedit-strength", type=float, default=0.5)
    ap.add_argument("--name", default="customize", help="results name (bench/results/NAME.json)")
    ap.add_argument("--no-docs", action="store_true", help="do not touch docs/RESULTS.md or the figure")
    args = ap.parse_args(argv)
    if args.cases < 1 or args.steps < 1:
        ap.error(f"--cases and --steps must be >= 1, got {args.cases} and {args.steps}")
    if not 0.0 <= args.sdedit_strength <= 1.0:
        ap.error(f"--sdedit-strength must be in [0, 1], got {args.sdedit_strength}")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    classifier = load_slot_classifier(CLASSIFIER_DIR)
    pool = DigitPool.split("val")
    s = Settings(args.steps, args.guidance, args.sdedit_strength)
    runs = [run_seed(loaded, classifier, pool, seed, args.cases, s) for seed in args.seeds]
    edit_case = next(c for c in runs[0]["cases"] if c.task is Task.EDIT)
    seeds = [{k: r[k] for k in ("seed", "tasks", "control_effect_psnr")} for r in runs]
    result = {
        "model": args.model,
        "settings": {
            "cases_per_task": args.cases,
            "seeds": args.seeds,
            "steps": args.steps,
            "guidance": args.guidance,
            "sdedit_strength": args.sdedit_strength,
            "digits": "held-out 20 % (DigitPool.split('val'))",
            "features": "slot classifier (reference/assets/canvas32/slot-classifier), 128-d penultimate",
            "gallery": GALLERY,
        },
        "seeds": seeds,
        "verdict": verdict(seeds),
        "properties": properties(loaded, edit_case, s),
        "attention_share_of_residual": attention_shares(loaded, edit_case, s),
        "host": host_info(),
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    path = write_json(args.name, _jsonable(result))
    print(f"wrote {path} in {result['seconds']} s")
    if not args.no_docs:
        picture_strip(runs[0], [m for m in METHODS if m != "condition-unchanged"], FIGURE)
        update_results_section(args.name, markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
