"""Golden references: what PyTorch recorded at export time, for parity levels 2 and 3
(docs/design.md sections 3 and 4), stored as ``reference/golden.npz`` in the bundle.
"""

from __future__ import annotations

import dataclasses
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgediff_runtime._atomic import atomic_path
from edgediff_runtime.bundle import Bundle
from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.manifest import GOLDEN_PATH


# ------------------------------------------------------------------------------ golden references
@dataclass
class Golden:
    """Golden references recorded from PyTorch at export time (docs/design.md sections 3 and 4)."""

    noise: np.ndarray  # [N, C, H, W] float32, the initial latent before init_noise_sigma scaling
    timesteps: np.ndarray  # [S] model timesteps, in call order
    latents: np.ndarray  # [S, N, C, H, W] float32, latent after each step
    final: np.ndarray  # [N, C, H, W] float32, pipeline output (last latent clipped to [-1, 1])
    fp_final: np.ndarray | None = None  # [N, C, H, W] full-precision model's final output (level 3)
    step_noise: np.ndarray | None = None  # [S, N, C, H, W] noise injected by stochastic samplers
    #: Conditioning feeds of the recording (graph input name -> [N, ...]), the null halves of
    #: classifier-free guidance and its scale (None: no guidance). Video latents are [N, C, F, H, W].
    cond: dict[str, np.ndarray] = field(default_factory=dict)
    null_cond: dict[str, np.ndarray] = field(default_factory=dict)
    guidance_scale: float | None = None

    @property
    def steps(self) -> int:
        """Number of sampler steps recorded."""
        return int(self.timesteps.shape[0])


def _check_golden(g: Golden, where: str) -> None:
    def bad(problem: str) -> RuntimeStageError:
        return RuntimeStageError(f"{where}: {problem}; re-record the golden references")

    if g.noise.ndim not in (4, 5):
        raise bad(f"noise must be [N, C, H, W] or [N, C, F, H, W], got shape {list(g.noise.shape)}")
    if g.timesteps.ndim != 1 or g.timesteps.shape[0] < 1:
        raise bad(f"timesteps must be [S] with S >= 1, got shape {list(g.timesteps.shape)}")
    expect = (g.steps, *g.noise.shape)
    if g.latents.shape != expect:
        raise bad(f"latents must have shape {list(expect)} ([S, N, C, H, W]), got {list(g.latents.shape)}")
    if g.final.shape != g.noise.shape:
        raise bad(f"final must have shape {list(g.noise.shape)}, got {list(g.final.shape)}")
    if g.fp_final is not None and g.fp_final.shape != g.noise.shape:
        raise bad(f"fp_final must have shape {list(g.noise.shape)}, got {list(g.fp_final.shape)}")
    if g.step_noise is not None and g.step_noise.shape != expect:
        raise bad(f"step_noise must have shape {list(expect)}, got {list(g.step_noise.shape)}")
    for key, value in [*g.cond.items(), *g.null_cond.items()]:
        if value.shape[:1] != g.noise.shape[:1]:
            raise bad(f"conditioning feed {key} must have {g.noise.shape[0]} rows, got {list(value.shape)}")
    if g.guidance_scale is not None and set(g.null_cond) != set(g.cond):
        raise bad("guidance needs a null feed for every conditioning feed")


_COND, _NULL, _GUIDANCE = "cond__", "null__", "guidance_scale"


def save_golden(
    folder: str | os.PathLike[str],
    *,
    noise: np.ndarray,
    timesteps: np.ndarray,
    latents: np.ndarray,
    final: np.ndarray,
    fp_final: np.ndarray | None = None,
    step_noise: np.ndarray | None = None,
    cond: dict[str, np.ndarray] | None = None,
    null_cond: dict[str, np.ndarray] | None = None,
    guidance_scale: float | None = None,
) -> Path:
    """Write ``<folder>/reference/golden.npz`` atomically (call before :func:`write_manifest`).

    Conditioning feeds are stored as ``cond__<input>`` / ``null__<input>``, the scale as
    ``guidance_scale``."""
    g = Golden(
        noise=np.asarray(noise, dtype=np.float32),
        timesteps=np.asarray(timesteps),
        latents=np.asarray(latents, dtype=np.float32),
        final=np.asarray(final, dtype=np.float32),
        fp_final=None if fp_final is None else np.asarray(fp_final, dtype=np.float32),
        step_noise=None if step_noise is None else np.asarray(step_noise, dtype=np.float32),
        cond={k: np.asarray(v) for k, v in (cond or {}).items()},
        null_cond={k: np.asarray(v) for k, v in (null_cond or {}).items()},
        guidance_scale=None if guidance_scale is None else float(guidance_scale),
    )
    if np.issubdtype(g.timesteps.dtype, np.integer):
        g.timesteps = g.timesteps.astype(np.int64)
    _check_golden(g, "golden references")
    out = Path(folder) / GOLDEN_PATH
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        k: v
        for k, v in dataclasses.asdict(g).items()
        if v is not None and k not in ("cond", "null_cond", "guidance_scale")
    }
    arrays.update({_COND + k: v for k, v in g.cond.items()})
    arrays.update({_NULL + k: v for k, v in g.null_cond.items()})
    if g.guidance_scale is not None:
        arrays[_GUIDANCE] = np.asarray(g.guidance_scale, dtype=np.float64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with atomic_path(out) as tmp:
        tmp.write_bytes(buf.getvalue())
    return out


def load_golden(bundle: Bundle) -> Golden:
    """Read the bundle's golden references (checksum already verified by :func:`load_bundle`)."""
    path = bundle.golden_path
    if not bundle.has_golden or not path.is_file():
        raise RuntimeStageError(
            f"bundle {bundle.name} has no {GOLDEN_PATH}; re-export it with golden references to run parity"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise RuntimeStageError(
            f"cannot read {GOLDEN_PATH} of bundle {bundle.name}: {exc}; re-export it"
        ) from None
    missing = [k for k in ("noise", "timesteps", "latents", "final") if k not in arrays]
    if missing:
        raise RuntimeStageError(
            f"{GOLDEN_PATH} of bundle {bundle.name} lacks {', '.join(missing)}; "
            "re-record the golden references"
        )
    known = {f.name for f in dataclasses.fields(Golden)} - {"cond", "null_cond", "guidance_scale"}
    g = Golden(**{k: v for k, v in arrays.items() if k in known})
    g.cond = {k.removeprefix(_COND): v for k, v in arrays.items() if k.startswith(_COND)}
    g.null_cond = {k.removeprefix(_NULL): v for k, v in arrays.items() if k.startswith(_NULL)}
    if _GUIDANCE in arrays:
        g.guidance_scale = float(arrays[_GUIDANCE])
    _check_golden(g, f"{GOLDEN_PATH} of bundle {bundle.name}")
    return g
