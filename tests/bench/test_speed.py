"""`bench.speed` machinery end to end on a toy UNet and a toy class-conditional DiT (all rows, passes,
profile, report)."""

from __future__ import annotations

import math

import pytest

from bench.speed import DEFAULT_PASSES, NO_BINDING

pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_speed_bench_runs_on_tiny_models(tmp_path, monkeypatch):
    import bench._report as report
    from bench import speed

    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(report, "RESULTS_MD", tmp_path / "RESULTS.md")
    argv = [
        "--models",
        "tiny-unet",
        "tiny-dit",
        "--batches",
        "2",
        "--rounds",
        "1",
        "--e2e-rounds",
        "1",
        "--steps",
        "3",
    ]
    argv += [
        "--calib-samples",
        "1",
        "--psnr-samples",
        "2",
        "--threads",
        "1",
        "--work",
        str(tmp_path / "work"),
        "--profile",
    ]
    result = speed.main(argv)
    for name in ("tiny-unet", "tiny-dit"):
        _check_case(result["models"][name])
    unet = result["models"]["tiny-unet"]["profile_ms_per_op_type"]
    assert {"ort-fp32", "ort-qdq", "w8a8"} <= set(unet) and "InstanceNormalization" not in unet["w8a8"]
    assert result["load_average"]["start"] and result["load_average"]["end"]
    dit = result["models"]["tiny-dit"]
    assert dit["passes"]["w8a8+dynamic-linears"]["dynamic-linears"] > 0  # the DiT linears are rewritten
    assert (tmp_path / "results" / "speed.json").is_file()
    assert "tiny-dit" in (tmp_path / "RESULTS.md").read_text()


def _check_case(m: dict) -> None:
    rows = set(m["calls"][2])
    assert {"torch-fp32", "ort-fp32", "ort-qdq", "w8a8", "w4a8", "w8a8+all"} <= rows
    untimed = set(m["untimed_no_rewrite"])
    assert rows | untimed >= {f"w8a8+{p}" for p in DEFAULT_PASSES} | {"fp32+all"} and not rows & untimed
    for row in untimed:  # untimed only when no pass of the row changed a node
        assert not any(m["passes_untimed"][row].values())
    assert m["psnr_call_db"][2][NO_BINDING] == m["psnr_call_db"][2]["w8a8"]  # same graph, other call path
    for row in rows - {"torch-fp32", "ort-fp32", "ort-qdq", "w8a8", "w4a8", NO_BINDING}:  # pass rows: passes
        assert m["passes"][row] and (row.endswith("+all") or any(m["passes"][row].values()))
    for c in m["calls"][2].values():
        assert c["min_ms"] > 0 and c["min_ms"] <= c["median_ms"]
        assert math.isclose(c["speedup_vs_ort-fp32"], m["calls"][2]["ort-fp32"]["min_ms"] / c["min_ms"])
    quality = m["psnr_call_db"][2]
    assert quality["ort-fp32"] > 80 and quality.get("fp32+all", 100) > 80  # export (+ float passes) = PyTorch
    assert all(10 < quality[k] < 80 for k in ("ort-qdq", "w8a8", "w4a8"))  # quantized: close, not equal
    assert quality["w8a8+all"] > quality["w8a8"] - 1.0  # passes keep (dynamic-linears: refine) the outputs
    assert m["psnr_sample_db"]["ort-fp32"] > 40  # 3 DDIM steps of a random model amplify rounding
    ours = [k for k in rows if k == "w8a8" or k.startswith("w8a8+")]
    best = min(ours, key=lambda k: m["calls"][2][k]["min_ms"])
    assert set(m["end_to_end"][2]) == {"torch-fp32", "ort-fp32", "w8a8", best}
    assert set(m["psnr_sample_db"]) == set(m["calls"][2]) - {"torch-fp32", NO_BINDING}
    assert m["bytes"]["w4a8"] < m["bytes"]["w8a8"] < m["bytes"]["ort-fp32"]
