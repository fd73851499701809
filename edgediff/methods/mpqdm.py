"""`mpqdm`: MPQ-DM = EfficientDM + pre-scaling + OMQ + TRD (docs/methods.md section 1).

Pipeline (docs/methods.md 1.6 step 2): recipe with MPQ-DM's FP islands (1.3: ResNet `conv_shortcut`
1x1 convs and downsampler convs stay FP; time-embedding linears, first and last layer W8A8
static), merged rank-32 LoRA (QALoRA, 1.2(5)), per-step activation quantizers (1.2(6)) and the
SmoothQuant pre-scale δ with α = 0.5 (1.2(2)) on every main layer -> calibration on FP DDIM
trajectories -> OMQ split search per layer (1.2(3)-(4), `omq.py`) -> fine-tuning along FP
trajectories with `MSE + λ·TRD` (1.2(7), `trd.py`). The searched per-channel bit vectors are
written into the returned recipe as one rule per layer, so `save_quantized` fully describes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from torch import Tensor, nn

from edgediff.errors import EdgediffError
from edgediff.methods.common import quant_forward, quantize_and_calibrate
from edgediff.methods.efficientdm import EfficientDMConfig, base_config, finetune
from edgediff.methods.mtrd import MTRDLoss
from edgediff.methods.omq import SEARCH_RANGES, SELECTIONS, SplitChoice, omq_search, searched_layer_quant
from edgediff.methods.registry import Method, QuantizeJob, cli_field, register
from edgediff.methods.trd import TRD_MODES, FeatureTap, TRDLoss, last_decoder_block
from edgediff.quant import (
    BitSetting,
    CalibrationData,
    LoRASpec,
    Recipe,
    ResidualSpec,
    default_recipe,
    quant_layers,
    storage_bits,
)
from edgediff.train.loop import Checkpointing, seed_everything

OMQ_HELP = "OMQ split search (mpqdm default on, mpqdmv2 off)"


@dataclass(frozen=True)
class MPQDMConfig:
    """MPQ-DM switches (defaults = docs/methods.md 1.4, scaled budget in `base`)."""

    base: EfficientDMConfig = field(default_factory=EfficientDMConfig)
    # SmoothQuant pre-scale δ, α = 0.5
    smooth: bool = cli_field(True, "--no-smooth", "no pre-scaling δ", "switch_off")
    # split-size search; off = uniform b bits
    omq: bool = cli_field(True, "--omq", OMQ_HELP, "on_off", no_flag="--no-omq")
    # paper: 0..C/2 step C/10; code: {0, C/10}
    omq_range: str = cli_field(
        "paper", "--omq-range", "split candidates (default paper)", "choice", choices=SEARCH_RANGES
    )
    # kurtosis | random (control) | error
    selection: str = cli_field(
        "kurtosis", "--selection", "salient channel ranking", "choice", choices=SELECTIONS
    )
    omq_samples: int = 64  # calibration inputs scored by the search (spread over all steps)
    # conv_shortcut and downsampler convs stay FP
    fp_islands: bool = cli_field(True, "--no-fp-islands", "quantize the FP islands too", "switch_off")
    trd: bool = cli_field(True, "--no-trd", "no TRD term", "switch_off")
    trd_window: int = 2
    trd_tau: float = 1.0
    trd_weight: float = 100.0
    # docs/methods.md 7.3: target = option (b), window = option (a)
    trd_mode: str = cli_field(
        "target", "--trd-mode", "docs/methods.md 7.3 option b / a", "choice", choices=TRD_MODES
    )
    # True reproduces the released code (no TRD gradient)
    trd_detach: bool = cli_field(False, "--trd-detach", "released code: no TRD gradient", "switch_on")

    def __post_init__(self):
        _check(self.omq_range, SEARCH_RANGES, "OMQ search range")
        _check(self.selection, SELECTIONS, "channel selection")
        _check(self.trd_mode, TRD_MODES, "TRD mode")
        if self.omq_samples < 1:
            raise EdgediffError(f"omq_samples must be >= 1, got {self.omq_samples}")


def _check(value: str, options: tuple[str, ...], what: str) -> None:
    if value not in options:
        raise EdgediffError(f"unknown {what} {value!r}: use one of {', '.join(options)}")


def fp_island_names(model: nn.Module) -> list[str]:
    """ResNet `conv_shortcut` and downsampler convs (MPQ-DM keeps them FP, docs/methods.md 1.3)."""
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and (n.endswith(".conv_shortcut") or ".downsamplers." in n)
    ]


def mpq_recipe(
    bits: BitSetting | str,
    model: nn.Module,
    *,
    lora: LoRASpec | None,
    smooth: bool = True,
    residual: ResidualSpec | None = None,
    fp_islands: bool = True,
    name: str = "mpqdm",
) -> Recipe:
    """FP islands, then `default_recipe` (W8A8 edges) with per-step activations, LoRA, δ, residual."""
    base = default_recipe(bits, model, a_mode="per_step", lora=lora, smooth=smooth, residual=residual)
    islands = [(n, None) for n in fp_island_names(model)] if fp_islands else []
    return Recipe(rules=(*islands, *base.rules), name=f"{name}-{base.label}", bits=base.bits)


def mpqdm_recipe(bits: BitSetting | str, model: nn.Module, cfg: MPQDMConfig) -> Recipe:
    """MPQ-DM's recipe before the search: merged rank-r LoRA (QALoRA), δ, per-step activations."""
    lora = LoRASpec(rank=cfg.base.lora_rank, mode="merged")
    return mpq_recipe(bits, model, lora=lora, smooth=cfg.smooth, fp_islands=cfg.fp_islands)


