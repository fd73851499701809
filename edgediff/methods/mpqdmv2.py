"""`mpqdmv2`: MPQ-DMv2 = MPQ-DM + FZ-RMQ + OOLRI + MTRD (docs/methods.md section 2, RECONSTRUCTED).

Everything marked INFERRED in docs/methods.md 2.1 is a switch here:
* FZ-RMQ (`residual=True`): the salient (top-k kurtosis of `W̃`) channels of each main layer
  keep `b` bits plus a learnable 1-bit residual `α_c·sign(R_c)` (`BinaryResidual`, α init
  `mean|R_c|`, α trained with its own learning rate). Default: a fixed `residual_fraction`
  = 10 % of the channels (the code's C/10), no bit taken elsewhere, so the stored bits rise
  by ~0.1 per weight (reported). `omq=True, residual_balance=True`: `k` searched per layer
  on output MSE like OMQ with the k least salient channels at `b−1` bits (budget-neutral).
  `residual=False, omq=True` is MPQ-DM's OMQ (`b+1` bits). `selection`: kurtosis | error |
  random (random needs the search).
* OOLRI (`lora_init="svd"`, `lora_mode="additive"`): additive LoRA of rank `additive_rank`
  initialised from the truncated SVD of `W̃ − Q̂(W̃)` (`oolri.py`), `oolri_iters` LoftQ-style
  alternations. `lora_init="zero"` keeps B = 0 (merged or additive placement).
* MTRD (`mtrd=True`): memory-queue relational KL (`mtrd.py`), time-aware option `mtrd_time`.
* TRD from MPQ-DM stays on (`trd`), so the MTRD row measures the queue term on top of it.

The additive LoRA is an FP branch at deployment (`QuantLayerSpec.lora`); the default rank 4 is
MPQ-DM's rank 32 scaled to the reference model's 32-128 channel layers (rank 32 would be
full rank there and would carry the whole weight in floating point).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from torch import nn

from edgediff.errors import EdgediffError
from edgediff.methods.efficientdm import base_config, param_groups
from edgediff.methods.mpqdm import OMQ_HELP, MPQDMConfig, _check, mpq_recipe, prepare, run_finetune
from edgediff.methods.mtrd import TIME_MODES, MTRDLoss
from edgediff.methods.oolri import oolri_init
from edgediff.methods.registry import Method, QuantizeJob, cli_field, register
from edgediff.methods.trd import last_decoder_block
from edgediff.quant import BitSetting, LoRASpec, Recipe, ResidualSpec, quant_layers
from edgediff.train.loop import Checkpointing

LORA_INITS = ("svd", "zero")
LORA_MODES = ("additive", "merged")


@dataclass(frozen=True)
class MPQDMv2Config(MPQDMConfig):
    """MPQ-DMv2 switches on top of `MPQDMConfig` (defaults: docs/methods.md 2.1, scaled to the model)."""

    # v2 default: fixed salient fraction; True searches k (pair with residual_balance)
    omq: bool = cli_field(False, "--omq", OMQ_HELP, "on_off", no_flag="--no-omq")
    # FZ-RMQ binary residual on the salient channels
    residual: bool = cli_field(True, "--residual", "mpqdmv2 FZ-RMQ binary residual", "on_off")
    # b−1 bits on the k least salient channels (searched split only)
    residual_balance: bool = cli_field(False, "--residual-balance", "mpqdmv2: k channels at b-1", "switch_on")
    residual_fraction: float = 0.1  # salient fraction when the split search is off (omq=False)
    alpha_lr: float = 1e-4
    lora_init: str = cli_field(
        "svd", "--lora-init", "mpqdmv2 OOLRI (svd) or zero init", "choice", choices=LORA_INITS
    )
    lora_mode: str = cli_field(
        "additive", "--lora-mode", "mpqdmv2 LoRA placement", "choice", choices=LORA_MODES
    )
    additive_rank: int = cli_field(4, "--lora-rank", "mpqdmv2 additive LoRA rank")
    oolri_iters: int = cli_field(1, "--oolri-iters", "mpqdmv2 SVD alternations")
    mtrd: bool = cli_field(True, "--no-mtrd", "mpqdmv2: no MTRD", "switch_off")
    mtrd_queue: int = 6400
    mtrd_enqueue: int = 128
    mtrd_anchors: int = 1024
    mtrd_query: int = 1024
    mtrd_tau: float = 0.1
    mtrd_kd_temperature: float = 1.0
    mtrd_weight: float = 0.1
    mtrd_time: str = cli_field(
        "weight", "--mtrd-time", "mpqdmv2 time-aware queue", "choice", choices=TIME_MODES
    )
    mtrd_time_window: int = 100
    mtrd_time_scale: float = 100.0

    def __post_init__(self):
        super().__post_init__()
        _check(self.lora_init, LORA_INITS, "LoRA init")
        _check(self.lora_mode, LORA_MODES, "LoRA mode")
        _check(self.mtrd_time, TIME_MODES, "MTRD time mode")
        if self.lora_init == "svd" and self.lora_mode != "additive":
            raise EdgediffError(
                "OOLRI (lora_init='svd') needs lora_mode='additive': the SVD of the quantization error "
                "has no meaning for a LoRA merged before quantization"
            )
        if self.residual and not self.omq and self.selection == "random":
            raise EdgediffError("random residual channels need the split search (omq=True)")
        if self.additive_rank < 1 or self.oolri_iters < 1:
            raise EdgediffError("additive_rank and oolri_iters must be >= 1")

    @property
    def lora_spec(self) -> LoRASpec:
        rank = self.additive_rank if self.lora_mode == "additive" else self.base.lora_rank
        return LoRASpec(rank=rank, mode=self.lora_mode)


def mpqdmv2_recipe(bits: BitSetting | str, model: nn.Module, cfg: MPQDMv2Config) -> Recipe:
    """MPQ-DM's recipe with the binary residual and the configured LoRA on the main layers."""
    selection = "error" if cfg.selection == "error" else "kurtosis"
    residual = ResidualSpec(fraction=cfg.residual_fraction, selection=selection) if cfg.residual else None
    return mpq_recipe(
        bits,
        model,
        lora=cfg.lora_spec,
        smooth=cfg.smooth,
        residual=residual,
        fp_islands=cfg.fp_islands,
        name="mpqdmv2",
    )


