"""The canvas32 branches of `edgediff reference train` and `edgediff eval`."""

from __future__ import annotations

import argparse
import json
import logging
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def hardware() -> str:
    """A one-line description of where training ran (CPU model, torch threads, GPU if any)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {torch.get_num_threads()} torch thread(s){gpu}"


def train_command(args: argparse.Namespace) -> int:
    from edgediff.reference.canvas32.trainer import Canvas32TrainConfig, train_canvas32
    from edgediff.utils.atomic import atomic_file, check_writable

    out = Path(args.out)
    check_writable(out)
    cfg = Canvas32TrainConfig(steps=args.steps or Canvas32TrainConfig.steps, seed=args.seed)
    summary = train_canvas32(out, cfg) | {"hardware": hardware(), "torch": torch.__version__}
    with atomic_file(out / "training.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"saved {out} ({summary['steps']} steps, {summary['ms_per_step']} ms/step on {summary['hardware']})"
    )
    return 0


def classifier_command(args: argparse.Namespace) -> int:
    import time

    from edgediff.reference.canvas32.classifier import save_slot_classifier, train_slot_classifier

    t0 = time.perf_counter()
    steps = 800
    model, acc = train_slot_classifier(steps=steps, seed=args.seed)
    meta = {
        "val_slot_accuracy": acc,
        "val_samples": 2000,
        "steps": steps,
        "batch_size": 128,
        "seed": args.seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "hardware": hardware(),
    }
    save_slot_classifier(model, Path(args.out), meta)
    print(f"saved {args.out} (validation slot accuracy {acc:.4f})")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    """`edgediff eval` on a canvas32 model; honours `--guidance` and `--labels` where the parser has them."""
    from edgediff.reference.canvas32.data import parse_labels
    from edgediff.reference.canvas32.evaluate import DEFAULT_GUIDANCE, evaluate

    json_out = Path(args.json) if args.json else None
    grid = Path(args.grid) if args.grid else (json_out.with_suffix(".png") if json_out else None)
    guidance = getattr(args, "guidance", None)
    labels = getattr(args, "labels", None)
    result = evaluate(
        args.model,
        args.samples,
        args.steps,
        args.seed,
        DEFAULT_GUIDANCE if guidance is None else float(guidance),
        parse_labels(labels) if labels else None,
        json_out,
        grid,
    )
    print(json.dumps(result, indent=2))
    return 0
