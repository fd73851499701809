import pytest
import torch

from edgediff.errors import EdgediffError
from edgediff.models.conditioning import (
    Conditioning,
    ConditioningRequest,
    build_conditioning,
    guided_batch,
    parse_labels,
)
from edgediff.models.label_table import LabelTable
from edgediff.models.loading import load_model

from .tiny import class_unet, cond_file, cond_unet, dit, pixart, save_pipeline_folder


def _one_line(fn) -> str:
    with pytest.raises(EdgediffError) as err:
        fn()
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    table = save_pipeline_folder(cond_unet(), root / "table")
    emb = torch.arange(2 * 12 * 16, dtype=torch.float32).reshape(2, 12, 16)
    LabelTable(emb).save(table)
    return {
        "class_unet": save_pipeline_folder(class_unet(), root / "class_unet"),
        "dit": save_pipeline_folder(dit(), root / "dit"),
        "cond_unet": save_pipeline_folder(cond_unet(), root / "cond_unet"),
        "table": table,
        "pixart1024": save_pipeline_folder(pixart(sample_size=128), root / "pixart1024"),
    }


def test_parse_labels_groups_rows_by_slots():
    assert parse_labels("7,2", 2, 10).tolist() == [[7, 2]]
    assert parse_labels("7, 2", 1, None).tolist() == [[7], [2]]
    assert parse_labels("3,-", 2, 10).tolist() == [[3, 10]]
    assert "2 comma-separated" in _one_line(lambda: parse_labels("1,2,3", 2, 10))
    assert "not an integer" in _one_line(lambda: parse_labels("-", 1, None))
    assert "not an integer" in _one_line(lambda: parse_labels("a", 1, None))


def test_class_labels_cycle_over_the_samples(folders):
    loaded = load_model(folders["class_unet"])
    cond = build_conditioning(loaded, ConditioningRequest(labels="7,2"), 5)
    assert cond.values["class_labels"].tolist() == [7, 2, 7, 2, 7]
    assert cond.null is None  # a UNet class embedding has no "no class" row
    msg = _one_line(lambda: build_conditioning(loaded, ConditioningRequest(labels="7", guidance=3.0), 2))
    assert "null condition" in msg
    assert "out of range" in _one_line(
        lambda: build_conditioning(loaded, ConditioningRequest(labels="10"), 2)
    )


def test_dit_null_label_is_its_extra_class(folders):
    loaded = load_model(folders["dit"])
    cond = build_conditioning(loaded, ConditioningRequest(labels="3", guidance=4.0), 2)
    assert cond.values["class_labels"].tolist() == [3, 3]
    assert cond.null["class_labels"].tolist() == [10, 10]
    assert guided_batch(cond)["class_labels"].tolist() == [3, 3, 10, 10]


def test_random_default_labels_are_seeded_and_in_range(folders):
    loaded = load_model(folders["class_unet"])
    a = build_conditioning(loaded, ConditioningRequest(), 64, seed=1, random_default=True)
    b = build_conditioning(loaded, ConditioningRequest(), 64, seed=1, random_default=True)
    assert torch.equal(a.values["class_labels"], b.values["class_labels"])
    labels = a.values["class_labels"]
    assert 0 <= int(labels.min()) and int(labels.max()) <= 9 and len(set(labels.tolist())) > 1
    assert "needs class_labels" in _one_line(lambda: build_conditioning(loaded, ConditioningRequest(), 2))


def test_label_table_gives_encoder_hidden_states_and_null_rows(folders):
    loaded = load_model(folders["table"])
    emb = loaded.label_table.embeddings
    cond = build_conditioning(loaded, ConditioningRequest(labels="7,-", guidance=2.0), 3)
    ehs = cond.values["encoder_hidden_states"]
    assert ehs.shape == (3, 2, 16)
    assert torch.equal(ehs[0, 0], emb[0, 7]) and torch.equal(ehs[2, 1], emb[1, 10])  # '-' = empty row 10
    assert torch.equal(cond.null["encoder_hidden_states"][1, 1], emb[1, 11])  # null row 11
    assert "out of range" in _one_line(
        lambda: build_conditioning(loaded, ConditioningRequest(labels="11,0"), 1)
    )
    rand = build_conditioning(loaded, ConditioningRequest(), 4, random_default=True)
    assert rand.values["encoder_hidden_states"].shape == (4, 2, 16)


