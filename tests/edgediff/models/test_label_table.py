import json

import pytest
import torch

from edgediff.errors import EdgediffError
from edgediff.models.label_table import CONDITIONING_DIR, LABELS_JSON, LabelTable


def _table() -> LabelTable:
    # 2 slots, 3 classes (+ empty + null) = 5 rows, dim 2; value = 10*slot + row, twice
    rows = torch.arange(5, dtype=torch.float32)
    emb = torch.stack([torch.stack([rows + 10 * s, rows + 10 * s], dim=-1) for s in range(2)])
    return LabelTable(emb)


def test_rows_and_sizes():
    t = _table()
    assert (t.slots, t.classes, t.empty, t.null) == (2, 3, 3, 4)


def test_encode_gathers_token_s_from_slot_s():
    out = _table().encode(torch.tensor([[2, 0], [3, 1]]))
    assert out.shape == (2, 2, 2)
    # sample 0: slot 0 row 2 -> 2, slot 1 row 0 -> 10; sample 1: slot 0 empty row 3 -> 3, slot 1 row 1 -> 11
    assert out[:, :, 0].tolist() == [[2.0, 10.0], [3.0, 11.0]]


def test_null_condition_uses_the_last_row_of_every_slot():
    assert _table().null_condition(3)[:, :, 0].tolist() == [[4.0, 14.0]] * 3


@pytest.mark.parametrize("labels", [[[5, 0]], [[-1, 0]], [[0, 0, 0]]])
def test_bad_labels_are_one_line_errors(labels):
    with pytest.raises(EdgediffError) as err:
        _table().encode(torch.tensor(labels))
    assert "\n" not in str(err.value)


def test_save_load_round_trip_and_mismatch(tmp_path):
    t = _table()
    t.save(tmp_path)
    back = LabelTable.load(tmp_path)
    assert torch.equal(back.embeddings, t.embeddings)
    meta = json.loads((tmp_path / CONDITIONING_DIR / LABELS_JSON).read_text())
    assert meta == {"slots": 2, "classes": 3, "empty": 3, "null": 4}
    assert LabelTable.load(tmp_path / "elsewhere") is None
    meta["classes"] = 7
    (tmp_path / CONDITIONING_DIR / LABELS_JSON).write_text(json.dumps(meta))
    with pytest.raises(EdgediffError, match="disagrees"):
        LabelTable.load(tmp_path)
