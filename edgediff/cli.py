"""Train-stage commands of the `edgediff` CLI: reference, eval, quantize.

The console script `edgediff` is assembled in `edgediff_export.cli` (the full toolchain), which
may import every stage; this module registers only what the train stage owns, so that
`edgediff` itself never imports the export or runtime packages (docs/design.md section 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from edgediff.errors import EdgediffError

log = logging.getLogger("edgediff")


def positive_int(kind: str):
    """argparse type: an integer >= 1, with a one-line error naming the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{kind} must be an integer, got {text!r}") from exc
        if value < 1:
            raise argparse.ArgumentTypeError(f"{kind} must be at least 1, got {value}")
        return value

    return parse


def _cmd_reference_train(args: argparse.Namespace) -> int:
    from edgediff.reference.trainer import ReferenceTrainConfig, train_reference

    out = train_reference(Path(args.out), ReferenceTrainConfig(steps=args.steps, seed=args.seed))
    from edgediff.reference.evaluate import evaluate

    report = evaluate(out, samples=100, steps=20, seed=0, grid_out=Path(args.out) / "samples.png")
    print(f"saved {out} (FD at 100 samples, 20 steps: {report['fd']:.1f}); grid: {out}/samples.png")
    return 0


def _cmd_reference_classifier(args: argparse.Namespace) -> int:
    from edgediff.reference.classifier import save_classifier, train_classifier

    model, acc = train_classifier(seed=args.seed)
    save_classifier(model, Path(args.out), {"val_accuracy": acc, "epochs": 30, "seed": args.seed})
    print(f"saved {args.out} (validation accuracy {acc:.3f})")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from edgediff.reference.evaluate import evaluate

    json_out = Path(args.json) if args.json else None
    grid = Path(args.grid) if args.grid else (json_out.with_suffix(".png") if json_out else None)
    result = evaluate(args.model, args.samples, args.steps, args.seed, json_out, grid)
    print(json.dumps(result, indent=2))
    return 0


_MPQ_FLAGS = {  # argparse dest -> (config field, value transform)
    "smooth": ("smooth", None),
    "omq": ("omq", lambda v: v == "on"),
    "omq_range": ("omq_range", None),
    "selection": ("selection", None),
    "fp_islands": ("fp_islands", None),
    "trd": ("trd", None),
    "trd_detach": ("trd_detach", None),
    "trd_mode": ("trd_mode", None),
    "residual": ("residual", lambda v: v == "on"),
    "residual_balance": ("residual_balance", None),
    "lora_init": ("lora_init", None),
    "lora_mode": ("lora_mode", None),
    "lora_rank": ("additive_rank", None),
    "oolri_iters": ("oolri_iters", None),
    "mtrd": ("mtrd", None),
    "mtrd_time": ("mtrd_time", None),
}


def quantize_options(args: argparse.Namespace) -> dict:
    """The mpqdm/mpqdmv2 switches given on the command line, as config field -> value."""
    out = {}
    for dest, (name, fn) in _MPQ_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            out[name] = fn(value) if fn else value
    return out


def _cmd_quantize(args: argparse.Namespace) -> int:
    from edgediff.methods import quantize_model

    meta = quantize_model(
        args.model,
        args.method,
        args.bits,
        Path(args.out),
        Path(args.recipe) if args.recipe else None,
        seed=args.seed,
        num_steps=args.steps,
        updates=args.updates,
        batch=args.batch,
        options=quantize_options(args),
        symmetric_weights=args.symmetric_weights,
        device=args.device,
        resume=args.resume,
    )
    print(f"saved {args.out} ({meta['method']} {meta['bits']}, {meta['seconds']} s)")
    return 0


