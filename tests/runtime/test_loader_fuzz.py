"""Property tests of the run stage's loaders: a random or mutated manifest / device profile either
loads or raises the stage's one-line RuntimeStageError, never another exception."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgediff_runtime.devices import devices_dir, load_profile
from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.manifest import (
    Manifest,
    ModelSpec,
    OnnxSpec,
    ParitySpec,
    QuantSpec,
    Requirements,
    SamplerSpec,
    TensorSpec,
)

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def valid_manifest() -> dict:
    return Manifest(
        name="fuzz",
        created_by="tests",
        model=ModelSpec(
            family="unet",
            inputs=[
                TensorSpec("sample", "float32", ["batch", 1, 8, 8]),
                TensorSpec("timestep", "int64", ["batch"]),
            ],
            outputs=[TensorSpec("out", "float32", ["batch", 1, 8, 8])],
            sample_shape=[1, 8, 8],
        ),
        sampler=SamplerSpec(
            kind="ddim",
            num_train_timesteps=1000,
            beta_schedule="squaredcos_cap_v2",
            prediction_type="v_prediction",
            timestep_spacing="trailing",
            steps=4,
        ),
        onnx=OnnxSpec(opset=21, ir_version=10),
        quant=QuantSpec(recipe={"method": "ptq", "bits": "W8A8"}, precision={}),
        requirements=Requirements(onnxruntime_min="1.20"),
        parity=ParitySpec(tolerances={"latent_max_abs": 1e-4}),
    ).to_dict()


def _paths(d, prefix=()):
    """Every (path to a value) in a nested dict/list."""
    yield prefix
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _paths(v, (*prefix, i))


def _set(d, path, value):
    if not path:
        return value
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return d


def test_the_base_manifest_loads():
    assert Manifest.from_dict(valid_manifest()).name == "fuzz"


@SETTINGS
@given(data=st.data())
def test_mutated_manifest_loads_or_raises_one_line(data):
    base = valid_manifest()
    paths = list(_paths(base))
    doc = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        try:
            if data.draw(st.booleans()) and path:  # delete the key / item
                parent = doc
                for key in path[:-1]:
                    parent = parent[key]
                del parent[path[-1]]
            else:
                doc = _set(doc, path, data.draw(JSON))
        except (KeyError, IndexError, TypeError):
            continue  # the path vanished under an earlier mutation
    try:
        manifest = Manifest.from_dict(doc)
    except RuntimeStageError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        json.loads(manifest.to_json())  # what loads can be written back


@SETTINGS
@given(text=st.text(max_size=200) | JSON.map(json.dumps))
def test_random_manifest_text_loads_or_raises_one_line(text):
    try:
        Manifest.from_json(text)
    except RuntimeStageError as exc:
        assert "\n" not in str(exc)


BASE_PROFILE = (devices_dir() / "x86-cpu.toml").read_text()


def _toml_value(v) -> str:
    return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")


TOML_VALUES = (
    st.booleans()
    | st.integers(-(2**31), 2**31)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
    | st.lists(st.text(max_size=6), max_size=3)
    | st.lists(st.integers(0, 99), max_size=3)
)


@SETTINGS
@given(data=st.data())
def test_mutated_device_profile_loads_or_raises_one_line(tmp_path_factory, data):
    lines = [ln for ln in BASE_PROFILE.splitlines() if ln and not ln.startswith("#")]
    keys = [ln.split("=")[0].strip() for ln in lines]
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["drop", "value", "garbage", "truncate"]))
        if action == "drop":
            lines[i] = ""
        elif action == "value" and keys[i] != "name":
            lines[i] = f"{keys[i]} = {_toml_value(data.draw(TOML_VALUES))}"
        elif action == "garbage":
            lines[i] = data.draw(st.text(max_size=20))
        else:
            lines[i] = lines[i][: data.draw(st.integers(0, len(lines[i])))]
    folder = Path(tmp_path_factory.mktemp("profiles"))
    path = folder / "x86-cpu.toml"
    path.write_text("\n".join(lines) + "\n")
    try:
        profile = load_profile(path)
    except RuntimeStageError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert profile.name == "x86-cpu"
