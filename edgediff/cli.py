"""Train-stage commands of the `edgediff` CLI: reference, eval, quantize.

The console script `edgediff` is assembled in `edgediff_export.cli` (the full toolchain), which
may import every stage; this module registers only what the train stage owns, so that
`edgediff` itself never imports the export or runtime packages (docs/design.md section 1).
"""

from __future__ import annotations

import argparse
import logging
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


def add_conditioning_args(p: argparse.ArgumentParser, what: str) -> None:
    """`--labels`, `--cond`, `--guidance` (edgediff.models.conditioning)."""
    g = p.add_argument_group(f"conditioning ({what})")
    g.add_argument("--labels", help="labels per sample, comma-separated ('7,2'; '-' = empty slot)")
    g.add_argument("--cond", help="safetensors file of condition tensors (null.<name>: for guidance)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale w (1 = none)")


def conditioning_request(args: argparse.Namespace):
    from edgediff.models.conditioning import ConditioningRequest

    cond = Path(args.cond) if args.cond else None
    return ConditioningRequest(labels=args.labels, cond_file=cond, guidance=args.guidance)


def bits_arg(text: str):
    """argparse type for `--bits`: a `BitSetting`, checked here (torch-free), before any stage is
    imported."""
    from edgediff.bitspec import BitSetting

    try:
        return BitSetting.parse(text)
    except EdgediffError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def human_size(path: Path) -> str:
    """Size of a file or a folder (all files below it) as e.g. `1.2 MB`."""
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    n = sum(f.stat().st_size for f in files)
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _cmd_reference_train(args: argparse.Namespace) -> int:
    if args.arch == "canvas32":
        from edgediff.reference.canvas32.cli import train_command

        return train_command(args)
    from edgediff.utils.atomic import check_writable

    check_writable(Path(args.out))
    from edgediff.reference.trainer import ReferenceTrainConfig, train_reference

    out = train_reference(Path(args.out), ReferenceTrainConfig(steps=args.steps or 2400, seed=args.seed))
    from edgediff.reference.evaluate import evaluate

    report = evaluate(out, samples=100, steps=20, seed=0, grid_out=Path(args.out) / "samples.png")
    print(f"saved {out} (FD at 100 samples, 20 steps: {report['fd']:.1f}); grid: {out}/samples.png")
    return 0


def _cmd_reference_classifier(args: argparse.Namespace) -> int:
    if args.arch == "canvas32":
        from edgediff.reference.canvas32.cli import classifier_command

        return classifier_command(args)
    from edgediff.utils.atomic import check_writable

    check_writable(Path(args.out))
    from edgediff.reference.classifier import save_classifier, train_classifier

    model, acc = train_classifier(seed=args.seed)
    save_classifier(model, Path(args.out), {"val_accuracy": acc, "epochs": 30, "seed": args.seed})
    print(f"saved {args.out} (validation accuracy {acc:.3f})")
    return 0


def _eval_summary(result: dict) -> list[str]:
    """The eval report as a few readable lines (the JSON has every field)."""
    lines = [
        f"model        {result['model']} ({'quantized' if result['quantized'] else 'floating point'})",
        f"sampling     {result.get('samples', '?')} samples, {result['steps']} DDIM steps, seed "
        f"{result['seed']}, {result['sample_seconds']} s",
        f"FD           {result['fd']:.2f} (lower is better)",
    ]
    if "confidence" in result:
        lines.append(f"confidence   {result['confidence']:.3f} (mean classifier confidence)")
    if "class_entropy" in result:
        lines.append(f"class entropy {result['class_entropy']:.3f} (log 10 = 2.303 is uniform)")
    if result.get("paired_psnr") is not None:
        lines.append(
            f"vs FP model  paired PSNR {result['paired_psnr']:.1f} dB, class agreement "
            f"{result.get('label_agree', float('nan')):.3f} (same noise)"
        )
    return lines


