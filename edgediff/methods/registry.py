"""The quantization-method registry: name -> (typed config dataclass, run function).

A method is one module in `edgediff/methods/` that ends with `register(Method(...))`. Its config
dataclass declares the method's switches; the fields built with `cli_field` become options of
`edgediff quantize` (flag, help, choices), so the CLI has no hand-written table. `methods()`
imports every module of the package once, so registering is all a new method needs.

The run function takes the shared `QuantizeJob` (FP model, bit setting, recipe file, step-table
size, budget) and the user's switches as config field -> value, and returns
`(fake-quantized model, recipe, training record)`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgediff.bitspec import BitSetting
from edgediff.errors import EdgediffError

if TYPE_CHECKING:
    from torch import nn

    from edgediff.models.conditioning import Conditioning
    from edgediff.quant.recipe import Recipe
    from edgediff.train.loop import Checkpointing

#: How a config field appears on the command line.
KINDS = ("value", "choice", "switch_off", "switch_on", "on_off")


@dataclass(frozen=True)
class CliOption:
    """`flag` (`--trd-mode`), `help`, `kind` and, for `choice`, the `choices`.

    Kinds: `value` (`--lora-rank 8`, an int >= 1), `choice` (`--trd-mode window`), `switch_off`
    (`--no-trd` sets False), `switch_on` (`--trd-detach` sets True), `on_off` (`--omq on|off`,
    plus `--no-<name>` when `no_flag` is set).
    """

    flag: str
    help: str
    kind: str = "value"
    choices: tuple[str, ...] = ()
    no_flag: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EdgediffError(f"unknown CLI option kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.kind == "choice" and not self.choices:
            raise EdgediffError(f"CLI option {self.flag} of kind 'choice' needs choices")

    def value(self, raw: Any) -> Any:
        """The config value of the parsed argparse value (`on_off`: "on" -> True)."""
        return raw == "on" if self.kind == "on_off" else raw


def cli_field(default: Any, flag: str, help: str, kind: str = "value", **kw: Any) -> Any:
    """A dataclass field with a default that `edgediff quantize` exposes as `flag`."""
    return field(default=default, metadata={"cli": CliOption(flag, help, kind, **kw)})


@dataclass(frozen=True)
class QuantizeJob:
    """What every method gets: the FP model on its device, the scheduler config, the bit setting,
    a user recipe (None: the method's preset for `bits`), the per-step table size `num_steps`,
    the fine-tuning budget (`updates`, `batch`; None: the method's default), the seed, the
    number of calibration trajectories and their conditioning (None: unconditional) with the
    classifier-free guidance scale (None: unguided). A fine-tuned method checkpoints into
    `checkpoint_dir` (None: no checkpoints) every tenth of its updates and, with `resume`,
    continues from the checkpoint there (`checkpoints()`)."""

    fp: nn.Module
    scheduler_config: dict
    bits: BitSetting
    recipe: Recipe | None
    num_steps: int
    seed: int = 0
    updates: int | None = None
    batch: int | None = None
    symmetric_weights: bool = False
    progress: bool = True
    calib_samples: int = 64
    conditioning: Conditioning | None = None
    guidance_scale: float | None = None
    checkpoint_dir: Path | None = None
    resume: bool = False

    def checkpoints(self, default_updates: int = 1000) -> Checkpointing:
        """The fine-tuning checkpoint plan: every tenth of the updates into `checkpoint_dir`."""
        from edgediff.train.loop import Checkpointing

        if self.checkpoint_dir is None:
            return Checkpointing(resume=self.resume)
        every = max(1, (self.updates or default_updates) // 10)
        return Checkpointing(folder=self.checkpoint_dir, every=every, resume=self.resume)


@dataclass(frozen=True)
class Method:
    """A registered method. `config`: its dataclass (fields built with `cli_field` are CLI options);
    `run(job, options)`; `symmetric_weights`: whether `--symmetric-weights` applies;
    `conditioned_models`: whether it runs on conditioned models and classes other than
    `UNet2DModel` (MPQ-DM's decoder-feature losses are UNet2DModel-specific); `resumable`:
    whether it fine-tunes with checkpoints (`edgediff quantize --resume`)."""

    name: str
    config: type
    run: Callable[[QuantizeJob, dict], tuple[Any, Any, dict]]
    help: str
    symmetric_weights: bool = False
    conditioned_models: bool = True
    resumable: bool = True

    def __post_init__(self) -> None:
        if not is_dataclass(self.config):
            raise EdgediffError(f"method {self.name!r}: config must be a dataclass")

    def options(self) -> dict[str, CliOption]:
        """Config field name -> its CLI option, for the fields that have one."""
        return {f.name: f.metadata["cli"] for f in fields(self.config) if "cli" in f.metadata}

    def defaults(self) -> dict[str, Any]:
        """Config field name -> default, for the fields that have a CLI option."""
        out = {}
        for f in fields(self.config):
            if "cli" in f.metadata:
                out[f.name] = _default(f)
        return out


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


_REGISTRY: dict[str, Method] = {}
_SKIP = {"registry", "common"}


def register(method: Method) -> Method:
    """Add `method`; a name registered twice, or one flag meaning two fields, is an error."""
    if method.name in _REGISTRY and _REGISTRY[method.name] is not method:
        raise EdgediffError(f"quantization method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method
    try:
        cli_options()  # flag clashes surface at registration
    except EdgediffError:
        del _REGISTRY[method.name]
        raise
    return method


def methods() -> dict[str, Method]:
    """Every method of `edgediff/methods/` (imports the package's modules once), in name order."""
    import edgediff.methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in _SKIP:
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> Method:
    """The registered method `name` (one-line error listing the known ones)."""
    known = methods()
    if name not in known:
        raise EdgediffError(f"unknown method {name!r}: use one of {', '.join(known)}")
    return known[name]


def cli_options() -> dict[str, tuple[CliOption, tuple[str, ...]]]:
    """Config field -> (its CLI option, the methods that have it), over the registered methods."""
    out: dict[str, tuple[CliOption, tuple[str, ...]]] = {}
    for name, method in sorted(_REGISTRY.items()):
        for key, opt in method.options().items():
            if key in out and out[key][0] != opt:
                raise EdgediffError(
                    f"config field {key!r} has two CLI options ({out[key][0].flag}, {opt.flag}); "
                    "give both methods the same cli_field"
                )
            have = out.get(key, (opt, ()))[1]
            out[key] = (opt, (*have, name))
    flags: dict[str, str] = {}
    for key, (opt, _) in out.items():
        for flag in filter(None, (opt.flag, opt.no_flag)):
            if flags.setdefault(flag, key) != key:
                raise EdgediffError(f"flag {flag} is declared by two config fields ({flags[flag]}, {key})")
    return out


def check_options(method: Method, options: dict) -> None:
    """Every option must be a CLI field of `method`'s config (one-line error naming the misfit)."""
    mine = method.options()
    every = cli_options()
    for key in options:
        if key in mine:
            continue
        if key in every:
            opt, owners = every[key]
            raise EdgediffError(
                f"option {opt.flag} ({key!r}) applies to {'/'.join(owners)} only; "
                f"drop it for --method {method.name}"
            )
        raise EdgediffError(f"unknown option {key!r} for --method {method.name}")
