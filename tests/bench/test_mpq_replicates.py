"""bench.mpq_replicates: FD per training seed, only for rows measured under two or more seeds."""

import pytest

from bench.mpq_replicates import collect


def _result(train_seed, rows, samples=1000, gpu=None):
    return {
        "host": {"machine": "x86_64", **({"gpu": gpu} if gpu else {})},
        "samples": samples,
        "steps": 50,
        "seeds": [0, 1],
        **({"train_seed": train_seed} if train_seed is not None else {}),
        "rows": [{"bits": b, "row": r, "per_seed": [{"fd": f0}, {"fd": f1}]} for b, r, f0, f1 in rows],
    }


def test_rows_under_two_train_seeds_get_mean_and_sd():
    base = _result(None, [("W2A4", "efficientdm", 15.0, 17.0), ("W2A4", "ptq", 120.0, 130.0)])
    rep = _result(1, [("W2A4", "efficientdm", 11.0, 13.0)])
    summary = collect([base, rep])
    assert summary["train_seeds"] == [0, 1]
    [row] = summary["rows"]
    assert row["row"] == "efficientdm" and row["fd_by_train_seed"] == {"0": 16.0, "1": 12.0}
    assert row["mean"] == pytest.approx(14.0) and row["sd"] == pytest.approx(2 * 2**0.5)


@pytest.mark.parametrize(
    "other, needle",
    [
        (_result(1, [("W2A4", "ptq", 1.0, 1.0)], samples=2000), "samples"),
        (_result(1, [("W2A4", "ptq", 1.0, 1.0)], gpu="H100"), "devices"),
        (_result(0, [("W2A4", "ptq", 1.0, 1.0)]), "share a train seed"),
    ],
)
def test_mixed_protocols_are_refused(other, needle):
    with pytest.raises(ValueError, match=needle):
        collect([_result(None, [("W2A4", "ptq", 1.0, 1.0)]), other])


def test_one_file_or_no_shared_row_is_an_error():
    with pytest.raises(ValueError, match="at least two"):
        collect([_result(None, [])])
    with pytest.raises(ValueError, match="two train seeds"):
        collect([_result(None, [("W2A4", "ptq", 1.0, 1.0)]), _result(1, [("W2A4", "efficientdm", 1, 1)])])
