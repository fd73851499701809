"""The method registry: every method registers itself; the quantize CLI is built from the configs."""

from dataclasses import dataclass

import pytest

from edgediff.errors import EdgediffError
from edgediff.methods import registry
from edgediff.methods.registry import Method, check_options, cli_field, cli_options, get_method, methods
from edgediff_export.cli import build_parser


def test_the_methods_are_registered_with_their_configs():
    from edgediff.methods.efficientdm import EfficientDMConfig
    from edgediff.methods.mpqdm import MPQDMConfig
    from edgediff.methods.mpqdmv2 import MPQDMv2Config
    from edgediff.methods.ptq import PTQConfig
    from edgediff.methods.qvdit import QVDiTConfig

    known = methods()
    assert list(known) == ["efficientdm", "mpqdm", "mpqdmv2", "ptq", "qvdit"]
    configs = {n: m.config for n, m in known.items()}
    assert configs == {
        "ptq": PTQConfig,
        "efficientdm": EfficientDMConfig,
        "mpqdm": MPQDMConfig,
        "mpqdmv2": MPQDMv2Config,
        "qvdit": QVDiTConfig,
    }
    assert known["ptq"].symmetric_weights and not known["mpqdm"].symmetric_weights
    # the option defaults are the config defaults (mpqdmv2 turns the OMQ search off)
    assert known["mpqdm"].defaults()["omq"] is True and known["mpqdmv2"].defaults()["omq"] is False
    opts = cli_options()
    assert opts["residual"][0].flag == "--residual" and opts["residual"][1] == ("mpqdmv2",)
    assert opts["trd"][1] == ("mpqdm", "mpqdmv2") and opts["additive_rank"][0].flag == "--lora-rank"


def test_unknown_method_and_misplaced_option_are_one_line_errors():
    with pytest.raises(EdgediffError, match="unknown method 'gptq': use one of efficientdm, mpqdm"):
        get_method("gptq")
    with pytest.raises(EdgediffError, match=r"option --residual \('residual'\) applies to mpqdmv2 only"):
        check_options(get_method("mpqdm"), {"residual": False})
    with pytest.raises(EdgediffError, match="unknown option 'wings'"):
        check_options(get_method("mpqdm"), {"wings": 2})
    check_options(get_method("mpqdmv2"), {"residual": False, "trd": False})  # both are mpqdmv2's


@dataclass(frozen=True)
class ToyConfig:
    """A method config as a new method file would declare it."""

    sparsity: str = cli_field("none", "--sparsity", "toy sparsity pattern", "choice", choices=("none", "2:4"))
    rounds: int = cli_field(1, "--rounds", "toy rounds")
    hidden: float = 0.5  # no cli_field: not a CLI option


def _toy_run(job, options):
    raise AssertionError("not run in this test")


def test_a_registered_method_gets_its_cli_options(monkeypatch):
    methods()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register(Method("toy", ToyConfig, _toy_run, help="a toy method"))
    args = build_parser().parse_args(
        ["quantize", "--model", "m", "--bits", "W4A8", "--out", "o", "--method", "toy", "--sparsity", "2:4"]
        + ["--rounds", "3"]
    )
    from edgediff.cli import quantize_options

    assert args.method == "toy" and quantize_options(args) == {"sparsity": "2:4", "rounds": 3}
    with pytest.raises(EdgediffError, match=r"--rounds \('rounds'\) applies to toy only"):
        check_options(get_method("ptq"), {"rounds": 3})


def test_two_fields_claiming_one_flag_are_refused(monkeypatch):
    methods()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @dataclass(frozen=True)
    class Clash:
        other: bool = cli_field(False, "--no-trd", "claims mpqdm's flag", "switch_on")

    with pytest.raises(EdgediffError, match="flag --no-trd is declared by two config fields"):
        registry.register(Method("clash", Clash, _toy_run, help="clash"))


def test_the_job_carries_the_checkpoint_plan_and_only_fine_tuned_methods_resume(tmp_path):
    from dataclasses import replace

    from edgediff.methods.registry import QuantizeJob

    job = QuantizeJob(fp=None, scheduler_config={}, bits=None, recipe=None, num_steps=5, updates=250)
    assert job.checkpoints().folder is None and job.checkpoints().every == 0  # no folder: no checkpoints
    plan = replace(job, checkpoint_dir=tmp_path, resume=True).checkpoints()
    assert (plan.folder, plan.every, plan.resume) == (tmp_path, 25, True)  # every tenth of 250 updates
    default = replace(job, updates=None, checkpoint_dir=tmp_path).checkpoints()
    assert (default.every, default.resume) == (100, False)  # a tenth of the 1000 default
    assert {n for n, m in methods().items() if not m.resumable} == {"ptq"}
