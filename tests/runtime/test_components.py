"""The manifest's `pipeline` section (edgediff_runtime.components) and the prompt tokenizer,
without the exporter: typed round trip, the cross-field rules, truncation."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from edgediff_runtime.components import ComponentSpec, ComponentTensor, PipelineSpec
from edgediff_runtime.conditioning import ConditioningSpec
from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.manifest import Manifest, ModelSpec, OnnxSpec, SamplerSpec, TensorSpec


def _manifest(width: int = 16, text_width: int = 16) -> Manifest:
    inputs = [
        TensorSpec("sample", "float32", ["batch", 4, 8, 8]),
        TensorSpec("timestep", "int64", ["batch"]),
        TensorSpec("encoder_hidden_states", "float32", ["batch", 16, width]),
    ]
    pipeline = PipelineSpec(
        components=[
            ComponentSpec("tokenizer", "tokenizer/tokenizer.json", "-"),
            ComponentSpec(
                "text_encoder",
                "text_encoder.onnx",
                inputs=[ComponentTensor("input_ids", "int64", ["batch", 16])],
                outputs=[ComponentTensor("last_hidden_state", "float32", ["batch", 16, text_width])],
            ),
            ComponentSpec("denoiser", "model.onnx", "W8A8"),
            ComponentSpec("vae_decoder", "vae_decoder.onnx"),
        ],
        max_length=16,
        pad_id=1,
        image_shape=[3, 16, 16],
        tolerances={"image_psnr_min": 40.0},
    )
    return Manifest(
        name="t",
        model=ModelSpec(
            "UNet2DConditionModel", inputs, [TensorSpec("model_output", "float32", [])], [4, 8, 8]
        ),
        sampler=SamplerSpec(kind="ddim", steps=4),
        onnx=OnnxSpec(opset=18, ir_version=10),
        conditioning=ConditioningSpec(kind="embeddings", input="encoder_hidden_states", shape=[16, width]),
        pipeline=pipeline,
    )


def test_pipeline_section_round_trips_typed():
    m = _manifest()
    back = Manifest.from_json(m.to_json())
    assert back.pipeline == m.pipeline
    assert back.pipeline.component("text_encoder").outputs[0].shape == ["batch", 16, 16]
    assert back.pipeline.order == ["tokenizer", "text_encoder", "denoiser", "vae_decoder"]


def test_a_manifest_without_pipeline_reads_as_denoiser_only():
    data = _manifest().to_dict()
    data.pop("pipeline")
    assert Manifest.from_dict(data).pipeline is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda m: dataclasses.replace(
                m, pipeline=dataclasses.replace(m.pipeline, order=["text_encoder", "scheduler"])
            ),
            "pipeline.order",
        ),
        (lambda m: _manifest(text_width=32), "32 wide but the denoiser takes 16"),
        (
            lambda m: dataclasses.replace(m, pipeline=dataclasses.replace(m.pipeline, tolerances={"x": 1.0})),
            "pipeline.tolerances.x is unknown",
        ),
        (lambda m: dataclasses.replace(m, conditioning=None), "takes no text embeddings"),
    ],
)
def test_cross_field_rules_are_one_line(change, message):
    bad = change(_manifest())
    with pytest.raises(RuntimeStageError, match=message) as info:
        Manifest.from_json(bad.to_json())
    assert "\n" not in str(info.value)


def test_tokenizer_pads_truncates_and_warns(tmp_path, caplog):
    pytest.importorskip("tokenizers")
    from edgediff_runtime.prompts import PromptTokenizer
    from tests.edgediff.models.tiny import BOS, EOS, clip_tokenizer, clip_vocabulary

    clip_tokenizer().save(str(tmp_path / "tokenizer.json"))
    vocab, _ = clip_vocabulary()
    tok = PromptTokenizer(tmp_path / "tokenizer.json", max_length=6, pad_id=vocab[EOS])
    with caplog.at_level(logging.WARNING):
        ids = tok(["a cat", "cat cat cat cat cat cat"])
    assert ids.dtype == np.int64 and ids.shape == (2, 6)
    cat = vocab["cat</w>"]
    # BOS, a, cat, EOS, then padding; the long prompt keeps 4 words and ends with EOS
    assert ids[0].tolist() == [vocab[BOS], vocab["a</w>"], cat, vocab[EOS], vocab[EOS], vocab[EOS]]
    assert ids[1].tolist() == [vocab[BOS], cat, cat, cat, cat, vocab[EOS]]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "limit of 6 tokens" in warnings[0]
