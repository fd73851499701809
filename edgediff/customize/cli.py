"""`edgediff customize`: subject-driven generation or subject editing with MCA-Ctrl (docs/customize.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_customize(args: argparse.Namespace) -> int:
    from edgediff.cli import conditioning_request
    from edgediff.customize.errors import CustomizeError
    from edgediff.customize.images import read_image, read_image_mask, write_image
    from edgediff.customize.masks import CrossAttentionLocalizer
    from edgediff.customize.pipeline import CustomizeInputs, check_task, customize
    from edgediff.customize.schedule import ControlSchedule
    from edgediff.models.conditioning import build_conditioning
    from edgediff.models.loading import load_model
    from edgediff.utils.atomic import check_writable

    check_task(bool(args.condition), bool(args.condition_mask))  # before loading anything
    if args.labels is None and args.cond is None:
        raise CustomizeError("say what the target shows: --labels L,... or --cond FILE.safetensors")
    check_writable(Path(args.out))
    loaded = load_model(args.model)
    shape = tuple(loaded.sample_shape)
    if len(shape) != 3:
        raise CustomizeError(f"customization needs image models (C, H, W); {args.model} makes {shape}")
    request = conditioning_request(args)
    cond = build_conditioning(loaded, request, 1, seed=args.seed)
    subject, subject_hw = read_image(Path(args.subject), shape, "--subject")
    subject_mask = (
        read_image_mask(Path(args.subject_mask), subject_hw, shape[1:], "--subject-mask")
        if args.subject_mask
        else None
    )
    condition = condition_mask = None
    if args.condition:
        condition, condition_hw = read_image(Path(args.condition), shape, "--condition")
        condition_mask = read_image_mask(
            Path(args.condition_mask), condition_hw, shape[1:], "--condition-mask"
        )
    schedule = None
    if args.sagi_steps is not None or args.salq_steps is not None:
        if args.sagi_steps is None or args.salq_steps is None:
            raise CustomizeError("give both --sagi-steps and --salq-steps (or neither for the defaults)")
        parts = ("up",) if condition is not None else ("down", "mid", "up")
        schedule = ControlSchedule(args.sagi_steps, args.sagi_steps + args.salq_steps, salq_parts=parts)
    inputs = CustomizeInputs(
        subject=subject,
        conditioning=cond,
        subject_mask=subject_mask,
        condition=condition,
        condition_mask=condition_mask,
        guidance=request.guidance if request.guided else None,
    )
    result = customize(
        loaded,
        inputs,
        args.steps,
        seed=args.seed,
        schedule=schedule,
        localizer=CrossAttentionLocalizer(token=args.token),
        progress=True,
        invert_refine=args.invert_refine,
    )
    write_image(result.image, Path(args.out))
    s = result.schedule
    print(
        f"saved {args.out} ({result.task.value}; SAGI steps 0-{s.sagi_end - 1}, SALQ steps {s.sagi_end}-"
        f"{s.salq_end - 1} in {'/'.join(s.salq_parts)}; editable region {int(result.condition_mask.sum())} "
        f"of {result.condition_mask.numel()} pixels)"
    )
    return 0


def add_customize_command(sub: argparse._SubParsersAction) -> None:
    """Register `edgediff customize`."""
    from edgediff.cli import add_conditioning_args, positive_int

    def non_negative(text: str) -> int:
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from exc
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
        return value

    p = sub.add_parser(
        "customize",
        help="MCA-Ctrl: draw a subject image's subject into a generated or a given image (no training)",
    )
    p.add_argument("--model", required=True, help="'reference:NAME' or a local UNet2DConditionModel folder")
    p.add_argument("--subject", required=True, help="subject image (PNG; .npy (C, H, W) for latent models)")
    p.add_argument(
        "--subject-mask", help="mask of the subject in --subject (PNG > 127 or .npy; default: all)"
    )
    p.add_argument("--condition", help="image to edit (subject editing); omit to generate")
    p.add_argument("--condition-mask", help="region of --condition to fill with the subject")
    p.add_argument("--out", required=True, help="output image (.png, or .npy for latents)")
    p.add_argument("--seed", type=int, default=0, help="seed of the target's noise (generation)")
    p.add_argument("--steps", type=positive_int("--steps"), default=50, help="DDIM steps (default 50)")
    p.add_argument(
        "--token", type=non_negative, default=0, help="condition token that locates the subject (0)"
    )
    p.add_argument("--sagi-steps", type=non_negative, help="SAGI steps from the start (default: 40%%/70%%)")
    p.add_argument(
        "--salq-steps", type=non_negative, help="SALQ steps after SAGI (default: to 96%% of steps)"
    )
    p.add_argument(
        "--invert-refine", type=non_negative, default=0, help="fixed-point refinements per inversion step (0)"
    )
    add_conditioning_args(p, "of the target: what to draw")
    p.set_defaults(func=_cmd_customize)
