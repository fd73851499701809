"""The ONNX files `bench.speed` compares, built from one random-weight model (cached in a work folder).

* `fp32`: our export of the FP model (`export_unet`).
* `ort-qdq`: ONNX Runtime's own `quantize_static` of that FP32 file (QDQ format, per-channel int8
  weights, uint8 activations from MinMax calibration): what a user would pick without edgediff.
* `w8a8`, `w4a8`: edgediff `ptq` (symmetric weights, static activations) through the bundle
  writer's `ort` path (`export_unet(placement="ort")` + the weight containers of `bundle.py`).
* `w8a8+<pass>`: `w8a8` after one graph pass of `edgediff_export.passes.fastpath`; `w8a8+all`
  after all of them, and `fp32+all` the FP32 file after the same passes (they are float passes:
  the fair FP32 baseline for what they win).

Calibration data are the FP model's own 20-step DDIM trajectories from a few seeded noises
(`calib_samples`), with the case's conditioning inputs; ORT's `quantize_static` reads the same data.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from bench._models import EXPORT_CODE, QUANT_CODE, ROOT, source_digest
from bench._speed_models import ModelCase

log = logging.getLogger(__name__)

PASSES_DIR = ROOT / "export" / "edgediff_export" / "passes"


def fastpath_code() -> tuple[Path, ...]:
    """The graph-pass modules measured one by one: only the `+pass` files depend on them (listed
    when asked, so a module added while a process runs is not counted as export code)."""
    return tuple(sorted(PASSES_DIR.glob("fastpath*.py")))


MODELS_CODE = ROOT / "bench" / "_speed_models.py"


def _base_digest(calib_samples: int, steps: int) -> str:
    """What the base files depend on: quantization and export code (without the float passes, which
    only the `+pass` files depend on), the model configs and the calibration settings."""
    export = [f for f in sorted(EXPORT_CODE[0].rglob("*.py")) if f not in fastpath_code()]
    return source_digest(*QUANT_CODE, *export, MODELS_CODE, f"{calib_samples}-{steps}")


@dataclass
class Trajectory:
    """Per-step model inputs of a DDIM run: x (S*N, C, H, W), t (S*N,), conditioning (S*N, ...)."""

    x: torch.Tensor
    t: torch.Tensor
    cond: dict[str, torch.Tensor]
    final: torch.Tensor
    samples: int = 0  # N: the trajectory holds steps x N inputs, step-major

    def first(self, k: int) -> Trajectory:
        """The inputs of the first `k` of the N trajectories (all steps)."""
        if k >= self.samples:
            return self
        keep = torch.arange(len(self.t)) % self.samples < k
        cond = {name: v[keep] for name, v in self.cond.items()}
        return Trajectory(self.x[keep], self.t[keep], cond, self.final[:k], k)


@torch.no_grad()
def torch_ddim(
    model: nn.Module,
    case: ModelCase,
    noise: torch.Tensor,
    steps: int,
    cond: dict[str, torch.Tensor],
    keep_inputs: bool = False,
) -> Trajectory:
    """The diffusers DDIM loop in PyTorch (DDIMScheduler.step on the model's epsilon), x0 clipped
    as the schedule says; the final latent is clipped to [-1, 1] like the runtime's."""
    from edgediff.sampling import make_ddim

    scheduler = make_ddim(case.schedule)
    scheduler.set_timesteps(steps)
    x = noise.clone()
    xs, ts = [], []
    for t in scheduler.timesteps:
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long)
        if keep_inputs:
            xs.append(x)
            ts.append(tt)
        eps = model(x, tt, **cond, return_dict=False)[0]
        x = scheduler.step(eps, t, x).prev_sample
    n = len(xs)
    return Trajectory(
        x=torch.cat(xs) if xs else x[:0],
        t=torch.cat(ts) if ts else torch.zeros(0, dtype=torch.long),
        cond={k: v.repeat(n, *[1] * (v.dim() - 1)) for k, v in cond.items()} if xs else {},
        final=x.clamp(-1, 1),
        samples=x.shape[0],
    )


def calibration_trajectory(model: nn.Module, case: ModelCase, samples: int, steps: int) -> Trajectory:
    gen = torch.Generator().manual_seed(1234)
    noise = torch.randn(samples, *case.sample_shape, generator=gen)
    return torch_ddim(model, case, noise, steps, case.extra_inputs(samples, seed=1234), keep_inputs=True)