def searched_recipe(model: nn.Module, recipe: Recipe, choices: dict[str, SplitChoice]) -> Recipe:
    """One exact rule per quantized layer (its final bits/residual), FP rules for the rest of `recipe`."""
    rules: list = []
    for name, layer in quant_layers(model).items():
        rules.append((name, searched_layer_quant(layer, choices.get(name))))
    quantized = {n for n, _ in rules}
    fp = [
        n
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and n not in quantized and recipe.match(n)[0]
    ]
    rules += [(n, None) for n in fp]
    return Recipe(rules=tuple(rules), name=recipe.name, bits=recipe.bits)


def bits_summary(model: nn.Module) -> dict:
    """Mean stored bits of the quantized weights (binary-residual sign bits included), the
    residual channel count, and the whole-model accounting of `quant.storage_bits` (float
    layers and branches at their stored width, all conv/linear weights in the denominator)."""
    report = storage_bits(model)
    residual_channels = sum(
        int(layer.residual.mask.sum()) for layer in quant_layers(model).values() if layer.residual is not None
    )
    return {
        "mean_weight_bits": report.integer_bits_per_weight,
        "residual_channels": residual_channels,
        "bits_per_weight": report.bits_per_weight,
    }


def prepare(
    fp: nn.Module,
    scheduler_config: dict,
    bits: BitSetting | str,
    recipe: Recipe,
    cfg: MPQDMConfig,
    *,
    salient: str = "bits",
    balance: bool = True,
    progress: bool = True,
) -> tuple[nn.Module, Recipe, dict, CalibrationData]:
    """Copy, quantize, calibrate (δ, ranges), OMQ search; returns (model, final recipe, record, data)."""
    base_bits = BitSetting.of(bits).w
    seed_everything(cfg.base.seed)  # the LoRA factors are drawn from the global generator
    model, data = quantize_and_calibrate(
        fp,
        scheduler_config,
        recipe,
        calib_steps=cfg.base.num_steps,
        calib_samples=cfg.base.calib_samples,
        seed=cfg.base.seed,
        table_steps=cfg.base.num_steps,
        progress=progress,
    )
    choices: dict[str, SplitChoice] = {}
    if cfg.omq:
        if not 2 <= base_bits <= 7:
            raise EdgediffError(f"OMQ needs base weight bits 2..7 (b±1 must fit 1..8), got {base_bits}")
        choices = omq_search(
            model,
            data,
            base_bits,
            search_range=cfg.omq_range,
            selection=cfg.selection,
            salient=salient,
            balance=balance,
            samples=cfg.omq_samples,
            seed=cfg.base.seed,
            progress=progress,
        )
    final = searched_recipe(model, recipe, choices)
    record = {
        "split": {n: {"k": c.k, "channels": c.channels, "mse": c.mse} for n, c in choices.items()},
        **bits_summary(model),
    }
    return model, final, record, data


