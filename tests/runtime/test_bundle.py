"""The bundle contract (docs/design.md section 3): manifest schema, checksums, golden references."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from edgediff_runtime.bundle import load_bundle, version_at_least, write_manifest
from edgediff_runtime.errors import RuntimeStageError
from edgediff_runtime.golden import load_golden, save_golden
from edgediff_runtime.manifest import (
    GOLDEN_PATH,
    SCHEMA_VERSION,
    Manifest,
    ModelSpec,
    OnnxSpec,
    SamplerSpec,
    TensorSpec,
)
from tests.runtime.conftest import STEPS


def _manifest(**kw) -> Manifest:
    model = ModelSpec(
        family="toy",
        inputs=[
            TensorSpec("sample", "float32", ["batch", 1, 4, 4]),
            TensorSpec("timestep", "int64", ["batch"]),
        ],
        outputs=[TensorSpec("out", "float32", ["batch", 1, 4, 4])],
        sample_shape=[1, 4, 4],
    )
    return Manifest(
        name="toy",
        model=model,
        sampler=SamplerSpec(kind="ddim", steps=4),
        onnx=OnnxSpec(opset=20, ir_version=10),
        **kw,
    )


def _toy_onnx(path: Path, opset: int = 20, output: str = "out") -> None:
    """A model.onnx that matches ``_manifest()``: inputs sample/timestep, output ``out`` = sample."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["sample"], [output])],
        "toy",
        [
            helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch", 1, 4, 4]),
            helper.make_tensor_value_info("timestep", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", 1, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    onnx.save(model, str(path))


def _rewrite(bundle: Path, edit) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    edit(data)
    (bundle / "manifest.json").write_text(json.dumps(data))


def test_manifest_json_round_trip():
    m = _manifest(files={"model.onnx": "ab" * 32})
    text = m.to_json()
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION == 1
    assert list(json.loads(text))[0] == "schema_version"
    assert Manifest.from_json(text) == m


def test_newer_schema_is_refused_with_upgrade_hint():
    data = _manifest().to_dict()
    data["schema_version"] = 2
    data["something_new"] = {"x": 1}
    with pytest.raises(RuntimeStageError) as err:
        Manifest.from_dict(data)
    assert str(err.value) == "bundle schema 2 is newer than this runtime supports (1); upgrade edgediff"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d["sampler"].update(kind="plms"), "sampler.kind: 'plms' is not one of"),
        (lambda d: d["sampler"].update(steps=0), "sampler.steps: 0 is below the minimum 1"),
        (lambda d: d.update(colour="red"), "colour: unknown field"),
        (lambda d: d.pop("onnx"), "missing required field 'onnx'"),
        (lambda d: d["model"].update(step_input="step"), "model.step_input 'step' is not one of the graph"),
        (lambda d: d["parity"]["tolerances"].update(latent_max=1.0), "parity.tolerances.latent_max is unkn"),
        (lambda d: d["files"].update({"../etc/passwd": "00"}), "not a plain path inside the bundle"),
        (lambda d: d["model"]["inputs"][0].update(dtype="complex64"), r"model.inputs\[0\].dtype"),
        (lambda d: d.update(device={"name": "x"}), "missing required field 'description'"),
    ],
)
def test_manifest_validation_errors(edit, expected):
    data = _manifest().to_dict()
    edit(data)
    with pytest.raises(RuntimeStageError, match=expected) as err:
        Manifest.from_dict(data, source="manifest.json of bundle toy")
    assert str(err.value).startswith("manifest.json of bundle toy")
    assert "re-export" in str(err.value)


def test_invalid_json_names_line_and_column():
    expected = r"manifest.json is not valid JSON \(line 2, column 10\): Expecting .:. delimiter"
    with pytest.raises(RuntimeStageError, match=expected):
        Manifest.from_json('{\n  "name" 1}')


def test_load_bundle_verifies_fixture(tiny_bundle: Path):
    b = load_bundle(tiny_bundle)
    assert b.name == "tiny.edgediff"
    assert set(b.manifest.files) == {"model.onnx", GOLDEN_PATH}
    for rel, digest in b.manifest.files.items():
        assert hashlib.sha256((tiny_bundle / rel).read_bytes()).hexdigest() == digest
    assert b.manifest.profile().name == "x86-cpu"
    assert b.manifest.model.step_input == "step"
    assert b.manifest.model.input("timestep").dtype == "int64"
    assert b.manifest.model.input("sample").shape[0] == "batch"


