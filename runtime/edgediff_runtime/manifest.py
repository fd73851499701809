"""The bundle manifest: ``manifest.json``'s dataclasses and JSON schema (docs/design.md section 3).

The runtime owns this contract; the exporter fills a :class:`Manifest` and writes it with
:func:`edgediff_runtime.bundle.write_manifest`. ``Manifest.from_json`` validates against the
schema below and the cross-field rules of :meth:`Manifest.check`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from edgediff_runtime._schema import schema_errors
from edgediff_runtime.components import PIPELINE_SCHEMA, PipelineSpec
from edgediff_runtime.conditioning import CONDITIONING_SCHEMA, LAYOUTS, ConditioningSpec
from edgediff_runtime.devices import DeviceProfile
from edgediff_runtime.errors import RuntimeStageError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
GOLDEN_PATH = "reference/golden.npz"
#: Files that only parity reads: a bundle copied to a device may leave them out.
REFERENCE_DIR = "reference/"
QUANT_PLACEMENTS = ("ort", "trt")
QUANT_REQUIRED = ("method", "label", "mean_weight_bits", "step_table", "placement", "weight_containers")

SAMPLER_KINDS = ("ddim", "ddpm", "dpmpp_2m", "euler", "x0_fewstep")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
DTYPES = ("float32", "float16", "int64", "int32", "bool")

TOLERANCE_KEYS = (
    "latent_max_abs",
    "latent_psnr_min",
    "final_max_abs",
    "final_psnr_min",
    "fp_max_abs",
    "fp_psnr_min",
)
DEFAULT_TOLERANCES: dict[str, float] = {
    "latent_max_abs": 1e-3,
    "latent_psnr_min": 60.0,
    "final_max_abs": 1e-3,
    "final_psnr_min": 60.0,
}


# --------------------------------------------------------------------------------------- schema
def _obj(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": props, "required": required}


_STR = {"type": "string"}
_OPT_STR = {"type": ["string", "null"]}
_VERSION = {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)*$"}
_TENSOR = _obj(
    {
        "name": {"type": "string", "minLength": 1},
        "dtype": {"enum": list(DTYPES)},
        "shape": {"type": "array", "items": {"type": ["integer", "string"]}},
    },
    ["name", "dtype", "shape"],
)
MANIFEST_SCHEMA: dict[str, Any] = _obj(
    {
        "schema_version": {"type": "integer", "minimum": 1},
        "name": {"type": "string", "minLength": 1},
        "created_by": _STR,
        "model": _obj(
            {
                "family": _STR,
                "file": {"type": "string", "minLength": 1},
                "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
                "outputs": {"type": "array", "minItems": 1, "items": _TENSOR},
                "sample_shape": {"type": "array", "minItems": 3, "items": {"type": "integer", "minimum": 1}},
                "layout": {"enum": list(LAYOUTS)},
                "learned_sigma": {"type": "boolean"},
                "sample_input": _STR,
                "timestep_input": _STR,
                "step_input": _OPT_STR,
                "output": _OPT_STR,
            },
            ["family", "inputs", "outputs", "sample_shape"],
        ),
        "sampler": _obj(
            {
                "kind": {"enum": list(SAMPLER_KINDS)},
                "num_train_timesteps": {"type": "integer", "minimum": 1},
                "beta_schedule": {"enum": list(BETA_SCHEDULES)},
                "beta_start": {"type": "number", "exclusiveMinimum": 0},
                "beta_end": {"type": "number", "exclusiveMinimum": 0},
                "prediction_type": {"enum": list(PREDICTION_TYPES)},
                "timestep_spacing": {"enum": list(SPACINGS)},
                "steps": {"type": "integer", "minimum": 1},
                "eta": {"type": "number", "minimum": 0},
                "clip_sample": {"type": "boolean"},
                "clip_sample_range": {"type": "number", "exclusiveMinimum": 0},
                "set_alpha_to_one": {"type": "boolean"},
                "steps_offset": {"type": "integer", "minimum": 0},
                "guidance_scale": {"type": ["number", "null"]},
                "variance_type": {"enum": ["fixed_small", "fixed_large"]},
            },
            ["kind"],
        ),
        "quant": _obj(
            {
                "method": {"type": "string", "minLength": 1},
                "label": {"type": "string", "minLength": 1},
                "mean_weight_bits": {"type": "number", "exclusiveMinimum": 0},
                "step_table": {"type": ["integer", "null"], "minimum": 1},
                "placement": {"enum": list(QUANT_PLACEMENTS)},
                "weight_containers": {"type": "object"},
                "recipe": {"type": "object"},
                "precision": {"type": "object"},
            },
            list(QUANT_REQUIRED),
        ),
        "onnx": _obj(
            {
                "opset": {"type": "integer", "minimum": 1},
                "ir_version": {"type": "integer", "minimum": 1},
                "custom_ops": {
                    "type": "array",
                    "items": _obj(
                        {"name": _STR, "domain": _STR, "plugin_namespace": _STR, "plugin_version": _STR},
                        ["name", "domain"],
                    ),
                },
                "ort_disabled_optimizers": {"type": "array", "items": _STR},
            },
            ["opset", "ir_version"],
        ),
        "requirements": _obj(
            {
                "onnxruntime_min": _VERSION,
                "tensorrt_min": {"type": ["string", "null"], "pattern": "^[0-9]+(\\.[0-9]+)*$"},
            },
            [],
        ),
        "device": {"type": ["object", "null"]},
        "files": {"type": "object"},
        "parity": _obj(
            {
                "tolerances": {"type": "object"},
                "report": {"type": ["object", "null"]},
                "tolerance_source": _STR,
                "bounds": {"type": ["object", "null"]},
            },
            [],
        ),
        "conditioning": CONDITIONING_SCHEMA,
        "pipeline": PIPELINE_SCHEMA,
    },
    ["schema_version", "name", "model", "sampler", "onnx", "quant"],
)


# ---------------------------------------------------------------------------------- dataclasses
@dataclass
class TensorSpec:
    """One graph input/output: symbolic dims are strings (``"batch"``)."""

    name: str
    dtype: str
    shape: list[int | str]


@dataclass
class ModelSpec:
    """What the sampler feeds the graph: ``sample_input``, ``timestep_input``, optional step index.

    ``layout`` is ``BCHW`` (``sample_shape`` [C, H, W]) or ``BCFHW`` (video, [C, F, H, W]);
    ``learned_sigma``: the output stacks the prediction and a variance over channels, the
    sampler uses the first ``sample_shape[0]`` channels.
    """

    family: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    sample_shape: list[int]
    file: str = "model.onnx"
    sample_input: str = "sample"
    timestep_input: str = "timestep"
    step_input: str | None = None
    output: str | None = None
    layout: str = "BCHW"
    learned_sigma: bool = False

    def input(self, name: str) -> TensorSpec:
        """The input spec called ``name``."""
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def output_name(self) -> str:
        """The output the sampler reads (``output`` or the first output)."""
        return self.output or self.outputs[0].name


@dataclass
class SamplerSpec:
    """Sampler and noise schedule, in diffusers' config vocabulary (``*Scheduler.from_config``)."""

    kind: str
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps: int = 50
    eta: float = 0.0
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    guidance_scale: float | None = None
    variance_type: str = "fixed_small"


