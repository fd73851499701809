"""bench._models.source_digest: cache keys change with the model or the code that built them."""

from bench._models import source_digest


def test_digest_changes_with_file_content_and_name(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"\x00\x01")
    first = source_digest(tmp_path / "m")
    assert len(first) == 12 and source_digest(tmp_path / "m") == first
    (tmp_path / "m" / "w.bin").write_bytes(b"\x00\x02")
    second = source_digest(tmp_path / "m")
    assert second != first
    (tmp_path / "m" / "w.bin").rename(tmp_path / "m" / "v.bin")
    assert source_digest(tmp_path / "m") != second


def test_names_that_are_not_paths_enter_as_names(tmp_path):
    assert source_digest("reference") == source_digest("reference")
    assert source_digest("reference") != source_digest("other")