def test_tampered_byte_is_a_checksum_error(bundle_copy: Path):
    model = bundle_copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(RuntimeStageError) as err:
        load_bundle(bundle_copy)
    assert str(err.value) == (
        "checksum mismatch for model.onnx: the file was modified or truncated; re-export the bundle"
    )
    assert load_bundle(bundle_copy, verify=False).name == "tiny.edgediff"  # explicit opt-out only


def test_truncated_golden_is_a_checksum_error(bundle_copy: Path):
    golden = bundle_copy / GOLDEN_PATH
    golden.write_bytes(golden.read_bytes()[:100])
    with pytest.raises(RuntimeStageError, match=f"checksum mismatch for {GOLDEN_PATH}"):
        load_bundle(bundle_copy)


def test_missing_file_is_incomplete(bundle_copy: Path):
    (bundle_copy / "model.onnx").unlink()
    with pytest.raises(RuntimeStageError) as err:
        load_bundle(bundle_copy)
    assert str(err.value) == "bundle tiny.edgediff is incomplete: model.onnx is missing; re-export it"


def test_missing_folder_manifest_and_not_a_folder(tmp_path: Path, bundle_copy: Path):
    with pytest.raises(RuntimeStageError, match="does not exist; check the path"):
        load_bundle(tmp_path / "nope.edgediff")
    (tmp_path / "file.edgediff").write_text("x")
    with pytest.raises(RuntimeStageError, match="is not a folder"):
        load_bundle(tmp_path / "file.edgediff")
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(RuntimeStageError, match="not an edgediff bundle: manifest.json is missing"):
        load_bundle(bundle_copy)


def test_manifest_without_model_checksum_is_refused(bundle_copy: Path):
    _rewrite(bundle_copy, lambda d: d["files"].pop("model.onnx"))
    with pytest.raises(RuntimeStageError, match="has no checksum for model.onnx"):
        load_bundle(bundle_copy)


def test_onnxruntime_too_old(bundle_copy: Path):
    _rewrite(bundle_copy, lambda d: d["requirements"].update(onnxruntime_min="99.1"))
    with pytest.raises(RuntimeStageError, match=r"needs onnxruntime >= 99.1 but 1\.\d+.* is installed"):
        load_bundle(bundle_copy)
    assert load_bundle(bundle_copy, backend=None).manifest.requirements.onnxruntime_min == "99.1"


@pytest.mark.parametrize(
    ("installed", "minimum", "ok"),
    [
        ("1.32.0", "1.20", True),
        ("1.20", "1.20.0", True),
        ("1.9.1", "1.20", False),
        ("10.3.0.26", "10.3", True),
        ("1.20.0rc1", "1.20", True),
        ("8.5.2", "10.3", False),
    ],
)
def test_version_at_least(installed, minimum, ok):
    assert version_at_least(installed, minimum) is ok


def test_write_manifest_hashes_all_files_but_manifest_and_hidden(tmp_path: Path):
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "trt").mkdir()
    (tmp_path / "trt" / "build.sh").write_text("trtexec ...")
    (tmp_path / ".model.onnx.tmp-1").write_bytes(b"junk")
    (tmp_path / "manifest.json").write_text("{}")
    written = write_manifest(tmp_path, _manifest())
    assert written.files == {
        "model.onnx": hashlib.sha256(b"onnx").hexdigest(),
        "trt/build.sh": hashlib.sha256(b"trtexec ...").hexdigest(),
    }
    assert Manifest.from_json((tmp_path / "manifest.json").read_text()) == written


def test_write_manifest_needs_the_model(tmp_path: Path):
    with pytest.raises(RuntimeStageError, match="has no model.onnx; write the model first"):
        write_manifest(tmp_path, _manifest())