@dataclass
class CustomOp:
    """A custom-domain ONNX node and the TensorRT plugin that implements it."""

    name: str
    domain: str
    plugin_namespace: str = ""
    plugin_version: str = "1"


@dataclass
class OnnxSpec:
    """Opset / IR version of ``model.onnx``, the custom ops it uses, and the ONNX Runtime graph
    optimizers that must be off for it (e.g. ``ConstantFolding`` with 2-bit weights)."""

    opset: int
    ir_version: int
    custom_ops: list[CustomOp] = field(default_factory=list)
    ort_disabled_optimizers: list[str] = field(default_factory=list)


@dataclass
class QuantSpec:
    """What the model was quantized with (docs/runtime.md, "The quant section").

    ``method`` (``ptq``, ``mpqdmv2``, ... or ``fp``), ``label`` (``W4A8``, derived from the recipe;
    ``FP32``/``FP16`` for an FP export), ``mean_weight_bits`` (stored bits per weight over every
    linear/conv layer, FP layers at their stored width and residual/LoRA branches included),
    ``step_table`` (entries of the per-step activation-scale tables, i.e. the only step count the
    graph can run; None when the scales are static), ``placement`` (``ort``/``trt``),
    ``weight_containers`` (ONNX weight container -> initializer count), plus free-form
    ``recipe`` details and the per-node ``precision`` table (``{node name: "int8" | ...}``).
    The defaults describe an FP32 model with static graph inputs.
    """

    recipe: dict[str, Any] = field(default_factory=dict)
    precision: dict[str, Any] = field(default_factory=dict)
    method: str = "fp"
    label: str = "FP32"
    mean_weight_bits: float = 32.0
    step_table: int | None = None
    placement: str = "ort"
    weight_containers: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """``mpqdmv2 W2A4, 2.31 mean weight bits, per-step scales for 20 steps, placement ort``."""
        steps = f"per-step scales for {self.step_table} steps" if self.step_table else "static scales"
        bits = f"{self.mean_weight_bits:.2f} mean weight bits"
        return f"{self.method} {self.label}, {bits}, {steps}, placement {self.placement}"