def test_cond_file_checks_names_widths_and_null(folders, tmp_path):
    loaded = load_model(folders["cond_unet"])
    good = cond_file(tmp_path / "g.safetensors", {"encoder_hidden_states": torch.randn(1, 3, 16)})
    cond = build_conditioning(loaded, ConditioningRequest(cond_file=good), 4)
    assert cond.values["encoder_hidden_states"].shape == (4, 3, 16)
    assert "null condition" in _one_line(
        lambda: build_conditioning(loaded, ConditioningRequest(cond_file=good, guidance=5.0), 2)
    )
    with_null = cond_file(
        tmp_path / "n.safetensors",
        {"encoder_hidden_states": torch.randn(2, 3, 16), "null.encoder_hidden_states": torch.zeros(1, 3, 16)},
    )
    cond = build_conditioning(loaded, ConditioningRequest(cond_file=with_null, guidance=5.0), 4)
    assert cond.null["encoder_hidden_states"].shape == (4, 3, 16)
    wide = cond_file(tmp_path / "w.safetensors", {"encoder_hidden_states": torch.randn(1, 3, 8)})
    msg = _one_line(lambda: build_conditioning(loaded, ConditioningRequest(cond_file=wide), 2))
    assert "size 8" in msg and "16" in msg
    other = cond_file(tmp_path / "o.safetensors", {"pooled": torch.randn(1, 3)})
    assert "'pooled'" in _one_line(
        lambda: build_conditioning(loaded, ConditioningRequest(cond_file=other), 2)
    )
    assert "needs encoder_hidden_states" in _one_line(
        lambda: build_conditioning(loaded, ConditioningRequest(), 2)
    )
    assert "takes no labels" in _one_line(
        lambda: build_conditioning(loaded, ConditioningRequest(labels="1"), 2)
    )
    assert "not found" in _one_line(
        lambda: build_conditioning(loaded, ConditioningRequest(cond_file=tmp_path / "nope.safetensors"), 2)
    )
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    assert "not a safetensors" in _one_line(
        lambda: build_conditioning(loaded, ConditioningRequest(cond_file=tmp_path / "junk.safetensors"), 2)
    )


def test_unconditional_model_needs_nothing_and_refuses_guidance():
    loaded = load_model("reference")
    assert not build_conditioning(loaded, ConditioningRequest(), 3)
    assert "unconditional" in _one_line(
        lambda: build_conditioning(loaded, ConditioningRequest(guidance=2.0), 3)
    )
    assert "drop --labels" in _one_line(
        lambda: build_conditioning(loaded, ConditioningRequest(labels="1"), 3)
    )


def test_pixart_1024_resolution_is_derived_from_the_sample_size(folders, tmp_path):
    loaded = load_model(folders["pixart1024"])
    f = cond_file(tmp_path / "p.safetensors", {"encoder_hidden_states": torch.randn(1, 2, 12)})
    cond = build_conditioning(loaded, ConditioningRequest(cond_file=f), 2)
    assert cond.values["resolution"].tolist() == [[1024.0, 1024.0]] * 2
    assert cond.values["aspect_ratio"].tolist() == [[1.0]] * 2


def test_conditioning_rows_must_agree():
    with pytest.raises(EdgediffError, match="row counts"):
        Conditioning({"a": torch.zeros(2), "b": torch.zeros(3)})
    assert "not both" in _one_line(lambda: ConditioningRequest(labels="1", cond_file="x"))