def test_golden_round_trip_and_shape_checks(tmp_path: Path):
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    lat = rng.standard_normal((3, 2, 1, 4, 4)).astype(np.float32)
    path = save_golden(tmp_path, noise=noise, timesteps=np.array([999, 666, 333]), latents=lat, final=lat[-1])
    assert path == tmp_path / GOLDEN_PATH
    _toy_onnx(tmp_path / "model.onnx")
    write_manifest(tmp_path, _manifest())
    g = load_golden(load_bundle(tmp_path, backend=None))
    assert g.timesteps.dtype == np.int64 and g.steps == 3
    np.testing.assert_array_equal(g.latents, lat)
    assert g.fp_final is None and g.step_noise is None
    with pytest.raises(RuntimeStageError, match=r"latents must have shape \[2, 2, 1, 4, 4\]"):
        save_golden(tmp_path, noise=noise, timesteps=np.array([9, 5]), latents=lat, final=lat[-1])


def test_load_golden_absent(tmp_path: Path):
    _toy_onnx(tmp_path / "model.onnx")
    write_manifest(tmp_path, _manifest())
    with pytest.raises(RuntimeStageError, match=f"has no {GOLDEN_PATH}; re-export it with golden references"):
        load_golden(load_bundle(tmp_path, backend=None))


def test_fixture_golden_matches_manifest(tiny_bundle: Path):
    b = load_bundle(tiny_bundle)
    g = load_golden(b)
    assert g.steps == STEPS == b.manifest.sampler.steps
    assert g.latents.shape == (STEPS, *g.noise.shape)
    assert g.fp_final is not None
    assert dataclasses.asdict(b.manifest.sampler)["prediction_type"] == "v_prediction"


@pytest.mark.parametrize(
    ("opset", "output", "needle"),
    [
        (19, "out", "manifest says opset 20 but model.onnx imports opset 19"),
        (20, "eps", "manifest lists graph outputs ['out'] but model.onnx has ['eps']"),
    ],
)
def test_manifest_contradicting_the_graph_is_one_line(tmp_path: Path, opset, output, needle):
    _toy_onnx(tmp_path / "model.onnx", opset=opset, output=output)
    write_manifest(tmp_path, _manifest())
    with pytest.raises(RuntimeStageError) as err:
        load_bundle(tmp_path, backend=None)
    assert needle in str(err.value) and "re-export the bundle" in str(err.value)
    assert "\n" not in str(err.value)


def test_not_onnx_is_one_line(tmp_path: Path):
    (tmp_path / "model.onnx").write_bytes(b"\xff\xff\xff")
    write_manifest(tmp_path, _manifest())
    with pytest.raises(RuntimeStageError, match="cannot read model.onnx of bundle .* as ONNX"):
        load_bundle(tmp_path, backend=None)


def test_onnx_header_reads_what_onnx_wrote(tiny_bundle: Path):
    import onnx

    from edgediff_runtime.onnx_header import read_onnx_header

    proto = onnx.load(str(tiny_bundle / "model.onnx"))
    header = read_onnx_header(tiny_bundle / "model.onnx")
    assert header.inputs == [v.name for v in proto.graph.input]
    assert header.outputs == [v.name for v in proto.graph.output]
    assert header.opsets == {o.domain: o.version for o in proto.opset_import}
    assert header.ir_version == proto.ir_version and header.initializers == len(proto.graph.initializer) > 0


def test_old_bundle_without_typed_quant_section_says_re_export():
    data = _manifest().to_dict()
    data["quant"] = {"recipe": {"method": "ptq", "bits": "W8A8"}, "precision": {}}
    needle = "no typed quant section .* re-export it with 'edgediff export onnx'"
    with pytest.raises(RuntimeStageError, match=needle):
        Manifest.from_dict(data)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda q: q.update(step_table=4), "quant.step_table is 4 but the graph has no step input"),
        (lambda q: q.update(placement="gpu"), "quant.placement: 'gpu' is not one of"),
        (lambda q: q.update(weight_containers={"int4": -1}), "quant.weight_containers.int4 must be a count"),
        (lambda q: q.pop("label"), "quant: missing required field 'label'"),
    ],
)
def test_quant_section_is_validated(edit, needle):
    data = _manifest().to_dict()
    edit(data["quant"])
    with pytest.raises(RuntimeStageError, match=re.escape(needle)):
        Manifest.from_dict(data)