@dataclass
class Requirements:
    """Minimum runtime versions the bundle needs."""

    onnxruntime_min: str = "1.20"
    tensorrt_min: str | None = None


@dataclass
class ParitySpec:
    """Level-2/3 tolerances (docs/design.md section 4), the
    export-time report and how tolerances were derived."""

    tolerances: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    report: dict[str, Any] | None = None
    tolerance_source: str = "runtime defaults (no derivation recorded by the exporter)"
    #: Sanity bound of the export-time error for the bundle's precision, and whether the measured
    #: error broke it (then the stored tolerances are the bound, so parity fails on any host).
    bounds: dict[str, Any] | None = None


@dataclass
class Manifest:
    """``manifest.json``: the versioned artifact contract (docs/design.md section 3)."""

    name: str
    model: ModelSpec
    sampler: SamplerSpec
    onnx: OnnxSpec
    created_by: str = "edgediff"
    quant: QuantSpec = field(default_factory=QuantSpec)
    requirements: Requirements = field(default_factory=Requirements)
    device: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    parity: ParitySpec = field(default_factory=ParitySpec)
    schema_version: int = SCHEMA_VERSION
    #: None: an unconditional model (and every manifest written before conditioning existed).
    conditioning: ConditioningSpec | None = None
    #: None: the bundle is the denoiser alone (every manifest written before pipelines existed);
    #: else a prompt-to-image bundle's components (edgediff_runtime.components).
    pipeline: PipelineSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict, ``schema_version`` first."""
        data = dataclasses.asdict(self)
        return {"schema_version": data.pop("schema_version"), **data}

    def to_json(self) -> str:
        """Indented JSON text (standard JSON: no NaN/Infinity)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest.json") -> Manifest:
        """Validate and build; a newer ``schema_version`` is refused with an upgrade hint."""
        if not isinstance(data, dict):
            raise RuntimeStageError(
                f"{source}: expected a JSON object at the top level; re-export the bundle"
            )
        version = data.get("schema_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
            raise RuntimeStageError(
                f"bundle schema {version} is newer than this runtime "
                f"supports ({SCHEMA_VERSION}); upgrade edgediff"
            )
        quant = data.get("quant")
        if not isinstance(quant, dict) or "method" not in quant:
            raise RuntimeStageError(
                f"{source}: no typed quant section (method, bits, step table): the bundle was written "
                "by an older exporter; re-export it with 'edgediff export onnx'"
            )
        errors = schema_errors(data, MANIFEST_SCHEMA)
        if errors:
            more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
            raise RuntimeStageError(f"{source}: {errors[0]}{more}; re-export the bundle")
        model = dict(data["model"])
        model["inputs"] = [TensorSpec(**t) for t in model["inputs"]]
        model["outputs"] = [TensorSpec(**t) for t in model["outputs"]]
        onnx = dict(data["onnx"])
        onnx["custom_ops"] = [CustomOp(**c) for c in onnx.get("custom_ops", [])]
        manifest = cls(
            schema_version=data["schema_version"],
            name=data["name"],
            created_by=data.get("created_by", "edgediff"),
            model=ModelSpec(**model),
            sampler=SamplerSpec(**data["sampler"]),
            onnx=OnnxSpec(**onnx),
            quant=QuantSpec(**data.get("quant", {})),
            requirements=Requirements(**data.get("requirements", {})),
            device=data.get("device"),
            files=dict(data.get("files", {})),
            parity=ParitySpec(**data.get("parity", {})),
            conditioning=(
                ConditioningSpec.from_dict(data["conditioning"]) if data.get("conditioning") else None
            ),
            pipeline=PipelineSpec.from_dict(data["pipeline"]) if data.get("pipeline") else None,
        )
        manifest.check(source)
        return manifest

    @classmethod
    def from_json(cls, text: str, source: str = "manifest.json") -> Manifest:
        """Parse JSON text; syntax errors name the line and column."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RuntimeStageError(
                f"{source} is not valid JSON (line {exc.lineno}, column "
                f"{exc.colno}): {exc.msg}; re-export the bundle"
            ) from None
        return cls.from_dict(data, source)

    def check(self, source: str = "manifest") -> None:
        """Cross-field rules the JSON schema cannot express."""

        def bad(problem: str) -> RuntimeStageError:
            return RuntimeStageError(f"{source}: {problem}; re-export the bundle")

        names = [t.name for t in self.model.inputs]
        for role in ("sample_input", "timestep_input", "step_input"):
            name = getattr(self.model, role)
            if name is not None and name not in names:
                raise bad(f"model.{role} '{name}' is not one of the graph inputs {names}")
        if self.model.output is not None and self.model.output not in [t.name for t in self.model.outputs]:
            raise bad(f"model.output '{self.model.output}' is not one of the graph outputs")
        if self.model.step_input is not None and self.model.input(self.model.step_input).dtype != "int64":
            raise bad(f"model.step_input '{self.model.step_input}' must be int64")
        rank = 4 if self.model.layout == "BCFHW" else 3
        if len(self.model.sample_shape) != rank:
            dims = "[C, F, H, W]" if rank == 4 else "[C, H, W]"
            raise bad(
                f"model.sample_shape must be {dims} for layout {self.model.layout}, "
                f"got {self.model.sample_shape}"
            )
        cond = self.conditioning
        if cond is not None:
            if cond.input not in names:
                raise bad(f"conditioning.input '{cond.input}' is not one of the graph inputs {names}")
            missing = [f for f in cond.files() if f not in self.files] if self.files else []
            if missing:
                raise bad(f"conditioning names {missing[0]}, which the bundle does not list")
        if self.pipeline is not None:
            width = cond.shape[-1] if cond is not None and cond.kind == "embeddings" else None
            problems = self.pipeline.problems(self.model.file, width)
            if problems:
                raise bad(problems[0])
            unlisted = [c.file for c in self.pipeline.components if self.files and c.file not in self.files]
            if unlisted:
                raise bad(f"pipeline component {unlisted[0]} is not among the bundle's files")
        if self.sampler.steps > self.sampler.num_train_timesteps:
            raise bad("sampler.steps exceeds sampler.num_train_timesteps")
        table = self.quant.step_table
        if table is not None and self.model.step_input is None:
            raise bad(f"quant.step_table is {table} but the graph has no step input (model.step_input)")
        if table is not None and self.sampler.steps != table:
            raise bad(f"sampler.steps {self.sampler.steps} differs from quant.step_table {table}")
        for key, count in self.quant.weight_containers.items():
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise bad(f"quant.weight_containers.{key} must be a count >= 0, got {count!r}")
        for key, value in self.parity.tolerances.items():
            if key not in TOLERANCE_KEYS:
                raise bad(f"parity.tolerances.{key} is unknown (known: {', '.join(TOLERANCE_KEYS)})")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise bad(f"parity.tolerances.{key} must be a number, got {value!r}")
        for rel in self.files:
            pure = PurePosixPath(rel)
            if pure.is_absolute() or ".." in pure.parts or rel == MANIFEST_NAME:
                raise bad(f"files lists '{rel}', which is not a plain path inside the bundle")
        if self.device is not None:
            DeviceProfile.from_dict(self.device, source=source, path="device", fix="re-export the bundle")

    def allowed_steps(self) -> int | None:
        """The only sampler step count the graph can run (its per-step table size), or None: any."""
        return self.quant.step_table

    def check_steps(self, steps: int) -> None:
        """Refuse a step count the per-step activation-scale tables were not calibrated for."""
        table = self.allowed_steps()
        if table is not None and steps != table:
            raise RuntimeStageError(
                f"bundle {self.name} has per-step activation scales for exactly {table} steps, "
                f"not {steps}; pass --steps {table} (or leave --steps out)"
            )

    def profile(self) -> DeviceProfile | None:
        """The embedded target device profile, if any."""
        return None if self.device is None else DeviceProfile.from_dict(self.device, "manifest device")
