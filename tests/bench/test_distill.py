"""bench.distill: the target orderings, per seed and beyond the seed spread, for RDD and its variants."""

from bench.distill import orderings


def _row(method: str, steps: int, fds: list[float]) -> dict:
    return {"method": method, "steps": steps, "per_seed": [{"seed": i, "fd": f} for i, f in enumerate(fds)]}


def test_orderings_cover_rdd_and_labelled_variants():
    result = {
        "rows": [
            _row("teacher-ddim", 4, [40.0, 50.0]),
            _row("pd", 1, [16.0, 14.0]),
            _row("pd", 2, [14.0, 12.0]),
            _row("rdd", 1, [26.0, 26.0]),
            _row("rdd", 2, [13.0, 11.0]),
            _row("rdd", 4, [20.0, 21.0]),
            _row("rdd+pd1", 1, [13.5, 13.9]),
        ]
    }
    o = orderings(result)
    assert o["rdd_below_pd_at_1"]["every_seed"] is False
    assert o["rdd_below_pd_at_2"]["every_seed"] is True
    assert o["rdd_below_pd_at_2"]["beyond_seed_spread"] is False  # max RDD 13 > min PD 12
    assert o["rdd+pd1_below_pd_at_1"]["every_seed"] is True
    assert o["rdd+pd1_below_pd_at_1"]["beyond_seed_spread"] is True  # 13.9 < 14
    assert "rdd+pd1_below_pd_at_2" not in o  # no 2-step row for the variant
    assert o["rdd4_vs_ddim4"]["ratio_of_means"] == 45.0 / 20.5


def test_rcfd_row_is_rdd_with_only_the_cfd_term_in_its_own_stage_folders(tmp_path):
    from bench.distill import RCFD, student_folder, variant_configs
    from edgediff.distill.rdd import RDDConfig
    from edgediff.distill.run import rdd_variant

    assert (RCFD.weight_cfd, RCFD.weight_is, RCFD.weight_queue, RCFD.weight_pd) == (1.0, 0.0, 0.0, 0.0)
    assert variant_configs([1.0], True) == [RDDConfig(weight_pd=1.0), RCFD]
    method = f"rdd+{rdd_variant(RCFD)}"
    assert method == "rdd+is0+m0"
    assert student_folder(tmp_path, method, 2, 8).name == "rdd+is0+m0-4to2"
    assert student_folder(tmp_path, method, 8, 8).name == "pd-16to8"  # the shared PD stage
