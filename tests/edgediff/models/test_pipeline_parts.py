"""The text-to-image parts of a pipeline folder and the checked reference a quantized folder keeps."""

from __future__ import annotations

import json

import pytest

from edgediff.errors import EdgediffError
from edgediff.models.pipeline import folder_sha256, parts_from_record, parts_record, text_pipeline_parts


def _pipeline(root):
    for part in ("tokenizer", "text_encoder", "vae", "unet"):
        (root / part).mkdir(parents=True)
        (root / part / "config.json").write_text(json.dumps({"part": part}))
    index = {p: ["x", "Y"] for p in ("tokenizer", "vae", "unet")} | {"text_encoder": ["t", "CLIPTextModel"]}
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def test_parts_of_a_text_pipeline_and_not_of_a_model_folder(tmp_path):
    parts = text_pipeline_parts(_pipeline(tmp_path / "p"))
    assert parts is not None and parts.text_encoder_class == "CLIPTextModel"
    assert parts.vae == tmp_path / "p" / "vae"
    assert text_pipeline_parts(tmp_path / "p" / "unet") is None
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    index["text_encoder"] = [None, None]  # a pipeline without a text encoder
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    assert text_pipeline_parts(tmp_path / "p") is None


def test_checked_reference_refuses_a_changed_or_missing_part(tmp_path):
    root = _pipeline(tmp_path / "p")
    record = parts_record(text_pipeline_parts(root))
    assert parts_from_record(record, tmp_path / "q").root == root.resolve()
    (root / "vae" / "config.json").write_text("{}")
    with pytest.raises(EdgediffError, match="vae changed since"):
        parts_from_record(record, tmp_path / "q")
    with pytest.raises(EdgediffError, match="is gone"):
        parts_from_record({**record, "root": str(tmp_path / "nowhere")}, tmp_path / "q")


def test_folder_digest_covers_names_and_bytes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"1")
    first = folder_sha256(tmp_path / "a")
    (tmp_path / "a" / "x").rename(tmp_path / "a" / "y")
    assert folder_sha256(tmp_path / "a") != first
