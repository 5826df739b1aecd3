"""TensorRT on a real GPU: engines built by engines.trt.build against ONNX Runtime (CPU).

Models: the tiny test model always; additionally the ONNX named by ``SEGSTREAM_GPU_MODEL``
or the shipped CamVid model when present. Frames: CamVid val images when available, else
a smooth synthetic scene. Acceptance: >= 99.5 % identical labels at FP16, >= 99.9 % at FP32,
for the backend (host pre/post) and for the all-GPU pipeline (fused kernels).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from engines.backend import BackendError, create_backend
from engines.onnx_fp16 import convert_to_fp16
from engines.postprocess import Postprocessor
from engines.preprocess import Preprocessor
from engines.spec import ModelSpec, sidecar_path
from engines.trt.build import BuildOptions, build_engine
from tests.conftest import camvid_root
from tests.gpu.conftest import require_tensorrt
from tests.tinymodel import make_tiny_model

pytestmark = pytest.mark.gpu
MIN_AGREEMENT = {"fp32": 0.999, "fp16": 0.995}


def frames(n: int = 8) -> list[np.ndarray]:
    """CamVid val frames (360x480 BGR) if present, else synthetic gradients with shapes."""
    val = camvid_root() / "val"
    files = sorted(val.glob("*.png"))[:n] if val.is_dir() else []
    if files:
        return [cv2.imread(str(f), cv2.IMREAD_COLOR) for f in files]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = np.zeros((360, 480, 3), np.uint8)
        img[:] = np.linspace(0, 255, 480, dtype=np.uint8)[None, :, None]
        cv2.circle(img, (int(rng.integers(60, 420)), 180), 40 + 10 * i, (30, 200, 90), -1)
        out.append(cv2.GaussianBlur(img, (7, 7), 2))
    return out


def models(tmp: Path) -> list[Path]:
    paths = [make_tiny_model(tmp / "tiny", input_size=(360, 480), num_classes=11)]
    env = os.environ.get("SEGSTREAM_GPU_MODEL")
    shipped = Path(__file__).resolve().parents[2] / "engines" / "models" / "camvid_fastscnn.onnx"
    for extra in (Path(env) if env else None, shipped):
        if extra is not None and extra.is_file():
            paths.append(extra)
    return paths


def with_precision(model: Path, precision: str, tmp: Path) -> Path:
    if precision == "fp32":
        return model
    out = tmp / f"{model.stem}.fp16.onnx"
    onnx.save(convert_to_fp16(onnx.load(str(model))), out)
    ModelSpec.load(sidecar_path(model)).save(sidecar_path(out))
    return out


def cpu_labels(model: Path, frame: np.ndarray) -> np.ndarray:
    ort = create_backend(model, "onnxruntime")
    spec = ort.spec
    out = ort.infer(Preprocessor(spec)(frame))[0]
    return Postprocessor(spec)(out, frame.shape[:2])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Path, Path]]:
    """(precision, reference fp32 ONNX, engine) for every model and precision."""
    require_tensorrt()
    tmp = tmp_path_factory.mktemp("trt")
    cache = tmp / "timing.cache"
    out = []
    for model in models(tmp):
        for precision in ("fp32", "fp16"):
            src = with_precision(model, precision, tmp)
            engine = tmp / f"{src.stem}.{precision}.trt.engine"
            path, _ = build_engine(src, engine, BuildOptions(precision=precision,
                                                             timing_cache=cache))
            out.append((precision, model, path))
    assert cache.stat().st_size > 0
    return out


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


def test_backend_matches_onnxruntime(built) -> None:
    for precision, ref_model, engine in built:
        trt = create_backend(engine)
        spec = trt.spec
        pre, post = Preprocessor(spec), Postprocessor(spec)
        for frame in frames():
            got = post(trt.infer(pre(frame))[0], frame.shape[:2])
            agree = agreement(got, cpu_labels(ref_model, frame))
            print(f"{engine.name}: backend agreement {agree:.5f}")
            assert agree >= MIN_AGREEMENT[precision], (engine.name, agree)
        trt.close()


def test_gpu_pipeline_matches_onnxruntime(built) -> None:
    from engines.trt.pipeline import GpuSegmenter

    for precision, ref_model, engine in built:
        seg = GpuSegmenter(create_backend(engine))
        for frame in frames():
            agree = agreement(seg.segment(frame), cpu_labels(ref_model, frame))
            print(f"{engine.name}: pipeline agreement {agree:.5f}")
            assert agree >= MIN_AGREEMENT[precision], (engine.name, agree)
        bgrx = np.concatenate([frames(1)[0], np.zeros((360, 480, 1), np.uint8)], axis=2)
        np.testing.assert_array_equal(seg.segment(bgrx, "bgrx"), seg.segment(bgrx[..., :3]))
        seg.close()


def test_double_buffering_and_cuda_graph_keep_order(built) -> None:
    _precision, _ref, engine = built[0]
    plain = create_backend(engine)
    graphed = create_backend(engine, cuda_graph=True)
    spec = plain.spec
    pre = Preprocessor(spec)
    batches = [pre(f) for f in frames()]
    expect = [plain.infer(b) for b in batches]
    results = []
    graphed.submit(batches[0])
    for b in batches[1:]:
        graphed.submit(b)  # upload N+1 while N runs
        results.append(graphed.collect())
    results.append(graphed.collect())
    print(f"cuda graph in use: {graphed.uses_cuda_graph}")
    for got, want in zip(results, expect, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(BackendError, match="collect"):
        graphed.collect()
    plain.close()
    graphed.close()


def test_engine_for_other_tensorrt_is_refused(built, tmp_path: Path) -> None:
    _precision, _ref, engine = built[0]
    copy = tmp_path / engine.name
    copy.write_bytes(engine.read_bytes())
    data = json.loads(sidecar_path(engine).read_text())
    data["tensorrt"]["tensorrt_version"] = "9.0.0"
    sidecar_path(copy).write_text(json.dumps(data))
    with pytest.raises(BackendError, match=r"built with TensorRT 9\.0\.0"):
        create_backend(copy)


def test_dynamic_profile(tmp_path: Path) -> None:
    """A dynamic-shape ONNX builds with a profile and runs at two shapes in range."""
    require_tensorrt()
    model = make_tiny_model(tmp_path, input_size=(64, 96))
    proto = onnx.load(str(model))
    for vi in (*proto.graph.input, *proto.graph.output):
        for i in (0, 2, 3):
            vi.type.tensor_type.shape.dim[i].dim_param = f"d{i}"
    onnx.save(proto, model)
    path, rec = build_engine(model, None, BuildOptions(
        shape=("input:1x3x64x96",), min_shape=("input:1x3x32x32",),
        max_shape=("input:2x3x128x128",)))
    assert rec.shapes[0].max == (2, 3, 128, 128)
    trt = create_backend(path)
    assert trt.infer(np.zeros((1, 3, 64, 96), np.float32)).shape == (1, 5, 16, 24)
    assert trt.infer(np.zeros((2, 3, 128, 128), np.float32)).shape == (2, 5, 32, 32)
    trt.close()