def _cmd_eval(args: argparse.Namespace) -> int:
    from edgediff.reference.canvas32.evaluate import is_canvas32

    if is_canvas32(args.model):
        from edgediff.reference.canvas32.cli import eval_command

        return eval_command(args)
    from edgediff.utils.atomic import check_writable

    json_out = Path(args.json) if args.json else None
    grid = Path(args.grid) if args.grid else (json_out.with_suffix(".png") if json_out else None)
    if json_out is not None:
        check_writable(json_out, "--json")
    if grid is not None:
        check_writable(grid, "--grid")
    from edgediff.reference.evaluate import evaluate

    request = conditioning_request(args)
    result = evaluate(args.model, args.samples, args.steps, args.seed, json_out, grid, conditioning=request)
    print("\n".join(_eval_summary(result)))
    for what, path in (("report (JSON)", json_out), ("sample grid (PNG)", grid)):
        if path is not None:
            print(f"wrote {what}: {path} ({human_size(path)})")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from edgediff.models.sample import write_samples

    grid = Path(args.grid) if args.grid else None
    images = write_samples(
        args.model, args.num, args.steps, args.seed, Path(args.out), conditioning_request(args), grid
    )
    print(f"saved {args.out} ({tuple(images.shape)} samples)" + (f"; grid: {grid}" if grid else ""))
    return 0


def quantize_options(args: argparse.Namespace) -> dict:
    """The method switches given on the command line, as config field -> value (unset ones left out)."""
    from edgediff.methods.registry import cli_options, methods

    methods()
    out = {}
    for key, (opt, _owners) in cli_options().items():
        value = getattr(args, key, None)
        if value is not None:
            out[key] = opt.value(value)
    return out


def _cmd_quantize(args: argparse.Namespace) -> int:
    from edgediff.utils.atomic import check_writable

    check_writable(Path(args.out))
    if args.recipe and not Path(args.recipe).is_file():
        raise EdgediffError(f"recipe file not found: {args.recipe}")
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
        calib_samples=args.calib_samples,
        conditioning=conditioning_request(args),
        resume=args.resume,
    )
    print(
        f"saved {args.out} ({meta['method']} {meta['bits']}, {meta['seconds']} s): recipe.json, "
        f"model.safetensors, configs; {human_size(Path(args.out))}"
    )
    return 0


