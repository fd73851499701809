"""Parity level 1 (`edgediff export validate`): per quantized layer, PyTorch vs ONNX Runtime.

The layer outputs of the PyTorch fake-quant model are captured with forward hooks; the ONNX tensor
that is each layer's output was recorded at export (`reference/layer_outputs.json`). Both are
computed on the golden inputs of the bundle (the latent before each recorded step).
SQNR = 10 log10(sum y^2 / sum (y - y_onnx)^2).
With the `ort` placement the ONNX layer output also carries the output Q/DQ that makes ONNX
Runtime fuse, so its SQNR includes that uint8 rounding (about 48 dB for a well-used range).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import torch

from edgediff.models.loading import is_quantized_folder, load_model
from edgediff.quant import quant_layers
from edgediff.quant.io import folder_digest
from edgediff_export.errors import ExportError
from edgediff_export.to_onnx import LAYER_OUTPUTS_FILE
from edgediff_runtime.bundle import load_bundle
from edgediff_runtime.golden import load_golden


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    noise = float(((ref.astype(np.float64) - test) ** 2).sum())
    signal = float((ref.astype(np.float64) ** 2).sum())
    return math.inf if noise == 0.0 else 10.0 * math.log10(max(signal, 1e-30) / noise)


def check_source(model_dir: str | Path, bundle) -> None:
    """Refuse a quantized folder that is not the bundle's source (digest recorded at export)."""
    recipe = bundle.manifest.quant.recipe or {}
    recorded = recipe.get("source_digest")
    if recorded is None:
        return  # a bundle written before the digest was recorded: nothing to compare against
    if folder_digest(model_dir) != recorded:
        raise ExportError(
            f"{model_dir} is not the quantized folder {bundle.root} was exported from (its recipe and "
            "weights digest differs from the one in the manifest); pass the bundle's own source folder"
        )


def golden_conditions(loaded, golden):
    """The conditioning of the bundle's golden recording as a PyTorch run's (`TorchConditions`), and
    whether the model predicts a learned sigma: what export used for the golden references and the
    output ranges, so that the validation runs see the same inputs."""
    from edgediff_export.bundle import _learned_sigma
    from edgediff_export.conditions import model_conditions
    from edgediff_export.golden import TorchConditions

    mc = model_conditions(loaded.unet, loaded.label_table)
    missing = sorted(set(mc.kwargs) - set(golden.cond))
    if missing:
        raise ExportError(
            f"the bundle's golden references hold no {missing[0]!r} condition; re-export the bundle "
            "with this edgediff version"
        )
    cond = {k: torch.from_numpy(v) for k, v in golden.cond.items()}
    guided = golden.guidance_scale is not None and bool(golden.null_cond)
    null = {k: torch.from_numpy(v) for k, v in golden.null_cond.items()} if guided else None
    conds = TorchConditions(cond, mc.kwargs, null, golden.guidance_scale if guided else None)
    return conds, _learned_sigma(loaded.unet, mc)


def _export_twin(loaded, bundle, golden) -> torch.nn.Module:
    """The export-module model: the same lowering (placement, output Q/DQ ranges) as the bundle."""
    from edgediff_export.golden import layer_output_ranges
    from edgediff_export.modules import prepare_for_export

    placement = bundle.manifest.quant.placement
    shape = tuple(bundle.manifest.model.sample_shape)
    ranges = None
    if placement == "ort":  # recomputed exactly as at export (same seeds, conditions, trajectories)
        conds, learned_sigma = golden_conditions(loaded, golden)
        ranges = layer_output_ranges(
            loaded.unet,
            bundle.manifest.sampler,
            shape,
            bundle.manifest.sampler.steps,
            set_step=loaded.set_step,
            conds=conds,
            learned_sigma=learned_sigma,
        )
    twin, steps, _ = prepare_for_export(loaded.unet, placement, ranges)
    twin.step_holder = steps
    return twin


