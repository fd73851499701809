"""MCA-Ctrl subject editing on the device: inversion, the controlled loop and blending, torch-free.

The same computation as edgediff/customize/pipeline.py (editing task), on the controlled graph of a
customization bundle (`customize_spec` module doc):

1. DDIM inversion (`DDIMSampler.invert_step`) of the subject and the condition image, both in one
   graph call per step (streams 0 and 1, mode all plain, unguided, the sources' conditioning);
2. the target starts from the condition's inverted noise; at step `i` the graph runs the three
   streams [subject state i, condition state i, target] with the mode row `modes[i]` (a row of
   zeros is plain sampling of the target), classifier-free guidance as a second group of rows;
3. after each DDIM step (the bundle sampler's `step`), `z <- (1 - M_C) z_con + M_C z` with
   `z_con` the condition's state after the step (blend `edit`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgediff_runtime.backends import Backend
from edgediff_runtime.bundle import Bundle
from edgediff_runtime.conditioning import ConditioningSpec, gather_labels, load_label_embeddings
from edgediff_runtime.customize_spec import STREAMS, CustomizeSpec
from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.pipeline import make_feeds
from edgediff_runtime.samplers import DDIMSampler, cfg_combine, make_sampler

F32 = np.float32


@dataclass
class CustomizeInputs:
    """Images (C, H, W) float32 in the sample space, bool (H, W) masks on the sample grid, and the
    target's conditioning feeds (graph input -> (1, ...)); `null`: the null condition rows."""

    subject: np.ndarray
    condition: np.ndarray
    subject_mask: np.ndarray
    condition_mask: np.ndarray
    cond: dict[str, np.ndarray]
    null: dict[str, np.ndarray] | None = None
    guidance: float | None = None

    @property
    def guided(self) -> bool:
        return self.guidance is not None and self.guidance != 1.0


@dataclass
class CustomizeRun:
    """The target image and the latents parity compares: `subject_states[i]` / `condition_states[i]`
    the input of step `i` (`[steps]` the image), `trajectory[i]` the target after step `i`."""

    image: np.ndarray
    subject_states: np.ndarray
    condition_states: np.ndarray
    trajectory: np.ndarray
    call_seconds: list[float] = field(default_factory=list)


StepCallback = Callable[[str, int], None]


class ControlledModel:
    """One call of the controlled graph: three streams (1, C, H, W) each, their conditioning rows,
    the masks and one mode row -> the three streams' model outputs (guidance combined)."""

    def __init__(self, bundle: Bundle, backend: Backend, spec: CustomizeSpec, masks: np.ndarray):
        self.model, self.backend, self.spec = bundle.manifest.model, backend, spec
        self.cond_input = bundle.manifest.conditioning.input if bundle.manifest.conditioning else None
        self.masks = masks.astype(F32)[None]  # (1, 2, H, W)
        self.call_seconds: list[float] = []

    def __call__(
        self,
        streams: list[np.ndarray],
        t: float,
        i: int,
        conds: list[dict[str, np.ndarray]],
        mode: list[int],
        guidance: float | None = None,
    ) -> list[np.ndarray]:
        """`conds`: one feed dict per group (1 group, or [uncond, cond] with `guidance`), each the
        three streams' rows concatenated on the token axis."""
        groups = len(conds)
        x = np.concatenate(streams, axis=1)
        c = streams[0].shape[1]
        extra = {
            self.spec.mask_input: np.repeat(self.masks, groups, axis=0),
            self.spec.mode_input: np.tile(np.asarray(mode, dtype=np.int64)[None], (groups, 1)),
        }
        if self.cond_input is not None:
            extra[self.cond_input] = np.concatenate([g[self.cond_input] for g in conds], axis=0)
        feeds = make_feeds(self.model, np.repeat(x, groups, axis=0), t, i, extra)
        start = time.perf_counter()
        out = self.backend.run(feeds)[self.model.output_name]
        self.call_seconds.append(time.perf_counter() - start)
        out = np.asarray(out, dtype=F32)
        if out.shape != (groups, *x.shape[1:]):
            raise RuntimeStageError(
                f"the controlled graph returned shape {list(out.shape)}, expected {[groups, *x.shape[1:]]}; "
                "re-export the bundle"
            )
        if groups == 2:
            out = cfg_combine(out, float(guidance))
        return [out[:, k * c : (k + 1) * c] for k in range(len(STREAMS))]


def _stream_conds(inputs: CustomizeInputs, spec: CustomizeSpec, cond_input: str | None):
    """Feed dicts per group: (sources, target) rows -> [subject, condition, target] on the token axis."""
    if cond_input is None:
        return [{}], [{}]
    target = inputs.cond[cond_input]
    if spec.source_conditioning == "null":
        if inputs.null is None:
            raise RuntimeStageError("this bundle's sources use the null condition, but none was built")
        source = inputs.null[cond_input]
    else:
        source = target

    def rows(*parts: np.ndarray) -> dict[str, np.ndarray]:
        return {cond_input: np.concatenate(parts, axis=1).astype(F32)}

    invert = [rows(source, source, source)]  # inversion: unguided, sources only
    if inputs.guided:
        null = inputs.null[cond_input]
        return invert, [rows(source, source, null), rows(source, source, target)]  # [uncond; cond]
    return invert, [rows(source, source, target)]


