"""The tests' tiny Stable-Diffusion-layout pipeline: offline loading and the CLIP-layout tokenizer."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from tests.edgediff.models.tiny import BOS, EOS, clip_vocabulary, save_sd_pipeline  # noqa: E402

PROMPTS = ["a photo of a red cat", "A  DOG in the snow!", "zebra 123", ""]


def test_vocab_and_merges_give_the_same_ids_as_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer
    from transformers import CLIPTokenizer

    folder = save_sd_pipeline(tmp_path / "pipe")
    from_files = CLIPTokenizer(
        vocab=json.loads((folder / "tokenizer" / "vocab.json").read_text(encoding="utf-8")),
        merges=[
            tuple(line.split())
            for line in (folder / "tokenizer" / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
        ],
    )
    fast = Tokenizer.from_file(str(folder / "tokenizer" / "tokenizer.json"))
    vocab, _ = clip_vocabulary()
    for prompt in PROMPTS:
        ids = fast.encode(prompt).ids
        assert ids == from_files(prompt).input_ids
        assert ids[0] == vocab[BOS] and ids[-1] == vocab[EOS]
    # every listed word is one token; "cat" and "dog" differ
    assert len(fast.encode("cat").ids) == 3 and fast.encode("cat").ids != fast.encode("dog").ids


def test_stable_diffusion_pipeline_loads_the_folder_offline(tmp_path):
    from diffusers import StableDiffusionPipeline

    folder = save_sd_pipeline(tmp_path / "pipe")
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert pipe.tokenizer.model_max_length == 16
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim
    assert pipe.vae_scale_factor == 2