class DistillTerms:
    """The `extra_loss` of `finetune`: TRD and/or MTRD on the last decoder block of both models."""

    def __init__(
        self,
        model: nn.Module,
        fp: nn.Module,
        trd: TRDLoss | None,
        mtrd: MTRDLoss | None,
        detach: bool = False,
    ):
        self.model, self.trd, self.mtrd = model, trd, mtrd
        self.fp_tap = FeatureTap(last_decoder_block(fp), detach=True)
        self.q_tap = FeatureTap(last_decoder_block(model), detach=detach)
        self.sums = {"trd": 0.0, "mtrd": 0.0}
        self.counts = {"trd": 0, "mtrd": 0}

    def _recompute(self, step: int, x: Tensor, t: Tensor) -> Tensor:
        quant_forward(self.model, x, t, step)
        return self.q_tap.value

    def __call__(self, step: int, x: Tensor, t: Tensor) -> Tensor:
        fp_feat, q_feat = self.fp_tap.value, self.q_tap.value
        if fp_feat is None or q_feat is None:
            raise EdgediffError("decoder feature hooks saw no forward pass; run both models before the loss")
        loss = x.new_zeros(())
        if self.trd is not None:
            term = self.trd(step, x, t, fp_feat, q_feat, self._recompute)
            if term is not None:
                loss = loss + term
                self._log("trd", term)
        if self.mtrd is not None:
            term = self.mtrd(fp_feat, q_feat, int(t[0]))
            loss = loss + term
            self._log("mtrd", term)
        return loss

    def _log(self, key: str, value: Tensor) -> None:
        self.sums[key] += float(value.detach())
        self.counts[key] += 1

    def summary(self) -> dict:
        return {f"{k}_mean": self.sums[k] / self.counts[k] for k in self.sums if self.counts[k]}

    def state_dict(self) -> dict:
        """Running sums and the TRD window / MTRD queue (the feature taps are refilled every step)."""
        return {
            "sums": dict(self.sums),
            "counts": dict(self.counts),
            "trd": self.trd.state_dict() if self.trd is not None else None,
            "mtrd": self.mtrd.state_dict() if self.mtrd is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])
        if self.trd is not None:
            self.trd.load_state_dict(state["trd"])
        if self.mtrd is not None:
            self.mtrd.load_state_dict(state["mtrd"])

    def close(self) -> None:
        self.fp_tap.remove()
        self.q_tap.remove()


def run_finetune(
    model: nn.Module,
    fp: nn.Module,
    scheduler_config: dict,
    cfg: MPQDMConfig,
    mtrd: MTRDLoss | None = None,
    groups: list[dict] | None = None,
    on_step: Callable | None = None,
    progress: bool = True,
    description: str = "mpqdm",
    checkpoints: Checkpointing = Checkpointing(),
) -> dict:
    """`efficientdm.finetune` with the TRD (and MTRD) terms hooked in."""
    trd = TRDLoss(cfg.trd_window, cfg.trd_tau, cfg.trd_weight, cfg.trd_mode) if cfg.trd else None
    terms = DistillTerms(model, fp, trd, mtrd, cfg.trd_detach) if (trd or mtrd) else None
    try:
        record = finetune(
            model,
            fp,
            scheduler_config,
            cfg.base,
            extra_loss=terms,
            progress=progress,
            description=description,
            groups=groups,
            on_step=on_step,
            checkpoints=checkpoints,
            fingerprint={"method_config": asdict(cfg)},
        )
    finally:
        if terms is not None:
            terms.close()
    if terms is not None:
        record.update(terms.summary())
    return record


def run_mpqdm(
    fp: nn.Module,
    scheduler_config: dict,
    bits: BitSetting | str,
    recipe: Recipe | None = None,
    cfg: MPQDMConfig | None = None,
    progress: bool = True,
    checkpoints: Checkpointing = Checkpointing(),
) -> tuple[nn.Module, Recipe, dict]:
    """MPQ-DM end to end; returns (model, recipe with the searched bits, record)."""
    cfg = cfg or MPQDMConfig()
    recipe = recipe or mpqdm_recipe(bits, fp, cfg)
    model, final, record, _ = prepare(fp, scheduler_config, bits, recipe, cfg, progress=progress)
    record.update(run_finetune(model, fp, scheduler_config, cfg, progress=progress, checkpoints=checkpoints))
    record["method_config"] = asdict(cfg)
    return model, final, record


def run_job(job: QuantizeJob, options: dict) -> tuple[nn.Module, Recipe, dict]:
    """`edgediff quantize --method mpqdm` with the given switches."""
    cfg = MPQDMConfig(base=base_config(job), **options)
    return run_mpqdm(
        job.fp, job.scheduler_config, job.bits, job.recipe, cfg, job.progress, checkpoints=job.checkpoints()
    )


METHOD = register(
    Method("mpqdm", MPQDMConfig, run_job, help="MPQ-DM: pre-scaling + OMQ + TRD", conditioned_models=False)
)


__all__ = [
    "DistillTerms",
    "MPQDMConfig",
    "bits_summary",
    "fp_island_names",
    "mpq_recipe",
    "mpqdm_recipe",
    "prepare",
    "run_finetune",
    "run_mpqdm",
    "searched_recipe",
]