@torch.no_grad()
def quantize_case(fp: nn.Module, bits: str, traj: Trajectory, steps: int) -> tuple[nn.Module, dict]:
    """`ptq` with symmetric weights: calibrated fake-quant copy and each quantized layer's output range."""
    from edgediff.quant import CalibrationData, calibrate, default_recipe, quant_layers, quantize_

    model = copy.deepcopy(fp).eval()
    recipe = default_recipe(bits, model).with_symmetric_weights()
    quantize_(model, recipe)
    data = CalibrationData(
        x=traj.x, t=traj.t, step=torch.zeros(len(traj.t), dtype=torch.long), num_steps=steps, cond=traj.cond
    )
    calibrate(model, data, batch_size=16)
    ranges: dict[str, tuple[float, float]] = {}

    def make_hook(name: str):
        def hook(_module, _args, out):
            lo, hi = float(out.min()), float(out.max())
            old = ranges.get(name, (lo, hi))
            ranges[name] = (min(old[0], lo), max(old[1], hi))

        return hook

    handles = [layer.register_forward_hook(make_hook(n)) for n, layer in quant_layers(model).items()]
    try:
        for idx in torch.split(torch.arange(len(traj.t)), 16):
            model(traj.x[idx], traj.t[idx], **{k: v[idx] for k, v in traj.cond.items()}, return_dict=False)
    finally:
        for h in handles:
            h.remove()
    return model, ranges


def export_case(model: nn.Module, case: ModelCase, ranges: dict | None) -> onnx.ModelProto:
    """`export_unet` + (quantized) the `ort` weight containers the bundle writer applies."""
    from edgediff_export.bundle import _finish_weights
    from edgediff_export.to_onnx import export_unet
    from edgediff_runtime.devices import load_profile

    extra = case.extra_inputs(2)
    result = export_unet(model, case.sample_shape, placement="ort", out_ranges=ranges, extra_inputs=extra)
    proto = result.model
    if ranges is not None:
        proto, _ = _finish_weights(proto, "ort", load_profile("x86-cpu"))
    return proto


def _reader(traj: Trajectory, batch: int = 8):
    """An `onnxruntime.quantization.CalibrationDataReader` over the calibration trajectory."""
    from onnxruntime.quantization import CalibrationDataReader

    items = []
    for idx in torch.split(torch.arange(len(traj.t)), batch):
        feed = {"sample": traj.x[idx].numpy(), "timestep": traj.t[idx].numpy()}
        items.append(feed | {k: v[idx].numpy() for k, v in traj.cond.items()})

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(items)

        def get_next(self):
            return next(self._it, None)

        def rewind(self):
            self._it = iter(items)

    return Reader()


