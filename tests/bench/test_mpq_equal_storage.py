import pytest

from bench.mpq import closest_in_storage, equal_storage_rows


def _row(name, bits, storage, fds):
    per_seed = [{"fd": f, "paired_psnr": 30.0} for f in fds]
    return {
        "row": name,
        "bits": bits,
        "storage": {"fp16": {"bits_per_weight": storage}},
        "per_seed": per_seed,
    }


def test_equal_storage_sorts_by_storage_and_picks_the_nearest_setting_at_the_anchor_activation_bits():
    rows = [
        _row("mpqdmv2-full", "W2A4", 5.0, [12.0, 14.0]),
        _row("efficientdm", "W8A4", 6.5, [11.0, 11.0]),
        _row("efficientdm", "W4A4", 4.0, [13.0, 13.0]),
        _row("efficientdm", "W3A6", 4.9, [16.0, 16.0]),  # nearer in storage, other activation bits
        _row("ptq", "W4A4", 5.0, [40.0, 40.0]),  # not one of the compared methods
    ]
    entries = equal_storage_rows(rows)
    assert [(e["method"], e["bits"]) for e in entries] == [
        ("efficientdm", "W4A4"),
        ("efficientdm", "W3A6"),
        ("mpqdmv2-full", "W2A4"),
        ("efficientdm", "W8A4"),
    ]
    anchor = entries[2]
    assert anchor["fd_mean"] == pytest.approx(13.0)
    closest = closest_in_storage(entries, anchor)
    assert set(closest) == {"efficientdm"}
    assert closest["efficientdm"]["bits"] == "W4A4"  # |4.0 - 5.0| < |6.5 - 5.0|; W3A6 is excluded