def add_train_commands(sub: argparse._SubParsersAction) -> None:
    """Register the train-stage subcommands on the top-level parser."""
    ref = sub.add_parser("reference", help="the bundled reference benchmark (digits16)")
    ref_sub = ref.add_subparsers(dest="ref_cmd", required=True)
    p = ref_sub.add_parser("train", help="train the reference diffusion model from scratch (seeded)")
    p.add_argument("--out", required=True, help="output folder (a diffusers DDPMPipeline folder)")
    p.add_argument(
        "--steps", type=positive_int("--steps"), default=None, help="optimiser steps (2400; canvas32 1800)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", choices=["digits16", "canvas32"], default="digits16", help="which reference")
    p.set_defaults(func=_cmd_reference_train)
    p = ref_sub.add_parser("train-classifier", help="train the metric network (TinyCNN, about a minute)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", choices=["digits16", "canvas32"], default="digits16", help="which reference")
    p.set_defaults(func=_cmd_reference_classifier)

    p = sub.add_parser("eval", help="sample a model and score it (FD, confidence, paired fidelity)")
    p.add_argument("--model", required=True, help="'reference', a diffusers folder or a quantized folder")
    p.add_argument("--samples", type=positive_int("--samples"), default=1000)
    p.add_argument("--steps", type=positive_int("--steps"), default=50, help="DDIM steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the report here")
    p.add_argument("--grid", help="write a sample grid PNG here (default: next to --json)")
    add_conditioning_args(p, "of the samples")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("sample", help="sample any model with DDIM (conditioned, guided) to safetensors")
    p.add_argument("--model", required=True, help="'reference[:NAME]', a diffusers or a quantized folder")
    p.add_argument("--out", required=True, help="safetensors file: 'samples' and the conditions used")
    p.add_argument("--num", type=positive_int("--num"), default=16, help="samples (default 16)")
    p.add_argument("--steps", type=positive_int("--steps"), default=50, help="DDIM steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", help="also write a PNG grid (1- or 3-channel image models)")
    add_conditioning_args(p, "default for a label-conditioned model: seeded random labels")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("quantize", help="quantize a model (see --method) and save a quantized folder")
    p.add_argument(
        "--model", required=True, help="'reference[:NAME]', a local diffusers model or pipeline folder"
    )
    p.add_argument(
        "--bits",
        type=bits_arg,
        help="W<1-8>A<1-8|16>, e.g. W8A8, W4A8, W2A4: picks the method's preset recipe "
        "(optional with --recipe, which then must match it)",
    )
    p.add_argument("--recipe", help="a recipe JSON file (replaces the preset recipe for --bits)")
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
        "--calib-samples",
        type=positive_int("--calib-samples"),
        default=64,
        help="FP sampler trajectories used for calibration (default 64)",
    )
    add_conditioning_args(p, "of calibration; default for a label-conditioned model: seeded random labels")
    p.add_argument("--resume", action="store_true", help="continue an interrupted fine-tuning from OUT.ckpt/")
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available), cpu or cuda: where calibration and fine-tuning run",
    )
    _add_method_options_on_use(p)
    p.set_defaults(func=_cmd_quantize)

    from edgediff.distill.cli import add_distill_command

    add_distill_command(sub)

    from edgediff.customize.cli import add_customize_command

    add_customize_command(sub)


def _add_method_options_on_use(p: argparse.ArgumentParser) -> None:
    """`--method` and the registered methods' switches are added when `quantize` is parsed (its
    `--help` included): building them imports the methods, and with them torch, which the other
    commands do not need. The command's own options are checked first, so a bad `--bits` or
    `--steps` is reported before torch is imported."""
    parse = p.parse_known_args

    def parse_known_args(args=None, namespace=None):
        if not getattr(p, "_method_options_added", False):
            if not {"-h", "--help"} & set(args or []):
                parse(list(args or []), argparse.Namespace())  # usage errors exit here, torch-free
            _add_method_options(p)
            p._method_options_added = True
        return parse(args, namespace)

    p.parse_known_args = parse_known_args


def _add_method_options(p: argparse.ArgumentParser) -> None:
    """`--method` (the registry's names) and one option per `cli_field` of the methods' configs
    (docs/mpq.md); an unset switch keeps the method's default."""
    from edgediff.methods.registry import cli_options, methods

    known = methods()
    p.add_argument(
        "--method",
        required=True,
        choices=list(known),
        help="; ".join(f"{name}: {m.help}" for name, m in known.items()),
    )
    g = p.add_argument_group("method switches (default: the method's own setting)")
    for key, (opt, owners) in cli_options().items():
        where = f" [{', '.join(owners)}]"
        if opt.kind == "switch_off":
            g.add_argument(opt.flag, dest=key, action="store_const", const=False, help=opt.help + where)
        elif opt.kind == "switch_on":
            g.add_argument(opt.flag, dest=key, action="store_const", const=True, help=opt.help + where)
        elif opt.kind == "on_off":
            g.add_argument(opt.flag, dest=key, choices=["on", "off"], help=opt.help + where)
            if opt.no_flag:
                g.add_argument(
                    opt.no_flag, dest=key, action="store_const", const="off", help=f"same as {opt.flag} off"
                )
        elif opt.kind == "choice":
            g.add_argument(opt.flag, dest=key, choices=list(opt.choices), help=opt.help + where)
        else:
            g.add_argument(
                opt.flag, dest=key, type=positive_int(opt.flag), metavar="N", help=opt.help + where
            )
