"""TensorRT path: the parts that run without TensorRT, and a skip for the rest.

Pure Python, run everywhere: engine sidecar records and the compatibility check that
refuses engines built for another GPU / TensorRT version, shape parsing and optimisation
profile resolution, the ONNX precision check (Q/DQ nodes, float16 tensors), the
``segstream build`` command up to the point where TensorRT is needed. Real engine builds
and parity live in ``tests/gpu`` (run ``tests/gpu/run_gpu_checks.sh`` on a CUDA machine).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.backend import BackendError, create_backend
from engines.onnx_fp16 import convert_to_fp16
from engines.spec import ModelSpec, ModelSpecError, sidecar_path
from engines.trt import compat
from engines.trt.build import (
    BuildError,
    BuildOptions,
    PrecisionMismatchError,
    check_precision,
    default_engine_path,
    inspect_precision,
    onnx_inputs,
    parse_shape_arg,
    prepare_build,
    resolve_shapes,
)
from engines.trt.engine_info import (
    EngineMismatchError,
    EngineRecord,
    ShapeRange,
    check_compatible,
    read_engine_record,
    sha256_file,
    write_engine_sidecar,
)
from stream.cli import main

SKIP_REASON = ("TensorRT not installed: GPU-only, run tests/gpu/run_gpu_checks.sh on a CUDA "
               "machine")


# -- helpers -------------------------------------------------------------------------------


def add_input_qdq(path: Path, zp_dtype=np.int8, zp_value: int = 0) -> Path:
    """Insert QuantizeLinear -> DequantizeLinear on the graph input (explicit quantization)."""
    model = onnx.load(str(path))
    g = model.graph
    for node in g.node:
        node.input[:] = ["input_dq" if i == "input" else i for i in node.input]
    g.initializer.extend([numpy_helper.from_array(np.array(0.02, np.float32), "in_scale"),
                          numpy_helper.from_array(np.array(zp_value, zp_dtype), "in_zp")])
    g.node.insert(0, helper.make_node("DequantizeLinear", ["input_q", "in_scale", "in_zp"],
                                      ["input_dq"]))
    g.node.insert(0, helper.make_node("QuantizeLinear", ["input", "in_scale", "in_zp"],
                                      ["input_q"]))
    onnx.checker.check_model(model)
    out = path.with_name(path.stem + ".int8.onnx")
    onnx.save(model, out)
    ModelSpec.load(sidecar_path(path)).save(sidecar_path(out))
    return out


def fp16_copy(path: Path) -> Path:
    out = path.with_name(path.stem + ".fp16.onnx")
    onnx.save(convert_to_fp16(onnx.load(str(path))), out)
    ModelSpec.load(sidecar_path(path)).save(sidecar_path(out))
    return out


def record(engine: Path, **overrides) -> EngineRecord:
    fields = dict(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability=(8, 7),
                  precision="fp16",
                  shapes=(ShapeRange("input", (1, 3, 64, 96), (1, 3, 64, 96), (1, 3, 64, 96)),),
                  source_onnx="tiny.fp16.onnx", onnx_sha256="0" * 64,
                  engine_sha256=sha256_file(engine), built_at="2026-01-01T00:00:00+00:00",
                  workspace_mib=512)
    fields.update(overrides)
    return EngineRecord(**fields)


@pytest.fixture
def fake_engine(tmp_path: Path, tiny_model: Path) -> Path:
    """Opaque bytes with a proper sidecar: enough for everything before deserialising."""
    engine = tmp_path / "tiny.fp16.trt.engine"
    engine.write_bytes(b"not really an engine" * 10)
    write_engine_sidecar(engine, ModelSpec.load(sidecar_path(tiny_model)), record(engine))
    return engine


# -- sidecar and compatibility -------------------------------------------------------------


def test_sidecar_round_trip_and_spec_still_loads(fake_engine: Path) -> None:
    rec = read_engine_record(fake_engine)
    assert rec == record(fake_engine)
    data = json.loads(sidecar_path(fake_engine).read_text())
    assert data["tensorrt"]["compute_capability"] == [8, 7]
    assert data["tensorrt"]["shapes"]["input"]["opt"] == [1, 3, 64, 96]
    spec = ModelSpec.load(sidecar_path(fake_engine))  # the spec part is an ordinary sidecar
    assert spec.name == "tiny" and spec.num_classes == 5


def test_matching_engine_is_accepted(fake_engine: Path) -> None:
    check_compatible(read_engine_record(fake_engine), tensorrt_version="10.3.0",
                     gpu_name="Orin", compute_capability=(8, 7), engine_path=fake_engine)


@pytest.mark.parametrize(("runtime", "match"), [
    (dict(tensorrt_version="10.7.0"), r"built with TensorRT 10\.3\.0, this is TensorRT 10\.7\.0"),
    (dict(compute_capability=(9, 0), gpu_name="NVIDIA H100"), r"compute capability 8\.7.*9\.0"),
    (dict(gpu_name="Orin Nano"), r"built on a Orin, this GPU is a Orin Nano"),
])
def test_engine_for_other_gpu_or_trt_is_refused(fake_engine: Path, runtime, match) -> None:
    here = dict(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability=(8, 7))
    here.update(runtime)
    with pytest.raises(EngineMismatchError, match=match) as exc:
        check_compatible(read_engine_record(fake_engine), engine_path=fake_engine, **here)
    assert "segstream build tiny.fp16.onnx --precision fp16" in str(exc.value)


def test_force_accepts_other_model_of_same_architecture_only(fake_engine: Path) -> None:
    rec = read_engine_record(fake_engine)
    check_compatible(rec, tensorrt_version="10.3.0", gpu_name="Orin Nano",
                     compute_capability=(8, 7), engine_path=fake_engine, force=True)
    with pytest.raises(EngineMismatchError, match="compute capability"):
        check_compatible(rec, tensorrt_version="10.3.0", gpu_name="H100",
                         compute_capability=(9, 0), engine_path=fake_engine, force=True)


def test_replaced_engine_file_is_refused(fake_engine: Path) -> None:
    fake_engine.write_bytes(b"another engine")
    with pytest.raises(EngineMismatchError, match="does not match its sidecar"):
        check_compatible(read_engine_record(fake_engine), tensorrt_version="10.3.0",
                         gpu_name="Orin", compute_capability=(8, 7), engine_path=fake_engine)


def test_engine_without_build_record_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ModelSpecError, match="not found"):
        read_engine_record(engine)
    ModelSpec.load(sidecar_path(tiny_model)).save(sidecar_path(engine))
    with pytest.raises(ModelSpecError, match="no 'tensorrt' section"):
        read_engine_record(engine)


def test_create_backend_without_tensorrt_names_the_fix(fake_engine: Path) -> None:
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; see tests/gpu")
    except ImportError:
        pass
    with pytest.raises(BackendError, match=r"TensorRT not installed.*segstream\[gpu\]"):
        create_backend(fake_engine)


def test_version_parsing() -> None:
    assert compat.version_tuple("10.3.0.26") == (10, 3, 0, 26)
    assert compat.version_tuple("11.0.0b1") == (11, 0, 0)
    with pytest.raises(ValueError):
        compat.version_tuple("dev")


# -- shapes ----------------------------------------------------------------------------------


def test_parse_shape_arg() -> None:
    assert parse_shape_arg("input:1x3x360x480") == ("input", (1, 3, 360, 480))
    assert parse_shape_arg("1x3x8x8") == (None, (1, 3, 8, 8))
    assert parse_shape_arg("images.0:2x3") == ("images.0", (2, 3))
    for bad in ("input:1x3x", "input=1x3", "1x0x2", "input:", "x3"):
        with pytest.raises(ValueError, match="bad shape"):
            parse_shape_arg(bad)


def test_static_input_keeps_its_shape() -> None:
    (r,) = resolve_shapes({"input": (1, 3, 64, 96)})
    assert r == ShapeRange("input", (1, 3, 64, 96), (1, 3, 64, 96), (1, 3, 64, 96))
    assert r.is_static


def test_dynamic_input_profile() -> None:
    inputs = {"input": (None, 3, None, None)}
    (r,) = resolve_shapes(inputs, shape=["input:1x3x360x480"], max_shape=["4x3x720x960"],
                          min_shape=["input:1x3x240x320"])
    assert (r.min, r.opt, r.max) == ((1, 3, 240, 320), (1, 3, 360, 480), (4, 3, 720, 960))
    (d,) = resolve_shapes(inputs, default_hw=(360, 480))  # from the sidecar
    assert d.opt == (1, 3, 360, 480) and d.is_static


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(shape=["input:1x3x64"]), "rank 3"),
    (dict(shape=["input:1x1x64x96"]), "ONNX fixes it at 3"),
    (dict(shape=["image:1x3x64x96"]), "no input 'image'"),
    (dict(shape=["1x3x64x96"], max_shape=["1x3x32x96"]), "min <= opt <= max"),
])
def test_bad_shapes_are_explained(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_shapes({"input": (None, 3, None, None)}, **kwargs)


def test_dynamic_without_shape_and_two_inputs() -> None:
    with pytest.raises(ValueError, match=r"dynamic shape .*--shape x:"):
        resolve_shapes({"x": (None, 7)})
    with pytest.raises(ValueError, match="name one"):
        resolve_shapes({"a": (1, 2), "b": (1, 2)}, shape=["1x2"])


# -- precision -------------------------------------------------------------------------------


def test_precision_detection(tiny_model: Path) -> None:
    fp32 = inspect_precision(onnx.load(str(tiny_model)))
    assert fp32.detected == "fp32" and fp32.qdq_nodes == 0 and fp32.fp16_tensors == 0
    fp16 = inspect_precision(onnx.load(str(fp16_copy(tiny_model))))
    assert fp16.detected == "fp16" and fp16.fp16_tensors >= 4
    int8 = inspect_precision(onnx.load(str(add_input_qdq(tiny_model))))
    assert int8.detected == "int8" and int8.qdq_nodes == 2 and not int8.nonzero_zero_points


def test_precision_mismatch_names_the_fix(tiny_model: Path) -> None:
    fp32 = inspect_precision(onnx.load(str(tiny_model)))
    check_precision("fp32", fp32, tiny_model)
    with pytest.raises(PrecisionMismatchError, match=r"holds only float32.*segstream calibrate"):
        check_precision("int8", fp32, tiny_model)
    with pytest.raises(PrecisionMismatchError, match="export CKPT --fp16"):
        check_precision("fp16", fp32, tiny_model)
    fp16 = inspect_precision(onnx.load(str(fp16_copy(tiny_model))))
    with pytest.raises(PrecisionMismatchError, match=r"float16 tensors.*--precision fp16"):
        check_precision("fp32", fp16, tiny_model)


def test_asymmetric_and_integer_op_quantization_refused(tiny_model: Path) -> None:
    u8 = inspect_precision(onnx.load(str(add_input_qdq(tiny_model, np.uint8, 128))))
    with pytest.raises(PrecisionMismatchError, match=r"asymmetrically.*--profile tensorrt"):
        check_precision("int8", u8, tiny_model)
    node = helper.make_node("QLinearConv", [f"i{i}" for i in range(8)], ["y"])
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info(
        "y", TensorProto.UINT8, [1])])
    info = inspect_precision(helper.make_model(graph))
    with pytest.raises(PrecisionMismatchError, match="QLinearConv"):
        check_precision("int8", info, "q.onnx")


def test_onnx_inputs_skip_initializers(tiny_model: Path) -> None:
    assert onnx_inputs(onnx.load(str(tiny_model))) == {"input": (1, 3, 64, 96)}


# -- prepare_build and the command --------------------------------------------------------------


def test_prepare_build_paths(tiny_model: Path) -> None:
    prep = prepare_build(tiny_model, None, BuildOptions())
    assert prep.out_path == default_engine_path(tiny_model) == tiny_model.with_name(
        "tiny.trt.engine")
    assert prep.shapes[0].opt == (1, 3, 64, 96)
    with pytest.raises(BuildError, match="share the sidecar"):
        prepare_build(tiny_model, tiny_model.with_suffix(".engine"), BuildOptions())
    with pytest.raises(BuildError, match=r"\.engine or \.plan"):
        prepare_build(tiny_model, tiny_model.with_name("x.trt"), BuildOptions())


def test_build_dry_run(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fp16 = fp16_copy(tiny_model)
    assert main(["build", str(fp16), "--precision", "fp16", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "precision fp16" in out and "input: min 1x3x64x96" in out
    assert "tiny.fp16.trt.engine" in out
    assert not fp16.with_name("tiny.fp16.trt.engine").exists()


def test_build_command_rejects_bad_input(tiny_model: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(tiny_model), "--precision", "int8", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "segstream calibrate" in err and "--precision fp32" in err
    assert main(["build", str(tiny_model), "--shape", "input:1x3x32x32", "--dry-run"]) == 2
    assert "ONNX fixes it at 64" in capsys.readouterr().err
    assert main(["build", str(tiny_model.with_name("missing.onnx"))]) == 2


def test_build_without_tensorrt_exits_2(tiny_model: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; see tests/gpu")
    except ImportError:
        pass
    assert main(["build", str(tiny_model)]) == 2
    assert "TensorRT not installed" in capsys.readouterr().err


# -- with TensorRT -------------------------------------------------------------------------------


def test_build_and_load_tiny_engine(tiny_model: Path) -> None:
    pytest.importorskip("tensorrt", reason=SKIP_REASON)
    pytest.importorskip("pycuda", reason=SKIP_REASON)
    from engines.trt.build import build_engine

    path, rec = build_engine(tiny_model)
    backend = create_backend(path)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
    assert backend.infer(x).shape == (1, 5, 16, 24)
    assert rec.precision == "fp32"
    backend.close()


def test_build_auto_precision_reads_the_onnx(tiny_model: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    int8 = add_input_qdq(tiny_model)
    assert main(["build", str(int8), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "precision int8 (2 Q/DQ nodes" in out and "tiny.int8.trt.engine" in out


def test_build_refuses_a_file_that_is_not_onnx_and_a_sidecar_that_disagrees(
        tiny_model: Path, tmp_path: Path, capsys) -> None:
    """A checkpoint or garbage given as the ONNX was a protobuf traceback (exit 1); a sidecar
    listing the wrong class count passed the dry run and failed on the device."""
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x80\x04not protobuf")
    sidecar_path(junk).write_text(sidecar_path(tiny_model).read_text())
    assert main(["build", str(junk), "--dry-run"]) == 2
    assert "is not a readable ONNX model" in capsys.readouterr().err
    side = json.loads(sidecar_path(tiny_model).read_text())
    side["classes"] = side["classes"][:-1]
    sidecar_path(tiny_model).write_text(json.dumps(side))
    assert main(["build", str(tiny_model), "--dry-run"]) == 2
    assert "disagree: the sidecar lists 4 classes but the graph outputs 5" in \
        capsys.readouterr().err
    assert main(["export", str(tiny_model), "--fp16", "--out", str(tmp_path / "h.onnx")]) == 2
    assert "disagree" in capsys.readouterr().err and not (tmp_path / "h.onnx").exists()