def validate_layers(
    model_dir: str | Path, bundle_dir: str | Path, max_steps: int = 4, ort_optimize: bool = True
) -> list[dict]:
    """SQNR per quantized layer (worst first) over up to `max_steps` golden steps, two ways.

    * `sqnr_db` / `min_sqnr_db`: ONNX Runtime vs the export modules run in PyTorch (the same
      lowering, placement included): checks that the ONNX graph computes what was meant; only
      rounding ties flipped by float-order differences (and their downstream effect) remain.
    * `vs_fake_quant_db`: ONNX Runtime vs the fake-quant training model: adds what the placement
      itself changes (the `ort` placement's output Q/DQ that makes ONNX Runtime fuse).
    Both compare full-model runs on the golden inputs, so upstream differences propagate.
    """
    import onnxruntime as ort

    if not Path(model_dir).is_dir() or not is_quantized_folder(Path(model_dir)):
        raise ExportError(f"{model_dir} is not a quantized folder; level-1 parity compares quantized layers")
    bundle = load_bundle(bundle_dir, verify=True)
    check_source(model_dir, bundle)
    loaded = load_model(model_dir)
    golden = load_golden(bundle)
    proto = onnx.load(str(bundle.model_path))
    layers = quant_layers(loaded.unet)
    twin = _export_twin(loaded, bundle, golden)
    conds, _ = golden_conditions(loaded, golden)
    twin_layers = {n: twin.get_submodule(n) for n in layers}
    mapping = Path(bundle_dir) / LAYER_OUTPUTS_FILE
    if not mapping.is_file():
        raise ExportError(f"{mapping} is missing; re-export the bundle with this edgediff version")
    outputs = json.loads(mapping.read_text())
    missing = sorted(set(layers) - set(outputs))
    if missing:
        raise ExportError(
            f"cannot find {len(missing)} layer outputs in the graph (first: {missing[0]}); re-export"
        )
    existing = {o.name for o in proto.graph.output}
    for name in dict.fromkeys(outputs.values()):
        if name not in existing:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not ort_optimize:  # plain Q/DQ emulation: separates the lowering from fused-kernel arithmetic
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    spec = bundle.manifest.model
    captured: dict[str, np.ndarray] = {}
    captured_twin: dict[str, np.ndarray] = {}
    hooks = [
        layer.register_forward_hook(lambda _m, _a, out, n=name: captured.__setitem__(n, out.detach().numpy()))
        for name, layer in layers.items()
    ] + [
        layer.register_forward_hook(
            lambda _m, _a, out, n=name: captured_twin.__setitem__(n, out.detach().numpy())
        )
        for name, layer in twin_layers.items()
    ]
    steps = np.linspace(0, golden.steps - 1, num=min(max_steps, golden.steps)).round().astype(int)
    per_layer: dict[str, list[float]] = {n: [] for n in layers}
    vs_fq: dict[str, list[float]] = {n: [] for n in layers}
    try:
        for i in dict.fromkeys(int(s) for s in steps):
            x = golden.noise if i == 0 else golden.latents[i - 1]
            t = int(golden.timesteps[i])
            batch = x.shape[0]
            feeds = {
                spec.sample_input: x.astype(np.float32),
                spec.timestep_input: np.full((batch,), t, np.int64),
            }
            if spec.step_input:
                feeds[spec.step_input] = np.array(i, dtype=np.int64)
            feeds.update({name: golden.cond[name] for name in conds.kwargs})  # the conditional half
            names = list(dict.fromkeys(outputs.values()))
            results = dict(zip(names, session.run(names, feeds)))
            if loaded.set_step:
                loaded.set_step(i)
            xt, tt = torch.from_numpy(x), torch.full((batch,), t, dtype=torch.long)
            kwargs = {conds.kwargs[name]: conds.cond[name] for name in conds.kwargs}
            with torch.no_grad():
                loaded.unet(xt, tt, **kwargs)
                twin.step_holder.step = torch.tensor(i)
                twin(xt, tt, **kwargs)
                twin.step_holder.step = None
            for name in layers:
                per_layer[name].append(sqnr_db(captured_twin[name], results[outputs[name]]))
                vs_fq[name].append(sqnr_db(captured[name], results[outputs[name]]))
    finally:
        for h in hooks:
            h.remove()

    def mean(vals: list[float]) -> float:
        finite = [v for v in vals if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.inf

    rows = [
        {
            "layer": n,
            "sqnr_db": mean(vals),
            "min_sqnr_db": float(min(vals)),
            "vs_fake_quant_db": mean(vs_fq[n]),
        }
        for n, vals in per_layer.items()
    ]
    return sorted(rows, key=lambda r: r["min_sqnr_db"])