def v2_param_groups(model: nn.Module, cfg: MPQDMv2Config) -> list[dict]:
    """efficientdm's groups (LoRA, weight steps, activation steps) plus the residual α."""
    groups = param_groups(model, cfg.base)
    alphas = [p for n, p in model.named_parameters() if n.endswith("residual.alpha")]
    for p in alphas:
        p.requires_grad_(True)
    if alphas:
        groups.append({"params": alphas, "lr": cfg.alpha_lr, "name": "alpha"})
    return groups


def apply_oolri(model: nn.Module, iters: int = 1) -> dict:
    """OOLRI on every layer with an additive LoRA; returns the summed weight error before/after."""
    before = after = 0.0
    for layer in quant_layers(model).values():
        if layer.lora is not None and layer.lora.mode == "additive":
            r = oolri_init(layer, iters)
            before += r["error_before"]
            after += r["error_after"]
    return {"weight_error_before": before, "weight_error_after": after}


def make_mtrd(fp: nn.Module, cfg: MPQDMv2Config) -> MTRDLoss:
    """The MTRD term sized to the last decoder block's channel count."""
    block = last_decoder_block(fp)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise EdgediffError("cannot infer the decoder feature width for MTRD; the last up block has no conv")
    channels = next(m.out_channels for m in reversed(convs) if m.out_channels)
    return MTRDLoss(
        channels,
        queue_size=cfg.mtrd_queue,
        enqueue=cfg.mtrd_enqueue,
        anchors=cfg.mtrd_anchors,
        query=cfg.mtrd_query,
        tau=cfg.mtrd_tau,
        kd_temperature=cfg.mtrd_kd_temperature,
        weight=cfg.mtrd_weight,
        time_mode=cfg.mtrd_time,
        time_window=cfg.mtrd_time_window,
        time_scale=cfg.mtrd_time_scale,
        seed=cfg.base.seed,
        device=next(fp.parameters()).device,
    )


def run_mpqdmv2(
    fp: nn.Module,
    scheduler_config: dict,
    bits: BitSetting | str,
    recipe: Recipe | None = None,
    cfg: MPQDMv2Config | None = None,
    progress: bool = True,
    on_step: Callable | None = None,
    checkpoints: Checkpointing = Checkpointing(),
) -> tuple[nn.Module, Recipe, dict]:
    """MPQ-DMv2 end to end; returns (model, recipe with the searched bits/residuals, record)."""
    cfg = cfg or MPQDMv2Config()
    recipe = recipe or mpqdmv2_recipe(bits, fp, cfg)
    salient = "residual" if cfg.residual else "bits"
    model, final, record, _ = prepare(
        fp,
        scheduler_config,
        bits,
        recipe,
        cfg,
        salient=salient,
        balance=cfg.residual_balance,
        progress=progress,
    )
    if cfg.lora_init == "svd":
        record["oolri"] = apply_oolri(model, cfg.oolri_iters)
    mtrd = make_mtrd(fp, cfg) if cfg.mtrd else None
    groups = v2_param_groups(model, cfg)
    record.update(
        run_finetune(
            model,
            fp,
            scheduler_config,
            cfg,
            mtrd=mtrd,
            groups=groups,
            on_step=on_step,
            progress=progress,
            description="mpqdmv2",
            checkpoints=checkpoints,
        )
    )
    record["method_config"] = asdict(cfg)
    return model, final, record


def run_job(job: QuantizeJob, options: dict) -> tuple[nn.Module, Recipe, dict]:
    """`edgediff quantize --method mpqdmv2` with the given switches."""
    cfg = MPQDMv2Config(base=base_config(job), **options)
    return run_mpqdmv2(
        job.fp, job.scheduler_config, job.bits, job.recipe, cfg, job.progress, checkpoints=job.checkpoints()
    )


METHOD = register(
    Method(
        "mpqdmv2",
        MPQDMv2Config,
        run_job,
        help="MPQ-DMv2: binary residual + OOLRI + MTRD",
        conditioned_models=False,
    )
)
