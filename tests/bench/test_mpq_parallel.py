"""bench.mpq_parallel: one command per piece, parts merged only when their protocol matches."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.mpq import figure_path, section_for
from bench.mpq_parallel import merge_parts, row_command


def _part(rows, samples=2000, gpu="H100", bits_order=("W2A4",)):
    return {
        "host": {"machine": "x86_64", "gpu": gpu},
        "samples": samples,
        "steps": 50,
        "seeds": [0, 1],
        "bits_order": list(bits_order),
        "note": "n",
        "rows": [{"bits": b, "row": r} for b, r in rows],
    }


def test_merge_orders_rows_as_the_benchmark_does():
    merged = merge_parts(
        [_part([("W2A4", "mpqdmv2-full")]), _part([("FP32", "fp")]), _part([("W2A4", "ptq")])]
    )
    assert [r["row"] for r in merged["rows"]] == ["fp", "ptq", "mpqdmv2-full"]
    assert merged["samples"] == 2000 and merged["host"]["gpu"] == "H100"


@pytest.mark.parametrize(
    "other, needle",
    [(_part([("W2A4", "ptq")], samples=1000), "samples"), (_part([("W2A4", "ptq")], gpu=None), "devices")],
)
def test_merge_refuses_mixed_protocols(other, needle):
    with pytest.raises(ValueError, match=needle):
        merge_parts([_part([("W2A4", "efficientdm")]), other])


def test_merge_refuses_two_training_seeds():
    other = {**_part([("W2A4", "ptq")]), "train_seed": 1}
    with pytest.raises(ValueError, match="train_seed"):
        merge_parts([_part([("W2A4", "efficientdm")]), other])


def test_merge_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no part"):
        merge_parts([])


def test_row_command_writes_its_own_part_without_docs():
    args = SimpleNamespace(
        samples=2000, steps=50, seeds=[0, 1], updates=300, batch=32, device="cuda", train_seed=3
    )
    cmd = row_command("W2A4", "mpqdm-omq", Path("/tmp/p.json"), args)
    assert cmd[1:3] == ["-m", "bench.mpq"]
    assert cmd[cmd.index("--out") + 1] == "/tmp/p.json" and "--no-docs" in cmd
    assert cmd[cmd.index("--seeds") + 1 : cmd.index("--seeds") + 3] == ["0", "1"]
    assert cmd[cmd.index("--device") + 1] == "cuda" and cmd[cmd.index("--train-seed") + 1] == "3"


def test_sections_and_figures_are_named_after_the_result_file():
    assert section_for(Path("bench/results/mpq.json")) == "mpq"
    assert section_for(Path("x/mpq_h100_2000.json")) == "mpq-h100-2000"
    assert figure_path("mpq", "W2A4").name == "mpq_samples_w2a4.png"
    assert figure_path("mpq-h100-2000", "W2A4").name == "mpq_h100_2000_samples_w2a4.png"
