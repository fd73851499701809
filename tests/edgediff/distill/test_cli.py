"""`edgediff distill`: bad input is a one-line error with exit code 2."""

import pytest

from edgediff.distill.cli import budgets_from_args
from edgediff_export.cli import build_parser, main


def _run(argv: list[str]) -> int:
    return main(argv)


BASE = ["distill", "--model", "reference", "--method", "pd"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--from-steps", "12"], "--from-steps must be a power of two"),
        (["--to-steps", "0"], "--to-steps must be a power of two"),
        (["--from-steps", "x"], "--from-steps must be an integer"),
        (["--batch", "0"], "--batch must be at least 1"),
    ],
)
def test_bad_arguments_exit_2_with_the_option_named(extra, message, tmp_path, capsys):
    assert _run([*BASE, "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--from-steps", "4", "--to-steps", "8"], "must be smaller than --from-steps"),
        (["--from-steps", "8", "--to-steps", "8"], "must be smaller than --from-steps"),
        (
            ["--from-steps", "8", "--to-steps", "1", "--iterations", "5", "6"],
            "one value or one per stage (3 stages",
        ),
    ],
)
def test_inconsistent_arguments_are_one_line_errors(extra, message, tmp_path, capsys):
    assert _run([*BASE, "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "o").exists()


def test_missing_model_is_one_line(tmp_path, capsys):
    argv = ["distill", "--model", str(tmp_path / "nope"), "--method", "rdd", "--out", str(tmp_path / "o")]
    assert _run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model folder not found" in err[0]


def test_iterations_map_to_the_stages_first_stage_first():
    argv = [*BASE, "--out", "o", "--iterations", "10", "20", "30", "--from-steps", "8"]
    args = build_parser().parse_args(argv)
    budgets = budgets_from_args(args)
    assert {n: b.iterations for n, b in budgets.items()} == {4: 10, 2: 20, 1: 30}
    assert all(b.batch_size == 64 for b in budgets.values())


def test_rdd_term_weights_reach_the_config_and_tag_the_stage_folders(tmp_path, monkeypatch):
    import edgediff.distill.run as run_mod
    from edgediff.distill.run import plan_stages, rdd_variant

    seen = {}

    def fake_distill(*args, rdd, **kwargs):
        seen["rdd"] = rdd
        return [{"stage": "x", "num_steps": 1, "final_loss": 0.0, "wall_seconds": 0.0}]

    monkeypatch.setattr(run_mod, "distill", fake_distill)
    argv = ["distill", "--model", "reference", "--method", "rdd", "--out", str(tmp_path / "o")]
    assert _run([*argv, "--is-weight", "0", "--queue-weight", "0", "--cfd-weight", "2"]) == 0
    cfg = seen["rdd"]
    assert (cfg.weight_cfd, cfg.weight_is, cfg.weight_queue, cfg.weight_pd) == (2.0, 0.0, 0.0, 0.0)
    assert rdd_variant(cfg) == "cfd2+is0+m0"
    assert [s.name for s in plan_stages("rdd", 4, 1, 4, rdd_variant(cfg))] == [
        "rdd+cfd2+is0+m0-4to2",
        "rdd+cfd2+is0+m0-2to1",
    ]
    assert _run([*argv, "--queue-weight", "-1"]) == 2
    assert _run([*argv, "--cfd-weight", "0", "--is-weight", "0", "--queue-weight", "0"]) == 2