def add_train_commands(sub: argparse._SubParsersAction) -> None:
    """Register the train-stage subcommands on the top-level parser."""
    ref = sub.add_parser("reference", help="the bundled reference benchmark (digits16)")
    ref_sub = ref.add_subparsers(dest="ref_cmd", required=True)
    p = ref_sub.add_parser("train", help="train the reference diffusion model from scratch (seeded)")
    p.add_argument("--out", required=True, help="output folder (a diffusers DDPMPipeline folder)")
    p.add_argument(
        "--steps", type=positive_int("--steps"), default=2400, help="optimiser steps (default 2400)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_reference_train)
    p = ref_sub.add_parser("train-classifier", help="train the metric network (TinyCNN, about a minute)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_reference_classifier)

    p = sub.add_parser("eval", help="sample a model and score it (FD, confidence, paired fidelity)")
    p.add_argument("--model", required=True, help="'reference', a diffusers folder or a quantized folder")
    p.add_argument("--samples", type=positive_int("--samples"), default=1000)
    p.add_argument("--steps", type=positive_int("--steps"), default=50, help="DDIM steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the report here")
    p.add_argument("--grid", help="write a sample grid PNG here (default: next to --json)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "quantize", help="quantize a model (ptq | efficientdm | mpqdm | mpqdmv2) and save a quantized folder"
    )
    p.add_argument("--model", required=True, help="'reference' or a local diffusers folder")
    p.add_argument("--method", required=True, choices=["ptq", "efficientdm", "mpqdm", "mpqdmv2"])
    p.add_argument("--bits", required=True, help="W<1-8>A<1-8|16>, e.g. W8A8, W4A8, W2A4")
    p.add_argument("--recipe", help="a recipe JSON file (overrides the default recipe for --bits)")
    p.add_argument(
        "--symmetric-weights",
        action="store_true",
        help="ptq/efficientdm: mid-code zero point, so the ONNX weights are int8 (faster on ORT CPU)",
    )
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument(
        "--steps",
        type=positive_int("--steps"),
        default=50,
        help="sampler steps the model is calibrated / fine-tuned for (per-step tables)",
    )
    p.add_argument(
        "--updates",
        type=positive_int("--updates"),
        default=None,
        help="fine-tuning updates for efficientdm, mpqdm, mpqdmv2 (default 1000)",
    )
    p.add_argument("--batch", type=positive_int("--batch"), default=None, help="fine-tuning batch (32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted fine-tuning from OUT.ckpt/"
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available), cpu or cuda: where calibration and fine-tuning run",
    )
    _add_mpq_switches(p)
    p.set_defaults(func=_cmd_quantize)

    from edgediff.distill.cli import add_distill_command

    add_distill_command(sub)


def _add_mpq_switches(p: argparse.ArgumentParser) -> None:
    """Ablation switches of mpqdm / mpqdmv2 (docs/mpq.md); unset = the method's default."""
    g = p.add_argument_group("mpqdm / mpqdmv2 switches (default: the method's own setting)")
    g.add_argument("--no-smooth", dest="smooth", action="store_const", const=False, help="no pre-scaling δ")
    g.add_argument("--omq", choices=["on", "off"], help="OMQ split search (mpqdm default on, mpqdmv2 off)")
    g.add_argument("--no-omq", dest="omq", action="store_const", const="off", help="same as --omq off")
    g.add_argument("--omq-range", choices=["paper", "code", "fixed"], help="split candidates (default paper)")
    g.add_argument("--selection", choices=["kurtosis", "random", "error"], help="salient channel ranking")
    g.add_argument("--no-fp-islands", dest="fp_islands", action="store_const", const=False)
    g.add_argument("--no-trd", dest="trd", action="store_const", const=False, help="no TRD term")
    g.add_argument("--trd-detach", action="store_const", const=True, help="released code: no TRD gradient")
    g.add_argument("--trd-mode", choices=["target", "window"], help="docs/methods.md 7.3 option b / a")
    g.add_argument("--residual", choices=["on", "off"], help="mpqdmv2 FZ-RMQ binary residual")
    g.add_argument("--residual-balance", action="store_const", const=True, help="mpqdmv2: k channels at b-1")
    g.add_argument("--lora-init", choices=["zero", "svd"], help="mpqdmv2 OOLRI (svd) or zero init")
    g.add_argument("--lora-mode", choices=["additive", "merged"], help="mpqdmv2 LoRA placement")
    g.add_argument("--lora-rank", type=positive_int("--lora-rank"), help="mpqdmv2 additive LoRA rank")
    g.add_argument("--oolri-iters", type=positive_int("--oolri-iters"), help="mpqdmv2 SVD alternations")
    g.add_argument("--no-mtrd", dest="mtrd", action="store_const", const=False, help="mpqdmv2: no MTRD")
    g.add_argument("--mtrd-time", choices=["none", "window", "weight"], help="mpqdmv2 time-aware queue")


def run_command(args: argparse.Namespace, handled: tuple[type[BaseException], ...] = ()) -> int:
    """Run a parsed command; user errors print one line (no traceback) and return their exit code."""
    try:
        return int(args.func(args) or 0)
    except (EdgediffError, *handled) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
