"""`qvdit`: Q-VDiT for video diffusion transformers (docs/methods.md section 3).

Pipeline: recipe (transformer-block linears quantized, weights per output channel with the
clip-ratio grid, activations dynamic per token; embedders and the final layer FP) with the
EfficientDM rank-32 LoRA merged before weight quantization and the token-aware quantization
estimator (TQE) beside the integer GEMM (`edgediff.quant.branches.TQEBranch`) -> weight-range
calibration on FP DDIM trajectories -> fine-tuning along FP trajectories (`efficientdm.finetune`)
with `MSE + γ·L_temporal`, the temporal maintained distillation (TMD) on the model output.
Every part is a switch of `QVDiTConfig` for ablations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgediff.bitspec import BitSetting
from edgediff.errors import EdgediffError
from edgediff.methods.common import quantize_and_calibrate
from edgediff.methods.efficientdm import EfficientDMConfig, base_config, finetune
from edgediff.methods.registry import Method, QuantizeJob, cli_field, register
from edgediff.methods.trd import FeatureTap
from edgediff.models.conditioning import Conditioning
from edgediff.quant import LayerQuant, LoRASpec, Recipe
from edgediff.quant.branches import frame_blocks
from edgediff.quant.recipe import TQESpec

VIDEO_CLASSES = ("LatteTransformer3DModel",)
SPATIAL_BLOCKS = "transformer_blocks"
TEMPORAL_BLOCKS = "temporal_transformer_blocks"
_EPS = 1e-8


@dataclass(frozen=True)
class QVDiTConfig:
    """Q-VDiT switches (docs/methods.md 3.4); `base` holds the shared fine-tuning budget.

    `tqe`: the TQE branch on every quantized linear; `tqe_m`: its per-frame factor `M` (off:
    `M = 1`); `tmd`: the temporal KL term on the model output (off: plain MSE); `lora`: the
    EfficientDM rank-`base.lora_rank` LoRA merged before weight quantization; `vidit_mlp8`:
    ViDiT-Q's mixed setting (MLP linears at W8A8 when the weights have <= 4 bits);
    `tmd_released_split`: the released code's frame split (a bare reshape of `[B, C, F, H, W]`
    to `[B, F, -1]`, which mixes channels and frames) instead of the paper's permute;
    `tmd_blocks`: also the TMD term on every temporal block's output (`BlockTMD`).
    """

    base: EfficientDMConfig = field(default_factory=EfficientDMConfig)
    tqe: bool = cli_field(True, "--no-tqe", "no TQE branch", "switch_off")
    tqe_m: bool = cli_field(True, "--no-tqe-m", "TQE with M = 1", "switch_off")
    tmd: bool = cli_field(True, "--no-tmd", "plain MSE, no TMD term", "switch_off")
    lora: bool = cli_field(True, "--no-lora", "no merged rank-32 LoRA", "switch_off")
    vidit_mlp8: bool = cli_field(
        False, "--vidit-mlp8", "ViDiT-Q: MLPs at W8A8 when weights <= 4 bits", "switch_on"
    )
    tqe_rank: int = 1
    tqe_lr: float = 1e-3
    tmd_weight: float = 100.0
    tmd_released_split: bool = cli_field(
        False,
        "--tmd-released-split",
        "TMD frames by the released code's bare reshape (mixes channels and frames)",
        "switch_on",
    )
    tmd_blocks: bool = cli_field(
        False, "--tmd-blocks", "TMD also on every temporal block's output", "switch_on"
    )
    schedule: str = "cosine"

    def __post_init__(self):
        if self.tqe_rank < 1:
            raise EdgediffError(f"tqe_rank must be >= 1, got {self.tqe_rank}")
        if self.tmd_weight < 0:
            raise EdgediffError(f"tmd_weight must be >= 0, got {self.tmd_weight}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise EdgediffError(f"unknown schedule {self.schedule!r}: use cosine, linear or constant")


# ---------------------------------------------------------------- TMD (paper Eq. 10-19)


def frame_features(s: Tensor, released_split: bool = False) -> Tensor:
    """`[B, C, F, H, W]` -> `[B, F, C·H·W]`: frame i's block `S_i` (permute, then flatten).

    `released_split=True` reproduces the released code's bare reshape to `[B, F, -1]`
    (docs/methods.md 3.2), whose "frames" are channel/frame slices.
    """
    if s.dim() != 5:
        raise EdgediffError(f"TMD needs a video output [B, C, F, H, W], got shape {tuple(s.shape)}")
    b, f = s.shape[0], s.shape[2]
    if released_split:
        return s.reshape(b, f, -1)
    return s.permute(0, 2, 1, 3, 4).reshape(b, f, -1)


def frame_relation(v: Tensor) -> Tensor:
    """`log D` with `D_i = softmax_j(T_ij)`, `T_ij = cos(S_i, S_j)`, for frame blocks `v` `[B, F, K]`."""
    v = v.float()
    v = v / v.norm(dim=-1, keepdim=True).clamp(min=_EPS)
    return torch.log_softmax(v @ v.transpose(1, 2), dim=-1)


def relation_kl(v_fp: Tensor, v_q: Tensor) -> Tensor:
    """`Σ_i KL(D_i^FP ‖ D_i^Q)` (teacher first) for frame blocks `[B, F, K]`, summed over frames,
    batch mean; the FP side carries no gradient."""
    log_p = frame_relation(v_fp.detach())
    log_q = frame_relation(v_q)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # (B, F)
    return kl.sum(dim=-1).mean()


def temporal_kl(s_fp: Tensor, s_q: Tensor, released_split: bool = False) -> Tensor:
    """`L_temporal` (paper Eq. 10-19) between video outputs `[B, C, F, H, W]`."""
    return relation_kl(frame_features(s_fp, released_split), frame_features(s_q, released_split))


@dataclass(frozen=True)
class TMDLoss:
    """`L = mean((S^FP − S^Q)²) + γ·L_temporal` on the model output (docs/methods.md 3.2)."""

    weight: float = 100.0
    released_split: bool = False

    def __call__(self, s_q: Tensor, s_fp: Tensor) -> Tensor:
        mse = F.mse_loss(s_q, s_fp)
        if not self.weight:
            return mse
        return mse + self.weight * temporal_kl(s_fp, s_q, self.released_split).to(mse.dtype)


class BlockTMD:
    """Optional TMD on block outputs: the `extra_loss` of `finetune`, `γ·Σ_blocks L_temporal` over
    the outputs `(B·N, F, C)` of every temporal transformer block, FP and quantized model seeing
    the same step (forward hooks; the FP forward of the trajectory stream runs first)."""

    def __init__(self, model: nn.Module, fp: nn.Module, weight: float = 100.0):
        self.frames, self.tokens = video_geometry(fp)
        self.weight = weight
        names = [f"{TEMPORAL_BLOCKS}.{i}" for i in range(len(fp.get_submodule(TEMPORAL_BLOCKS)))]
        self.fp_taps = [FeatureTap(fp.get_submodule(n), detach=True) for n in names]
        self.q_taps = [FeatureTap(model.get_submodule(n)) for n in names]
        self.total, self.count = 0.0, 0

    def _blocks(self, h: Tensor) -> Tensor:
        return frame_blocks(h, self.frames, "temporal", self.tokens)

    def __call__(self, step: int, x: Tensor, t: Tensor) -> Tensor:
        if any(tap.value is None for tap in (*self.fp_taps, *self.q_taps)):
            raise EdgediffError("temporal block hooks saw no forward pass; run both models before the loss")
        loss = sum(
            relation_kl(self._blocks(f.value), self._blocks(q.value))
            for f, q in zip(self.fp_taps, self.q_taps)
        )
        self.total += float(loss.detach())
        self.count += 1
        return self.weight * loss

    def close(self) -> None:
        for tap in (*self.fp_taps, *self.q_taps):
            tap.remove()


# ---------------------------------------------------------------- recipe


def video_geometry(model: nn.Module) -> tuple[int, int]:
    """`(frames, tokens per frame)` of a Latte model from its config (video_length, patches)."""
    name = type(model).__name__
    if name not in VIDEO_CLASSES:
        raise EdgediffError(
            f"qvdit quantizes video transformers ({', '.join(VIDEO_CLASSES)}); got {name}: "
            "use ptq or efficientdm for it"
        )
    cfg = dict(model.config)
    size = cfg["sample_size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    p = int(cfg["patch_size"])
    frames = int(cfg.get("video_length") or cfg.get("num_frames") or 0)
    if frames < 1:
        raise EdgediffError(f"{name} config gives no frame count (video_length); re-save the model")
    return frames, (int(h) // p) * (int(w) // p)


def qvdit_recipe(bits: BitSetting | str, model: nn.Module, cfg: QVDiTConfig = QVDiTConfig()) -> Recipe:
    """Transformer-block linears at `bits` (clip-grid weights, per-token dynamic activations,
    merged LoRA, TQE with the block's frame layout); everything else FP (docs/methods.md 3.3).
    With `vidit_mlp8` and weights <= 4 bits the MLP linears are W8A8 (ViDiT-Q's convention)."""
    frames, tokens = video_geometry(model)
    setting = BitSetting.of(bits)
    w_bits, a_bits = setting.w, setting.a
    lora = LoRASpec(rank=cfg.base.lora_rank, mode="merged") if cfg.lora else None
    main = LayerQuant(
        w_bits=w_bits, a_bits=a_bits, a_mode="dynamic_per_token", w_range="clip_grid", lora=lora
    )
    if a_bits is None:
        main = replace(main, a_mode="static")

    def tqe(layout: str) -> TQESpec | None:
        if not cfg.tqe:
            return None
        return TQESpec(
            frames=frames,
            layout=layout,
            tokens=tokens if layout == "temporal" else None,
            rank=cfg.tqe_rank,
            m=cfg.tqe_m,
        )

    modules = dict(model.named_modules())
    rules: list[tuple[str, LayerQuant | None]] = []
    for block, layout in ((SPATIAL_BLOCKS, "spatial"), (TEMPORAL_BLOCKS, "temporal")):
        if block not in modules:
            continue
        q = replace(main, tqe=tqe(layout))
        if cfg.vidit_mlp8 and w_bits <= 4:
            rules.append((f"{block}.*.ff", replace(q, w_bits=8, a_bits=8, a_mode="dynamic_per_token")))
        rules.append((block, q))
    rules.append(("*", None))
    suffix = "-vidit" if cfg.vidit_mlp8 else ""
    return Recipe(rules=tuple(rules), name=f"qvdit-{setting.label}{suffix}", bits=setting)


# ---------------------------------------------------------------- fine-tuning


def param_groups(model: nn.Module, cfg: QVDiTConfig) -> list[dict]:
    """LoRA factors (`base.lora_lr`), TQE α/β (`tqe_lr`), weight steps (`base.weight_scale_lr`)."""
    groups: dict[str, list[nn.Parameter]] = {"lora": [], "tqe": [], "w_scale": []}
    for name, p in model.named_parameters():
        if ".lora." in name:
            groups["lora"].append(p)
        elif ".tqe." in name:
            groups["tqe"].append(p)
        elif name.endswith("weight_quant.scale"):
            groups["w_scale"].append(p)
        else:
            p.requires_grad_(False)
            continue
        p.requires_grad_(True)
    lrs = {"lora": cfg.base.lora_lr, "tqe": cfg.tqe_lr, "w_scale": cfg.base.weight_scale_lr}
    return [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps]


def prepare(
    fp: nn.Module,
    scheduler_config: dict,
    bits: BitSetting | str,
    recipe: Recipe,
    cfg: QVDiTConfig,
    progress: bool = True,
    conditioning: Conditioning | None = None,
    guidance_scale: float | None = None,
) -> nn.Module:
    """Copy, quantize with `recipe`, initialise the weight ranges on FP-trajectory inputs."""
    model, _ = quantize_and_calibrate(
        fp,
        scheduler_config,
        recipe,
        calib_steps=cfg.base.num_steps,
        calib_samples=cfg.base.calib_samples,
        seed=cfg.base.seed,
        table_steps=cfg.base.num_steps,
        progress=progress,
        conditioning=conditioning,
        guidance_scale=guidance_scale,
    )
    return model


def run_qvdit(
    fp: nn.Module,
    scheduler_config: dict,
    bits: BitSetting | str,
    recipe: Recipe | None = None,
    cfg: QVDiTConfig | None = None,
    progress: bool = True,
    conditioning: Conditioning | None = None,
    guidance_scale: float | None = None,
) -> tuple[nn.Module, Recipe, dict]:
    """Q-VDiT end to end; returns (model, recipe, training record)."""
    cfg = cfg or QVDiTConfig()
    video_geometry(fp)
    recipe = recipe or qvdit_recipe(bits, fp, cfg)
    model = prepare(fp, scheduler_config, bits, recipe, cfg, progress, conditioning, guidance_scale)
    loss = TMDLoss(cfg.tmd_weight, cfg.tmd_released_split) if cfg.tmd else None
    blocks = BlockTMD(model, fp, cfg.tmd_weight) if cfg.tmd_blocks else None
    try:
        record = finetune(
            model,
            fp,
            scheduler_config,
            cfg.base,
            extra_loss=blocks,
            progress=progress,
            description="qvdit",
            groups=param_groups(model, cfg),
            conditioning=conditioning,
            guidance_scale=guidance_scale,
            task_loss=loss,
            schedule=cfg.schedule,
        )
    finally:
        if blocks is not None:
            blocks.close()
    if blocks is not None and blocks.count:
        record["tmd_blocks_mean"] = blocks.total / blocks.count
    record["method_config"] = asdict(cfg)
    return model, recipe, record


__all__ = [
    "BlockTMD",
    "QVDiTConfig",
    "TMDLoss",
    "frame_features",
    "frame_relation",
    "param_groups",
    "prepare",
    "qvdit_recipe",
    "relation_kl",
    "run_qvdit",
    "temporal_kl",
    "video_geometry",
]


def run_job(job: QuantizeJob, options: dict) -> tuple[nn.Module, Recipe, dict]:
    """`edgediff quantize --method qvdit` with the given switches."""
    cfg = QVDiTConfig(base=base_config(job), **options)
    return run_qvdit(
        job.fp,
        job.scheduler_config,
        job.bits,
        job.recipe,
        cfg,
        job.progress,
        conditioning=job.conditioning,
        guidance_scale=job.guidance_scale,
    )


METHOD = register(
    Method("qvdit", QVDiTConfig, run_job, help="Q-VDiT: TQE branch + temporal maintained distillation")
)
