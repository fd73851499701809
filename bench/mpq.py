"""MPQ-DM / MPQ-DMv2 benchmark on the reference model (docs/methods.md 1.6, 2.3).

Rows (`ROW_DEFS`; same seeded noise for every row, paired with the FP samples of that seed): FP,
`ptq`, `efficientdm` (also with MPQ-DM's FP islands), MPQ-DM (OMQ only, with and without FP
islands; OMQ + TRD in its target / window / detached variants; random channels as the control;
forced split), MPQ-DMv2 (FZ-RMQ; + OOLRI; + MTRD; the full config with a zero-initialised
additive LoRA, i.e. the same FP branch without OOLRI). Every fine-tuned row gets the same
budget (`--updates` at `--batch`, one update per DDIM step along FP trajectories), recorded
with its wall time. Scores: FD vs the real digits, paired PSNR and class agreement vs the FP
samples. Storage: `quant.storage_bits` over every conv/linear weight, float layers and float
branches included (at the stored FP32 width and at FP16).
`--convergence` records the OOLRI claim: the task loss on a fixed held-out set of FP-trajectory
inputs after 0/100/... updates with zero vs SVD LoRA init.

Usage: `python -m bench.mpq --bits W2A4 --rows efficientdm mpqdm-omq --samples 1000 --updates 300`.
Rows already in bench/results/mpq.json are replaced, others kept, so it runs in pieces; the JSON
is written after every row, the docs section and figure after every row too. `--device cuda`
runs quantization, fine-tuning and sampling on a GPU (scoring stays on the CPU); a result file
holds one device only. `bench.mpq_parallel` runs the rows as parallel processes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench._models import bits_label
from bench._report import RESULTS_DIR, ROOT, host_info, markdown_table, update_results_section
from edgediff.methods.mpqdm import bits_summary
from edgediff.quant import set_step
from edgediff.reference.classifier import load_classifier
from edgediff.reference.data import load_digits16
from edgediff.reference.grid import save_grid
from edgediff.reference.metrics import classify, evaluate_samples
from edgediff.reference.model import BUNDLED_CLASSIFIER, load_pipeline_parts
from edgediff.sampling import ddim_sample, seeded_noise


@dataclass(frozen=True)
class Row:
    """One benchmark row: a method, its config switches and the table label.

    `options` are `MPQDMConfig` / `MPQDMv2Config` fields; `fp_islands` (efficientdm only) keeps
    MPQ-DM's FP islands (shortcut and downsampler convs) in floating point, so efficientdm and
    MPQ-DM can be compared with the same float layers.
    """

    method: str  # fp | ptq | efficientdm | mpqdm | mpqdmv2
    label: str
    options: dict = field(default_factory=dict)
    fp_islands: bool = False


ROW_DEFS: dict[str, Row] = {
    "fp": Row("fp", "FP32"),
    "ptq": Row("ptq", "ptq"),
    "efficientdm": Row("efficientdm", "efficientdm"),
    "efficientdm-islands": Row("efficientdm", "efficientdm + MPQ-DM's FP islands", fp_islands=True),
    "mpqdm-omq": Row("mpqdm", "MPQ-DM: OMQ", {"trd": False}),
    "mpqdm-omq-noislands": Row(
        "mpqdm", "MPQ-DM: OMQ without FP islands", {"trd": False, "fp_islands": False}
    ),
    "mpqdm-omq-trd": Row("mpqdm", "MPQ-DM: OMQ + TRD"),
    "mpqdm-omq-trd-window": Row(
        "mpqdm", "MPQ-DM: OMQ + TRD, window gradient (option a)", {"trd_mode": "window"}
    ),
    "mpqdm-omq-trd-detach": Row(
        "mpqdm", "MPQ-DM: OMQ + TRD detached (released code: no TRD gradient)", {"trd_detach": True}
    ),
    "mpqdm-omq-random": Row(
        "mpqdm", "MPQ-DM: OMQ, random channels (control)", {"trd": False, "selection": "random"}
    ),
    "mpqdm-omq-forced": Row(
        "mpqdm", "MPQ-DM: OMQ forced to k = C/10 (no search, ablation)", {"trd": False, "omq_range": "fixed"}
    ),
    "mpqdmv2-fzrmq": Row(
        "mpqdmv2", "MPQ-DMv2: FZ-RMQ (+TRD)", {"lora_init": "zero", "lora_mode": "merged", "mtrd": False}
    ),
    "mpqdmv2-oolri": Row("mpqdmv2", "MPQ-DMv2: FZ-RMQ + OOLRI (+TRD)", {"mtrd": False}),
    "mpqdmv2-full": Row("mpqdmv2", "MPQ-DMv2: FZ-RMQ + OOLRI + MTRD (+TRD)"),
    "mpqdmv2-full-zeroinit": Row(
        "mpqdmv2",
        "MPQ-DMv2: full, additive LoRA zero-init (same FP branch, no OOLRI)",
        {"lora_init": "zero", "lora_mode": "additive"},
    ),
}
ROWS = list(ROW_DEFS)
LABELS = {name: row.label for name, row in ROW_DEFS.items()}
GRID_N = 10
FIGURES = ROOT / "docs" / "figures"


def sample(model, sched_cfg, n: int, steps: int, seed: int, per_step: bool) -> torch.Tensor:
    """`n` DDIM samples from the seeded CPU noise of `seed` (returned on the CPU)."""
    noise = seeded_noise(n, (1, 16, 16), seed)
    hook = (lambda i: set_step(model, i)) if per_step else None
    return ddim_sample(model, sched_cfg, noise, steps, set_step=hook, batch_size=1000).images


def row_config(name: str, fp, bits: str, args):
    """The method config (and recipe, None = the method's default) of row `name`."""
    from edgediff.methods.efficientdm import EfficientDMConfig

    row = ROW_DEFS[name]
    base = EfficientDMConfig(
        num_steps=args.steps,
        trajectories=max(1, args.updates // args.steps),
        batch_size=args.batch,
        seed=args.train_seed,
    )
    if row.method == "ptq":
        from edgediff.methods.ptq import PTQConfig

        return PTQConfig(calib_steps=args.steps, seed=args.train_seed), None
    if row.method == "efficientdm":
        recipe = None
        if row.fp_islands:
            from edgediff.methods.mpqdm import mpq_recipe
            from edgediff.quant import LoRASpec

            lora = LoRASpec(rank=base.lora_rank, mode="merged")
            recipe = mpq_recipe(bits, fp, lora=lora, smooth=False, fp_islands=True, name="efficientdm")
        return base, recipe
    if row.method == "mpqdm":
        from edgediff.methods.mpqdm import MPQDMConfig

        return MPQDMConfig(base=base, **row.options), None
    from edgediff.methods.mpqdmv2 import MPQDMv2Config

    return MPQDMv2Config(base=base, **row.options), None


def build_row(name: str, fp, sched_cfg, bits: str, args) -> tuple[torch.nn.Module, bool, dict]:
    """Quantize (and fine-tune) the model of row `name`; returns (model, per_step, record)."""
    method = ROW_DEFS[name].method
    cfg, recipe = row_config(name, fp, bits, args)
    if method == "ptq":
        from edgediff.methods.ptq import run_ptq

        model, _ = run_ptq(fp, sched_cfg, bits, cfg=cfg, progress=False)
        return model, False, {}
    if method == "efficientdm":
        from edgediff.methods.efficientdm import run_efficientdm

        model, _, record = run_efficientdm(fp, sched_cfg, bits, recipe, cfg=cfg, progress=False)
        return model, True, record
    if method == "mpqdm":
        from edgediff.methods.mpqdm import run_mpqdm

        model, _, record = run_mpqdm(fp, sched_cfg, bits, cfg=cfg, progress=False)
        return model, True, record
    from edgediff.methods.mpqdmv2 import run_mpqdmv2

    model, _, record = run_mpqdmv2(fp, sched_cfg, bits, cfg=cfg, progress=False)
    return model, True, record


def row_structure(name: str, fp, sched_cfg, bits: str, args) -> torch.nn.Module:
    """Row `name`'s quantized model before fine-tuning: its recipe and, for MPQ-DM / MPQ-DMv2,
    calibration and the split search. Storage depends on this structure only (fine-tuning
    changes values, not bit widths, residual channels or branch sizes)."""
    import copy

    from edgediff.methods.mpqdm import prepare
    from edgediff.quant import default_recipe, quantize_

    row = ROW_DEFS[name]
    cfg, recipe = row_config(name, fp, bits, args)
    if row.method == "ptq":
        model = copy.deepcopy(fp).eval()
        quantize_(model, default_recipe(bits, model, a_mode=cfg.a_mode), num_steps=args.steps)
        return model
    if row.method == "efficientdm":
        from edgediff.methods.efficientdm import efficientdm_recipe

        model = copy.deepcopy(fp).eval()
        quantize_(model, recipe or efficientdm_recipe(bits, model, cfg), num_steps=cfg.num_steps)
        return model
    if row.method == "mpqdm":
        from edgediff.methods.mpqdm import mpqdm_recipe

        return prepare(fp, sched_cfg, bits, mpqdm_recipe(bits, fp, cfg), cfg, progress=False)[0]
    from edgediff.methods.mpqdmv2 import mpqdmv2_recipe

    salient = "residual" if cfg.residual else "bits"
    recipe = mpqdmv2_recipe(bits, fp, cfg)
    return prepare(
        fp, sched_cfg, bits, recipe, cfg, salient=salient, balance=cfg.residual_balance, progress=False
    )[0]


def storage_record(model) -> dict:
    """`quant.storage_bits` at the stored float width and with floats counted at 16 bits."""
    from edgediff.quant import storage_bits

    return {"stored": storage_bits(model).to_dict(), "fp16": storage_bits(model, float_bits=16).to_dict()}


def _compact(record: dict) -> dict:
    """Drop the per-layer search table from the JSON row (kept: its summary)."""
    out = {k: v for k, v in record.items() if k != "split"}
    split = record.get("split")
    if split:
        out["split_k_mean_fraction"] = float(np.mean([s["k"] / s["channels"] for s in split.values()]))
        out["split_layers_mixed"] = sum(1 for s in split.values() if s["k"] > 0)
        out["split_layers"] = len(split)
    return out


def convergence(fp, sched_cfg, args) -> dict:
    """OOLRI claim: held-out task loss after `args.conv_updates` updates, zero vs SVD init (W2A4)."""
    from edgediff.methods.efficientdm import EfficientDMConfig
    from edgediff.methods.mpqdmv2 import MPQDMv2Config, run_mpqdmv2
    from edgediff.quant import collect_calibration

    held = collect_calibration(fp, sched_cfg, num_samples=16, num_steps=args.steps, seed=1234)
    idx = torch.randperm(len(held), generator=torch.Generator().manual_seed(0))[:256]
    device = next(fp.parameters()).device
    x, t, step = held.x[idx].to(device), held.t[idx].to(device), held.step[idx].to(device)
    with torch.no_grad():
        target = torch.cat([fp(x[i : i + 64], t[i : i + 64]).sample for i in range(0, len(x), 64)])
    total = max(args.conv_updates)
    out = {"bits": args.conv_bits, "updates": args.conv_updates, "held_out_inputs": len(x), "runs": {}}
    for init in ("zero", "svd"):
        losses: dict[int, float] = {}

        @torch.no_grad()
        def probe(update: int, model, losses=losses) -> None:
            if update not in args.conv_updates or update in losses:
                return
            was = model.training
            model.eval()
            err = 0.0
            for s in torch.unique(step).tolist():
                sel = step == s
                set_step(model, int(s))
                err += float((model(x[sel], t[sel]).sample - target[sel]).pow(2).sum())
            losses[update] = err / target.numel()
            model.train(was)

        base = EfficientDMConfig(
            num_steps=args.steps, trajectories=max(1, total // args.steps), batch_size=args.batch
        )
        cfg = MPQDMv2Config(base=base, lora_init=init, lora_mode="additive")
        t0 = time.perf_counter()
        _, _, record = run_mpqdmv2(fp, sched_cfg, args.conv_bits, cfg=cfg, progress=False, on_step=probe)
        out["runs"][init] = {
            "loss": {str(k): v for k, v in sorted(losses.items())},
            "seconds": round(time.perf_counter() - t0, 1),
            "finetune_seconds": record.get("seconds"),
        }
        print("convergence", init, out["runs"][init]["loss"], flush=True)
    if total % args.steps:
        out["note"] = f"updates rounded down to whole {args.steps}-step trajectories"
    return out


def _storage(row: dict, key: str) -> str:
    """Bits per conv/linear weight of the whole model (`quant.storage_bits`), '-' for older rows."""
    storage = row.get("storage")
    return f"{storage[key]['bits_per_weight']:.2f}" if storage else "-"


def _mixed(training: dict) -> str:
    """`mixed/searched` layers of the OMQ / FZ-RMQ split search, '-' without a search."""
    if "split_layers" not in training:
        return "-"
    return f"{training['split_layers_mixed']}/{training['split_layers']}"


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def write_docs(result: dict, section: str = "mpq", title: str = "MPQ-DM / MPQ-DMv2") -> None:
    """Table of every (bits, row), missing cells marked, the figure, and the convergence record,
    into the `section` of docs/RESULTS.md (figures named after the section)."""
    seeds = result["seeds"]
    by_key = {(r["bits"], r["row"]): r for r in result["rows"]}
    bits_list = [b for b in result.get("bits_order", []) if any(k[0] == b for k in by_key)]
    measured = {name for _, name in by_key}
    never = [name for name in ROWS if name not in measured]  # listed once below the table
    rows = []
    for bits in bits_list:
        for name in ROWS:
            r = by_key.get((bits, name)) or (by_key.get(("FP32", "fp")) if name == "fp" else None)
            if (name == "fp" and bits != bits_list[0]) or name in never:
                continue
            if r is None:
                rows.append([bits, LABELS[name], *["not run"] * (len(seeds) + 12)])
                continue
            fds = [s["fd"] for s in r["per_seed"]]
            psnr = [s.get("paired_psnr") for s in r["per_seed"]]
            agree = [s.get("label_agree") for s in r["per_seed"]]
            tr = r.get("training") or {}
            rows.append(
                [
                    r["bits"],
                    LABELS[name],
                    *[f"{v:.1f}" for v in fds],
                    _mean_sd(fds),
                    "-" if psnr[0] is None else f"{np.mean(psnr):.1f}",
                    "-" if agree[0] is None else f"{np.mean(agree):.3f}",
                    f"{tr['updates']} x {tr['config']['batch_size']}" if tr.get("updates") else "0",
                    f"{tr['seconds']:.0f}" if tr.get("seconds") else "-",
                    f"{r.get('mean_weight_bits', float('nan')):.2f}" if "mean_weight_bits" in r else "-",
                    str(r.get("fp_branch_params", 0)),
                    _mixed(tr),
                    _storage(r, "stored"),
                    _storage(r, "fp16"),
                    f"{r['seconds']:.0f}",
                ]
            )
    header = [
        "bits",
        "method",
        *[f"FD seed {s}" for s in seeds],
        "FD mean ± sd",
        "paired PSNR dB",
        "class agree",
        "fine-tune updates x batch",
        "fine-tune s",
        "mean W bits",
        "FP branch params",
        "layers with k > 0",
        "bits/weight, all layers (floats FP32)",
        "bits/weight, all layers (floats FP16)",
        "row s",
    ]
    host = result["host"]
    where = f"{host['gpu']} GPU" if host.get("gpu") else f"{host['machine']} CPU, one thread"
    parts = [
        f"### {title} (`python -m bench.mpq`, {result['samples']} samples per seed, "
        f"{result['steps']} DDIM steps, seeds {seeds}, {where})\n",
        markdown_table(header, rows),
        "",
        result.get("note", ""),
        "Bits/weight, all layers: `quant.storage_bits` over every conv/linear weight (FP islands, "
        "additive LoRA, residual signs and α, scales, zero points and δ included); '-' where the row "
        "predates that accounting.",
        (f"Rows defined but not run yet: {', '.join(f'`{n}`' for n in never)}." if never else ""),
        "Analysis, the OMQ split statistics and what each switch does: docs/mpq.md.",
    ]
    for bits in bits_list:
        fig = figure_path(section, bits)
        if fig.exists():
            parts.append(
                f"\nSamples at {bits} (rows top to bottom: the methods in table order that were run; "
                f"seed 0, first {GRID_N} images): ![mpq {bits}](figures/{fig.name})"
            )
    conv = result.get("convergence")
    if conv:
        ups = conv["updates"]
        crow = [
            [init, *[f"{run['loss'].get(str(u), float('nan')):.4f}" for u in ups], f"{run['seconds']:.0f}"]
            for init, run in conv["runs"].items()
        ]
        parts += [
            f"\nOOLRI convergence ({conv['bits']}, MPQ-DMv2 full config, additive LoRA; task MSE on "
            f"{conv['held_out_inputs']} held-out FP-trajectory inputs):\n",
            markdown_table(["LoRA init", *[f"after {u} updates" for u in ups], "run s"], crow),
            conv.get("note", ""),
        ]
    update_results_section(section, "\n".join(parts))


def figure_path(section: str, bits: str) -> Path:
    """docs/figures/mpq_samples_w2a4.png for the main section, <section>_samples_w2a4.png otherwise."""
    return FIGURES / f"{section.replace('-', '_')}_samples_{bits.lower()}.png"


def section_for(out: Path) -> str:
    """RESULTS.md section of a result file: `mpq` for mpq.json, the file stem (`_` -> `-`) otherwise."""
    return out.stem.replace("_", "-")


def write_figure(result: dict, bits: str, section: str = "mpq") -> None:
    """One row of `GRID_N` seed-0 samples per method that was run at `bits` (FP first)."""
    by_key = {(r["bits"], r["row"]): r for r in result["rows"]}
    imgs = []
    for name in ROWS:
        r = by_key.get(("FP32", "fp")) if name == "fp" else by_key.get((bits, name))
        if r is not None and r.get("grid"):
            imgs.append(torch.tensor(r["grid"]).reshape(-1, 1, 16, 16))
    if imgs:
        FIGURES.mkdir(parents=True, exist_ok=True)
        save_grid(torch.cat(imgs), figure_path(section, bits), ncol=GRID_N)


EQUAL_STORAGE_METHODS = ("efficientdm", "mpqdm-omq-trd", "mpqdmv2-full")


def equal_storage_rows(rows: list[dict], methods=EQUAL_STORAGE_METHODS, floats: str = "fp16") -> list[dict]:
    """Every measured (method, bits) row of `methods` with its whole-model storage
    (`storage_bits(...).bits_per_weight`, floats at `floats` width) and FD, sorted by storage: the
    table that compares methods at equal storage instead of at equal integer bits."""
    out = []
    for r in rows:
        if r["row"] not in methods or floats not in r.get("storage", {}):
            continue
        fds = [s["fd"] for s in r["per_seed"]]
        out.append(
            {
                "method": r["row"],
                "bits": r["bits"],
                "storage_bits": r["storage"][floats]["bits_per_weight"],
                "fd_mean": float(np.mean(fds)),
                "fd": fds,
                "paired_psnr": float(np.mean([s["paired_psnr"] for s in r["per_seed"]])),
            }
        )
    return sorted(out, key=lambda e: (e["storage_bits"], e["method"]))


def closest_in_storage(entries: list[dict], anchor: dict) -> dict[str, dict]:
    """For each other method, its setting whose storage is closest to `anchor`'s, at the anchor's
    activation bits (they change quality, not storage)."""
    from edgediff.bitspec import BitSetting

    act_bits = BitSetting.parse(anchor["bits"]).a
    best: dict[str, dict] = {}
    for e in entries:
        if e["method"] == anchor["method"] or BitSetting.parse(e["bits"]).a != act_bits:
            continue
        gap = abs(e["storage_bits"] - anchor["storage_bits"])
        if e["method"] not in best or gap < abs(best[e["method"]]["storage_bits"] - anchor["storage_bits"]):
            best[e["method"]] = e
    return best


def write_equal_storage(path: Path, anchor_row: str = "mpqdmv2-full", anchor_bits: str = "W2A4") -> str:
    """The `mpq-equal-storage` section of docs/RESULTS.md from the rows already in `path`."""
    result = json.loads(path.read_text())
    entries = equal_storage_rows(result["rows"])
    anchor = next(e for e in entries if e["method"] == anchor_row and e["bits"] == anchor_bits)
    closest = closest_in_storage(entries, anchor)
    table = markdown_table(
        ["method", "setting", "bits/weight, all layers (floats FP16)", "FD mean ± sd", "paired PSNR dB", ""],
        [
            [
                LABELS[e["method"]],
                e["bits"],
                f"{e['storage_bits']:.2f}",
                _mean_sd(e["fd"]),
                f"{e['paired_psnr']:.1f}",
                "anchor"
                if e is anchor
                else ("closest to the anchor" if closest.get(e["method"]) is e else ""),
            ]
            for e in entries
        ],
    )
    title = (
        f"### MPQ methods at equal storage (`python -m bench.mpq --equal-storage`; the rows of "
        f"{path.name}: {result['samples']} samples, sampling seeds {result['seeds']})"
    )
    return title + "\n\n" + table


PROTOCOL_KEYS = ("samples", "steps", "seeds")


def add_protocol_args(ap: argparse.ArgumentParser, samples: int) -> None:
    """Rows, protocol, budget, device and training seed: the options bench.mpq_parallel passes on."""
    ap.add_argument("--bits", nargs="+", type=bits_label, default=["W2A4"])
    ap.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    ap.add_argument("--samples", type=int, default=samples)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--updates", type=int, default=300, help="fine-tuning updates of every fine-tuned row")
    ap.add_argument("--batch", type=int, default=32, help="fine-tuning batch")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: quantize, fine-tune and sample there")
    ap.add_argument(
        "--train-seed",
        type=int,
        default=0,
        help="seed of calibration, search and fine-tuning (a replicate of the method; sampling seeds stay)",
    )


def check_same_protocol(results: list[dict], what: str) -> None:
    """ValueError unless every result has the same samples, steps, sampling seeds and device."""
    first = results[0]
    for r in results[1:]:
        for key in PROTOCOL_KEYS:
            if r[key] != first[key]:
                raise ValueError(f"{what} differ in {key}: {r[key]} vs {first[key]}")
        if r["host"].get("gpu") != first["host"].get("gpu"):
            raise ValueError(f"{what} were measured on different devices")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_args(ap, samples=1000)
    ap.add_argument("--convergence", action="store_true", help="also record the OOLRI convergence")
    ap.add_argument("--conv-updates", type=int, nargs="+", default=[0, 100, 300])
    ap.add_argument("--conv-bits", default="W2A4")
    ap.add_argument("--out", default=str(RESULTS_DIR / "mpq.json"))
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/RESULTS.md")
    ap.add_argument(
        "--storage-only",
        action="store_true",
        help="only (re)compute the storage accounting of the rows already in --out from each row's "
        "rebuilt structure (recipe, calibration, split search; no fine-tuning, no sampling)",
    )
    ap.add_argument(
        "--equal-storage",
        action="store_true",
        help="only write the equal-storage table from the rows already in --out",
    )
    args = ap.parse_args()
    if args.equal_storage:
        md = write_equal_storage(Path(args.out))
        print(md)
        if not args.no_docs:
            update_results_section("mpq-equal-storage", md)
        return
    if args.storage_only:
        add_storage(Path(args.out), args)
        return
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but this torch sees no CUDA GPU; use --device cpu")
    torch.backends.cudnn.allow_tf32 = False  # fp32 convs as on the CPU (TF32 would blur the search)
    torch.backends.cuda.matmul.allow_tf32 = False
    out = Path(args.out)
    section = section_for(out)
    result = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    host = host_info(device)
    if result.get("rows"):
        this_run = {"samples": args.samples, "steps": args.steps, "seeds": args.seeds, "host": host}
        try:
            check_same_protocol([result, this_run], "its rows and this run")
        except ValueError as exc:
            raise SystemExit(f"{out}: {exc}; use --out for a new file") from None
        if result.get("train_seed", 0) != args.train_seed:
            raise SystemExit(f"{out} holds rows of another --train-seed; use --out for a new file")
    order = list(dict.fromkeys([*result.get("bits_order", []), *args.bits]))
    order.sort(
        key=lambda b: (
            ["W2A4", "W4A4", "W3A4", "W3A6"].index(b) if b in ("W2A4", "W4A4", "W3A4", "W3A6") else 9
        )
    )
    deviation = (
        f"Reduced protocol: {args.samples} samples per seed instead of 2000 (2-core CPU budget). "
        if args.samples < 2000
        else ""
    )
    result.update(
        host=host,
        samples=args.samples,
        steps=args.steps,
        seeds=args.seeds,
        train_seed=args.train_seed,
        bits_order=order,
        note=(
            f"{deviation}Every fine-tuned row: {args.updates} updates at batch {args.batch} along FP "
            f"{args.steps}-step DDIM trajectories, same seed. 'not run' cells were not measured."
        ),
    )

    produced: dict[tuple[str, str], dict] = {}

    def save() -> None:
        """Merge with the file on disk (another piece may run at the same time), ours win, write."""
        disk = json.loads(out.read_text()) if out.is_file() else {}
        rows = {(r["bits"], r["row"]): r for r in disk.get("rows", [])} | produced
        rank = {name: i for i, name in enumerate(ROWS)}
        result["rows"] = sorted(
            rows.values(),
            key=lambda r: (order.index(r["bits"]) if r["bits"] in order else -1, rank[r["row"]]),
        )
        result["bits_order"] = list(dict.fromkeys([*disk.get("bits_order", []), *order]))
        side = out.with_name(out.stem + "_convergence.json")
        if "convergence" not in result and "convergence" in disk:
            result["convergence"] = disk["convergence"]
        elif "convergence" not in result and side.is_file():
            result["convergence"] = json.loads(side.read_text())
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out)

    fp, scheduler = load_pipeline_parts("reference")
    fp = fp.eval().to(device)
    sched_cfg = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    classifier = load_classifier(BUNDLED_CLASSIFIER)
    real, _ = classify(classifier, load_digits16()[0])
    fp_samples = {}
    cache = Path("/tmp") / f"mpq_fp_{args.samples}_{args.steps}_{device.type}"
    cache.mkdir(exist_ok=True)
    for seed in args.seeds:
        f = cache / f"seed{seed}.pt"
        if f.is_file():
            fp_samples[seed] = torch.load(f)
        else:
            fp_samples[seed] = sample(fp, sched_cfg, args.samples, args.steps, seed, per_step=False)
            tmp = f.with_suffix(f".{os.getpid()}.tmp")  # parallel pieces share the cache
            torch.save(fp_samples[seed], tmp)
            tmp.replace(f)

    def put(row: dict) -> None:
        produced[(row["bits"], row["row"])] = row
        save()
        if not args.no_docs:
            for b in result["bits_order"]:
                write_figure(result, b, section)
            write_docs(result, section)

    if "fp" in args.rows:
        t0 = time.perf_counter()
        scores = [evaluate_samples(classifier, fp_samples[s], real).to_dict() for s in args.seeds]
        grid = fp_samples[args.seeds[0]][:GRID_N].reshape(GRID_N, -1)
        put(
            {
                "bits": "FP32",
                "row": "fp",
                "seconds": time.perf_counter() - t0,
                "per_seed": scores,
                "grid": [[round(v, 3) for v in r] for r in grid.tolist()],
            }
        )
        print("FP", [round(s["fd"], 2) for s in scores], flush=True)
    for bits in args.bits:
        for name in [r for r in args.rows if r != "fp"]:
            t0 = time.perf_counter()
            model, per_step, record = build_row(name, fp, sched_cfg, bits, args)
            model.eval()
            quant_seconds = time.perf_counter() - t0
            scores, first = [], None
            for seed in args.seeds:
                images = sample(model, sched_cfg, args.samples, args.steps, seed, per_step)
                first = images[:GRID_N] if first is None else first
                scores.append(evaluate_samples(classifier, images, real, fp_samples[seed]).to_dict())
            record = _compact(record)
            storage = storage_record(model)
            row = {
                "bits": bits,
                "row": name,
                "quantize_seconds": quant_seconds,
                "seconds": time.perf_counter() - t0,
                "training": {k: v for k, v in record.items() if k not in ("mean_weight_bits",)},
                "mean_weight_bits": bits_summary(model)["mean_weight_bits"],
                "fp_branch_params": storage["stored"]["float_branch_params"],
                "storage": storage,
                "per_seed": scores,
                "grid": [[round(v, 3) for v in r] for r in first.reshape(GRID_N, -1).tolist()],
            }
            put(row)
            print(bits, name, [(round(s["fd"], 1), round(s["paired_psnr"], 1)) for s in scores], flush=True)
    if args.convergence:
        result["convergence"] = convergence(fp, sched_cfg, args)
        out.with_name(out.stem + "_convergence.json").write_text(
            json.dumps(result["convergence"], indent=2) + "\n"
        )
        save()
        if not args.no_docs:
            write_docs(result, section)


def add_storage(out: Path, args) -> None:
    """Fill `storage` into the (bits, row) entries of `out` that `--bits`/`--rows` select."""
    result = json.loads(out.read_text())
    if result.get("host", {}).get("gpu"):
        raise SystemExit(f"{out} was measured on a GPU; rebuild its structure there (--device cuda)")
    fp, scheduler = load_pipeline_parts("reference")
    sched_cfg = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    args.train_seed = result.get("train_seed", 0)
    for row in result["rows"]:
        if row["row"] == "fp" or row["bits"] not in args.bits or row["row"] not in args.rows:
            continue
        tr = row.get("training") or {}
        args.batch = tr.get("config", {}).get("batch_size", args.batch)
        storage = storage_record(row_structure(row["row"], fp, sched_cfg, row["bits"], args))
        stored = storage["stored"]
        same = abs(stored["integer_bits_per_weight"] - row.get("mean_weight_bits", -1)) < 1e-9 and stored[
            "float_branch_params"
        ] == row.get("fp_branch_params", 0)
        if not same:  # the rebuilt structure is not the one that was trained: leave the row alone
            print(row["bits"], row["row"], "rebuilt structure differs from the recorded one; skipped")
            continue
        row["storage"] = storage
        row["storage_from"] = "rebuilt structure, checked against the recorded mean bits and branch size"
        print(row["bits"], row["row"], round(row["storage"]["stored"]["bits_per_weight"], 3),
              round(row["storage"]["fp16"]["bits_per_weight"], 3), flush=True)  # fmt: skip
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out)
    if not args.no_docs:
        write_docs(result, section_for(out))


if __name__ == "__main__":
    main()