def null_rows(root: Path, spec: ConditioningSpec | None) -> dict[str, np.ndarray] | None:
    """One row of the bundle's null condition (the sources' conditioning): the label table's null
    row, or the null embedding file; None when the bundle has none."""
    if spec is None:
        return None
    if spec.kind == "label_table":
        table = load_label_embeddings(Path(root), spec)
        return {spec.input: gather_labels(table, np.full((1, table.shape[0]), table.shape[1] - 1))}
    if spec.kind == "embeddings" and spec.null_embedding is not None:
        null = np.load(Path(root) / spec.null_embedding, allow_pickle=False).astype(F32)
        return {spec.input: null.reshape(1, *spec.shape)}
    return None


def check_inputs(bundle: Bundle, inputs: CustomizeInputs) -> None:
    """Image shapes against the bundle's sample shape, masks on its grid and not empty."""
    shape = tuple(bundle.manifest.model.sample_shape)
    for what, img in (("subject image", inputs.subject), ("condition image", inputs.condition)):
        if tuple(img.shape) != shape:
            raise RuntimeStageError(f"{what} has shape {tuple(img.shape)} but the bundle samples {shape}")
    for what, m in (("subject mask", inputs.subject_mask), ("condition mask", inputs.condition_mask)):
        if tuple(m.shape) != shape[1:]:
            raise RuntimeStageError(f"{what} has shape {tuple(m.shape)}; the sample grid is {shape[1:]}")
        if not m.any():
            raise RuntimeStageError(f"{what} is empty (no pixel set); mark the region with nonzero pixels")
    if inputs.guided and inputs.null is None:
        raise RuntimeStageError(f"--guidance {inputs.guidance:g} needs a null condition; pass --guidance 1")


def invert(
    call: ControlledModel,
    sampler: DDIMSampler,
    images: tuple[np.ndarray, np.ndarray],
    conds: list[dict[str, np.ndarray]],
    refine: int = 0,
    progress: StepCallback | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic DDIM inversion of two images (1, C, H, W) at once (streams 0 and 1; stream 2
    repeats stream 1): states (steps + 1, C, H, W) each, `[0]` the inverted noise, `[steps]` the
    image. `refine` > 0 repeats each step with the model at the current estimate of `z_t`
    (edgediff/customize/inversion.py)."""
    plain = [0] * len(call.spec.layers)
    z = [images[0], images[1]]
    states = [list(z)]
    for i in reversed(range(sampler.num_steps)):
        t = float(sampler.timesteps[i])
        z_t = list(z)
        for _ in range(1 + refine):
            out = call([z_t[0], z_t[1], z_t[1]], t, i, conds, plain)
            z_t = [sampler.invert_step(out[k], i, z_t[k], z[k]) for k in range(2)]
        z = z_t
        states.append(list(z))
        if progress is not None:
            progress("inverting", i)
    states = states[::-1]
    return (np.stack([s[0][0] for s in states]), np.stack([s[1][0] for s in states]))


def customize(
    bundle: Bundle,
    backend: Backend,
    spec: CustomizeSpec,
    inputs: CustomizeInputs,
    progress: StepCallback | None = None,
) -> CustomizeRun:
    """MCA-Ctrl subject editing with the bundle's controlled graph (module doc)."""
    check_inputs(bundle, inputs)
    sampler = make_sampler(bundle.manifest.sampler, spec.steps)
    if type(sampler) is not DDIMSampler or sampler.stochastic:
        raise RuntimeStageError(
            "customization needs the deterministic DDIM sampler; the bundle has "
            f"{bundle.manifest.sampler.kind}"
        )
    masks = np.stack([inputs.subject_mask, inputs.condition_mask])
    call = ControlledModel(bundle, backend, spec, masks)
    invert_conds, conds = _stream_conds(inputs, spec, call.cond_input)
    sub, con = invert(
        call,
        sampler,
        (inputs.subject[None], inputs.condition[None]),
        invert_conds,
        spec.invert_refine,
        progress,
    )
    keep = inputs.condition_mask[None, None]
    z = con[0][None].copy()
    trajectory = []
    for i in range(sampler.num_steps):
        t = float(sampler.timesteps[i])
        out = call([sub[i][None], con[i][None], z], t, i, conds, spec.modes[i], inputs.guidance)
        z = sampler.step(out[2], i, z)
        if spec.blend == "edit":  # z <- (1 - M_C) z_con + M_C z, M_C binary
            z = np.where(keep, z, con[i + 1][None]).astype(F32)
        trajectory.append(z[0].copy())
        if progress is not None:
            progress("customize", i)
    image = z[0]
    if bundle.manifest.sampler.clip_sample:
        bound = F32(bundle.manifest.sampler.clip_sample_range)
        image = np.clip(image, -bound, bound)
    return CustomizeRun(image.astype(F32), sub, con, np.stack(trajectory), call.call_seconds)