def ort_quantize_static(fp_path: Path, out: Path, traj: Trajectory) -> None:
    """ONNX Runtime's static quantization of the FP32 file: QDQ, per-channel int8 weights, uint8
    activations (the u8s8 pair its x86 kernels are fastest with), MinMax ranges.

    ORT's calibrator keeps every intermediate tensor of every calibration input in memory (its
    `CalibMaxIntermediateOutputs` option discards data on onnxruntime 1.32 instead of merging it),
    so DiT-B/2 with 4 x 20 inputs needs far more than 16 GB; use fewer `--calib-samples` there."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    # ONNX shape inference + ORT graph cleanup, as ORT's docs advise (its symbolic pass gives up here)
    quant_pre_process(str(fp_path), str(pre), skip_symbolic_shape=True)
    reader = _reader(traj)
    quantize_static(
        str(pre),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    pre.unlink()


def build_variants(
    case: ModelCase,
    work: Path,
    calib_samples: int,
    steps: int,
    passes: list[str],
    qdq_samples: int | None = None,
) -> dict[str, Path]:
    """All ONNX files for `case` under `work` (reused when the code and settings are unchanged).

    `qdq_samples`: how many of the calibration trajectories ORT's `quantize_static` reads (default
    all); fewer keep its calibrator's memory bounded on the transformers."""
    from edgediff_export.passes.external_data import save_model

    folder = Path(work) / f"{case.name}-{_base_digest(calib_samples, steps)}"
    folder.mkdir(parents=True, exist_ok=True)
    qdq_samples = calib_samples if qdq_samples is None else min(qdq_samples, calib_samples)
    qdq_name = "ort-qdq.onnx" if qdq_samples == calib_samples else f"ort-qdq-c{qdq_samples}.onnx"
    paths = {"ort-fp32": folder / "fp32.onnx", "ort-qdq": folder / qdq_name}
    paths |= {b: folder / f"{b}.onnx" for b in ("w8a8", "w4a8")}
    fp = case.build()
    traj = None

    def trajectory() -> Trajectory:
        nonlocal traj
        if traj is None:
            log.info("%s: calibration trajectories (%d samples x %d steps)", case.name, calib_samples, steps)
            traj = calibration_trajectory(fp, case, calib_samples, steps)
        return traj

    if not paths["ort-fp32"].is_file():
        log.info("%s: exporting FP32", case.name)
        save_model(export_case(fp, case, None), paths["ort-fp32"])
    if not paths["ort-qdq"].is_file():
        log.info("%s: onnxruntime quantize_static", case.name)
        tmp = paths["ort-qdq"].with_suffix(".tmp.onnx")
        ort_quantize_static(paths["ort-fp32"], tmp, trajectory().first(qdq_samples))
        tmp.replace(paths["ort-qdq"])
    for bits in ("w8a8", "w4a8"):
        if not paths[bits].is_file():
            log.info("%s: ptq %s + export", case.name, bits.upper())
            qmodel, ranges = quantize_case(fp, bits.upper(), trajectory(), steps)
            save_model(export_case(qmodel, case, ranges), paths[bits])
    if passes:
        combined = combined_passes(passes)
        todo = [("w8a8", [p]) for p in passes] + [("w8a8", combined), ("ort-fp32", combined)]
        for src, chosen in todo:
            stem = "fp32" if src == "ort-fp32" else src
            key = f"{stem}+{chosen[0] if len(chosen) == 1 and src == 'w8a8' else 'all'}"
            paths[key] = folder / f"{key}-{source_digest(*fastpath_code())}.onnx"
            log.info("%s: %s %s", case.name, key, passed_file(paths[src], chosen, paths[key]))
    return paths


#: Passes measured on their own only: each is an alternative to another one in `w8a8+all`.
ALTERNATIVE_PASSES = ("dynamic-linears-sym",)


def combined_passes(passes: list[str]) -> list[str]:
    """The passes of the `+all` rows: all of `passes` but the alternatives."""
    return [p for p in passes if p not in ALTERNATIVE_PASSES]


def passed_file(src: Path, chosen: list[str], out: Path) -> dict[str, int]:
    """`src` after the graph passes `chosen`, saved as `out` (kept when it exists), and how many
    nodes each pass rewrote (stored beside it as `<out>.passes.json`)."""
    import json

    from edgediff_export.passes.external_data import save_model
    from edgediff_export.passes.fastpath import apply_passes

    counts_file = Path(str(out) + ".passes.json")
    if out.is_file() and counts_file.is_file():
        return json.loads(counts_file.read_text())
    result = apply_passes(onnx.load(str(src)), chosen)
    save_model(result.model, out)
    counts_file.write_text(json.dumps(result.applied))
    return result.applied


def pass_counts(path: Path) -> dict[str, int] | None:
    """The rewrite counts `passed_file` stored for `path` (None for a file no pass made)."""
    import json

    counts_file = Path(str(path) + ".passes.json")
    return json.loads(counts_file.read_text()) if counts_file.is_file() else None


def untimed_rows(paths: dict[str, Path]) -> list[str]:
    """Pass rows whose passes rewrote nothing: the same graph as their source, not timed again."""
    out = []
    for key, path in paths.items():
        counts = pass_counts(path)
        if counts is not None and not any(counts.values()):
            out.append(key)
    return out


def file_bytes(path: Path) -> int:
    data = Path(str(path) + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def psnr_vs(ref: np.ndarray, out: np.ndarray) -> float:
    """PSNR of `out` against `ref` with the reference's own peak-to-peak as the data range."""
    from edgediff_runtime.parity import psnr

    return psnr(ref, out, data_range=float(np.ptp(ref)) or 1.0)
