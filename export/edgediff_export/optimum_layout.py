"""`edgediff export onnx PIPELINE --layout optimum`: a pipeline bundle's ONNX components laid out
as Hugging Face Optimum's ONNX Runtime diffusion pipelines load them
(`optimum.onnxruntime.ORTStableDiffusionPipeline.from_pretrained(folder)`, optimum-onnx 0.1):

    model_index.json, scheduler/, tokenizer/ (the pipeline's own files)
    text_encoder/model.onnx + config.json     input_ids -> last_hidden_state
    unet/model.onnx (+ model.onnx.data) + config.json   sample, timestep, encoder_hidden_states -> out_sample
    vae_decoder/model.onnx + config.json      latent_sample -> sample

The graphs are the bundle's, byte for byte, except the denoiser's output, renamed to Optimum's
`out_sample`. Component configs come from the pipeline folder (a quantized folder's
`unet_config.json` for its denoiser).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgediff.models.folder import is_quantized_folder, read_json
from edgediff.models.pipeline import PipelineParts
from edgediff.utils.atomic import atomic_dir

UNET_OUTPUT = "out_sample"
ONNX_NAME = "model.onnx"


def _rename_output(src: Path, dst: Path, new: str) -> None:
    """Copy `src` (and its external data, which keeps its relative file name) renaming its output."""
    import onnx

    proto = onnx.load(str(src), load_external_data=False)
    old = proto.graph.output[0].name
    proto.graph.output[0].name = new
    for node in proto.graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    for rel in locations:
        shutil.copyfile(src.parent / rel, dst.parent / rel)
    onnx.save_model(proto, str(dst))


def write_optimum_layout(bundle: Path, model: Path, parts: PipelineParts, out: Path) -> Path:
    """The Optimum folder `out` from the pipeline bundle `bundle` exported from `model`."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = {c["name"]: c["file"] for c in manifest["pipeline"]["components"]}
    unet_config = (
        read_json(model / "unet_config.json")
        if is_quantized_folder(model)
        else read_json(
            next(p for p in (parts.root / "unet", parts.root / "transformer") if p.is_dir()) / "config.json"
        )
    )
    with atomic_dir(out) as tmp:
        index = read_json(parts.root / "model_index.json")
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        shutil.copytree(parts.tokenizer, tmp / "tokenizer")
        (tmp / "scheduler").mkdir()
        shutil.copyfile(bundle / files["scheduler"], tmp / "scheduler" / "scheduler_config.json")
        for name, src, config in (
            ("text_encoder", files["text_encoder"], parts.text_encoder / "config.json"),
            ("vae_decoder", files["vae_decoder"], parts.vae / "config.json"),
        ):
            (tmp / name).mkdir()
            shutil.copyfile(bundle / src, tmp / name / ONNX_NAME)
            shutil.copyfile(config, tmp / name / "config.json")
        (tmp / "unet").mkdir()
        _rename_output(bundle / files["denoiser"], tmp / "unet" / ONNX_NAME, UNET_OUTPUT)
        (tmp / "unet" / "config.json").write_text(json.dumps(unet_config, indent=2) + "\n")
    return out
