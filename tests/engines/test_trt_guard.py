"""TensorRT build and load robustness, against stand-ins for TensorRT, pycuda and libcuda.

The stand-ins implement only the calls segstream makes (the TensorRT 10 Python API names:
``create_timing_cache`` returns None for bytes it cannot read, ``set_timing_cache`` returns
False for a cache from another GPU/version). Real builds run in ``tests/gpu``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from engines.backend import BackendError
from engines.spec import ModelSpec, sidecar_path
from engines.trt import build as trt_build
from engines.trt import compat, cudagraph
from engines.trt.backend import Slot, TensorRTBackend
from engines.trt.build import BuildOptions, build_engine
from engines.trt.engine_info import (
    DeviceIdentity,
    EngineMismatchError,
    EngineRecord,
    ShapeRange,
    check_compatible,
    read_engine_record,
    sha256_file,
    write_engine_sidecar,
)

ENGINE_BYTES = b"serialized engine " * 8
GOOD_CACHE = b"CACHE:this-gpu"

AGX_ORIN_64 = DeviceIdentity("Orin", (8, 7), 16, 62_800, True,
                             "NVIDIA Jetson AGX Orin Developer Kit", "12.6")
AGX_ORIN_32 = DeviceIdentity("Orin", (8, 7), 14, 30_600, True,
                             "NVIDIA Jetson AGX Orin", "12.6")
ORIN_NX_16 = DeviceIdentity("Orin", (8, 7), 8, 15_600, True,
                            "NVIDIA Jetson Orin NX Engine Reference Design", "12.6")
ORIN_NANO_8 = DeviceIdentity("Orin", (8, 7), 8, 7_620, True,
                             "NVIDIA Jetson Orin Nano Developer Kit", "12.6")


# -- stand-ins -------------------------------------------------------------------------------


class FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+timings"


class FakeConfig:
    def __init__(self) -> None:
        self.cache: FakeTimingCache | None = None

    def create_timing_cache(self, data: bytes) -> FakeTimingCache | None:
        if not data:
            return FakeTimingCache(b"CACHE:this-gpu")
        return FakeTimingCache(bytes(data)) if data.startswith(b"CACHE:") else None

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        if not isinstance(cache, FakeTimingCache):  # what pybind11 does with None
            raise TypeError("set_timing_cache(): incompatible function arguments")
        if not cache.data.startswith(GOOD_CACHE) and not ignore_mismatch:
            return False
        self.cache = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache | None:
        return self.cache

    def set_memory_pool_limit(self, pool: object, size: int) -> None:
        pass


class FakeBuilder:
    def __init__(self, logger: object) -> None:
        self.config = FakeConfig()

    def create_network(self, flags: int) -> SimpleNamespace:
        return SimpleNamespace(num_inputs=1,
                               get_input=lambda i: SimpleNamespace(shape=(1, 3, 64, 96)))

    def create_builder_config(self) -> FakeConfig:
        return self.config

    def build_serialized_network(self, network: object, config: object) -> bytes:
        return ENGINE_BYTES


def fake_trt() -> SimpleNamespace:
    return SimpleNamespace(
        __version__="10.3.0",
        Logger=type("Logger", (), {"VERBOSE": 0, "WARNING": 1,
                                   "__init__": lambda self, level: None}),
        Builder=FakeBuilder,
        OnnxParser=lambda network, logger: SimpleNamespace(parse_from_file=lambda p: True,
                                                           parse=lambda data, path: True),
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1),
        MemoryPoolType=SimpleNamespace(WORKSPACE=0))


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> DeviceIdentity:
    monkeypatch.setattr(compat, "import_tensorrt", fake_trt)
    monkeypatch.setattr(compat, "import_pycuda", SimpleNamespace)
    monkeypatch.setattr(compat, "device_identity", lambda cuda: ORIN_NX_16)
    return ORIN_NX_16


# -- the build: engine first, folders created, cache problems only warn -------------------


def test_cache_in_missing_folder_keeps_the_build(tiny_model: Path, tmp_path: Path,
                                                 fake_gpu: DeviceIdentity) -> None:
    cache = tmp_path / "home" / ".cache" / "segstream" / "trt-orin.cache"
    out = tmp_path / "engines" / "new" / "tiny.trt.engine"
    path, rec = build_engine(tiny_model, out, BuildOptions(timing_cache=cache))
    assert path == out and out.read_bytes() == ENGINE_BYTES
    assert read_engine_record(out) == rec and rec.engine_sha256 == sha256_file(out)
    assert cache.read_bytes() == GOOD_CACHE + b"+timings"


def test_unwritable_cache_warns_and_keeps_the_engine(tiny_model: Path, tmp_path: Path,
                                                      fake_gpu: DeviceIdentity) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    status: list[str] = []
    path, _ = build_engine(tiny_model, tmp_path / "t.trt.engine",
                           BuildOptions(timing_cache=blocker / "trt.cache"),
                           on_status=status.append)
    assert path.read_bytes() == ENGINE_BYTES and sidecar_path(path).is_file()
    assert any(m.startswith("warning: timing cache not saved") for m in status)


@pytest.mark.parametrize(("content", "says"), [
    (b"\x00garbage, not a timing cache", "corrupt or truncated"),
    (b"CACHE:another-gpu", "from another GPU or TensorRT version"),
])
def test_bad_cache_file_means_a_fresh_cache(tiny_model: Path, tmp_path: Path,
                                            fake_gpu: DeviceIdentity, content: bytes,
                                            says: str) -> None:
    cache = tmp_path / "trt.cache"
    cache.write_bytes(content)
    status: list[str] = []
    path, _ = build_engine(tiny_model, tmp_path / "t.trt.engine",
                           BuildOptions(timing_cache=cache), on_status=status.append)
    assert path.read_bytes() == ENGINE_BYTES
    assert any(says in m and m.startswith("warning:") for m in status), status
    assert cache.read_bytes() == GOOD_CACHE + b"+timings"  # replaced after the build


def test_good_cache_is_reused(tiny_model: Path, tmp_path: Path,
                              fake_gpu: DeviceIdentity) -> None:
    cache = tmp_path / "trt.cache"
    cache.write_bytes(GOOD_CACHE + b":old")
    status: list[str] = []
    build_engine(tiny_model, tmp_path / "t.trt.engine", BuildOptions(timing_cache=cache),
                 on_status=status.append)
    assert any(m.startswith("timing cache loaded") for m in status)
    assert cache.read_bytes() == GOOD_CACHE + b":old+timings"


def test_sidecar_records_the_module(tiny_model: Path, tmp_path: Path,
                                    fake_gpu: DeviceIdentity) -> None:
    path, rec = build_engine(tiny_model, tmp_path / "t.trt.engine")
    assert rec.device == ORIN_NX_16
    data = json.loads(sidecar_path(path).read_text())["tensorrt"]
    assert data["sm_count"] == 8 and data["total_memory_mib"] == 15_600
    assert data["board"] == "NVIDIA Jetson Orin NX Engine Reference Design"
    assert data["cuda_driver_version"] == "12.6" and data["integrated"] is True


def test_no_cuda_context_is_a_build_error(tiny_model: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "import_tensorrt", fake_trt)

    def no_context() -> None:
        raise compat.CudaContextError("cannot create a CUDA context (no device)")

    monkeypatch.setattr(compat, "import_pycuda", no_context)
    with pytest.raises(trt_build.BuildError, match="no device"):
        build_engine(tiny_model, tmp_path / "t.trt.engine")


@pytest.fixture
def pycuda_without_a_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pycuda package whose autoprimaryctx fails as pycuda's make_default_context does
    when no device takes a context (busy GPU in exclusive-process mode, hidden by
    CUDA_VISIBLE_DEVICES): Python's own RuntimeError, not pycuda.driver.Error."""
    pkg = tmp_path / "fakes" / "pycuda"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "driver.py").write_text("class Error(Exception):\n    pass\n")
    (pkg / "autoprimaryctx.py").write_text(
        "raise RuntimeError(\"make_default_context() wasn't able to create a context on "
        "any of the 1 detected devices\")\n")
    for name in ("pycuda", "pycuda.driver", "pycuda.autoprimaryctx"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "fakes"))


class RefusingProfile:
    def __init__(self, how: str) -> None:
        self.how = how

    def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
        if self.how == "set_shape":  # what TensorRT's binding raises for a bad name/order
            raise RuntimeError(f"input {name} is not a network input")


@pytest.mark.parametrize(("how", "message"), [
    ("set_shape", r"refused the shapes of input 'input' \(1x3x64x96\.\.4x3x64x96\): "
                  r"input input is not"),
    ("add", r"refused the optimisation profile input 1x3x64x96\.\.4x3x64x96"),
])
def test_a_refused_optimisation_profile_is_a_build_error(
        tiny_model: Path, tmp_path: Path, fake_gpu: DeviceIdentity,
        monkeypatch: pytest.MonkeyPatch, how: str, message: str) -> None:
    dynamic = SimpleNamespace(num_inputs=1,
                              get_input=lambda i: SimpleNamespace(shape=(-1, 3, 64, 96)))
    monkeypatch.setattr(FakeBuilder, "create_network", lambda self, flags: dynamic,
                        raising=False)
    monkeypatch.setattr(FakeBuilder, "create_optimization_profile",
                        lambda self: RefusingProfile(how), raising=False)
    monkeypatch.setattr(FakeConfig, "add_optimization_profile",
                        lambda self, profile: -1 if how == "add" else 0, raising=False)
    out = tmp_path / "t.trt.engine"
    with pytest.raises(trt_build.BuildError, match=message):
        build_engine(tiny_model, out, BuildOptions(batch=4))
    assert not out.exists()


@pytest.mark.usefixtures("pycuda_without_a_device")
def test_no_device_taking_a_context_is_a_context_error_not_a_traceback() -> None:
    with pytest.raises(compat.CudaContextError, match="wasn't able to create a context"):
        compat.import_pycuda()
    from engines.cuda_kernels import CudaKernels, KernelError

    with pytest.raises(KernelError, match="no usable CUDA context"):
        CudaKernels()


def test_one_tensorrt_logger_serves_every_builder_and_runtime() -> None:
    trt = fake_trt()
    first = compat.trt_logger(trt, verbose=True)
    assert first.min_severity == trt.Logger.VERBOSE
    again = compat.trt_logger(trt)
    assert again is first and again.min_severity == trt.Logger.WARNING
    # kept on the module: a stand-in's logger never reaches the real tensorrt's builder
    # (tests/gpu runs after these tests in one process)
    assert compat.trt_logger(fake_trt()) is not first


# -- the module guard: Orin variants all report "Orin" ------------------------------------


@pytest.fixture
def orin_engine(tmp_path: Path, tiny_model: Path) -> Path:
    engine = tmp_path / "tiny.trt.engine"
    engine.write_bytes(ENGINE_BYTES)
    d = AGX_ORIN_64
    rec = EngineRecord(tensorrt_version="10.3.0", gpu_name=d.name,
                       compute_capability=d.compute_capability, precision="fp16",
                       shapes=(ShapeRange("input", (1, 3, 64, 96), (1, 3, 64, 96),
                                          (1, 3, 64, 96)),),
                       source_onnx="tiny.onnx", onnx_sha256="0" * 64,
                       engine_sha256=sha256_file(engine), built_at="2026-01-01T00:00:00+00:00",
                       sm_count=d.sm_count, total_memory_mib=d.total_memory_mib,
                       integrated=d.integrated, board=d.board,
                       cuda_driver_version=d.cuda_driver_version)
    write_engine_sidecar(engine, ModelSpec.load(sidecar_path(tiny_model)), rec)
    return engine


def _check(engine: Path, device: DeviceIdentity, force: bool = False) -> list[str]:
    return check_compatible(read_engine_record(engine), tensorrt_version="10.3.0",
                            gpu_name=device.name,
                            compute_capability=device.compute_capability,
                            engine_path=engine, device=device, force=force)


def test_same_module_is_accepted(orin_engine: Path) -> None:
    assert _check(orin_engine, AGX_ORIN_64) == []


@pytest.mark.parametrize(("device", "says"), [
    (AGX_ORIN_32, "16 SMs, this one has 14"),
    (ORIN_NX_16, "16 SMs, this one has 8"),
    (ORIN_NANO_8, "62800 MiB of GPU memory, this GPU has 7620"),
])
def test_other_orin_module_is_refused(orin_engine: Path, device: DeviceIdentity,
                                      says: str) -> None:
    with pytest.raises(EngineMismatchError, match=says) as exc:
        _check(orin_engine, device)
    assert "segstream build tiny.onnx --precision fp16" in str(exc.value)
    assert "force=True" in str(exc.value)


def test_same_sm_count_other_memory_is_refused(orin_engine: Path) -> None:
    """Orin NX 16GB and Orin Nano 8GB both have 8 SMs: memory and board tell them apart."""
    nx_engine_record = read_engine_record(orin_engine)
    with pytest.raises(EngineMismatchError, match=r"15600 MiB.*7620 MiB"):
        check_compatible(
            EngineRecord(**{**nx_engine_record.__dict__, **{
                "sm_count": 8, "total_memory_mib": 15_600, "board": None}}),
            tensorrt_version="10.3.0", gpu_name="Orin", compute_capability=(8, 7),
            engine_path=orin_engine, device=ORIN_NANO_8)


def test_force_loads_another_module_with_a_warning(orin_engine: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        warnings = _check(orin_engine, ORIN_NANO_8, force=True)
    assert len(warnings) == 1 and "loaded anyway" in warnings[0]
    assert "loaded anyway" in caplog.text


def test_other_jetpack_driver_warns(orin_engine: Path) -> None:
    newer = DeviceIdentity(**{**AGX_ORIN_64.__dict__, "cuda_driver_version": "12.8"})
    (warning,) = _check(orin_engine, newer)
    assert "CUDA driver 12.6, this is 12.8" in warning


def test_old_sidecar_without_module_identity_warns(tmp_path: Path, tiny_model: Path) -> None:
    engine = tmp_path / "old.trt.engine"
    engine.write_bytes(ENGINE_BYTES)
    data = ModelSpec.load(sidecar_path(tiny_model)).to_json()
    data["tensorrt"] = {"tensorrt_version": "10.3.0", "gpu_name": "Orin",
                        "compute_capability": [8, 7], "precision": "fp16",
                        "shapes": {"input": {"min": [1, 3, 64, 96], "opt": [1, 3, 64, 96],
                                             "max": [1, 3, 64, 96]}},
                        "source_onnx": "tiny.onnx", "onnx_sha256": "0" * 64,
                        "engine_sha256": sha256_file(engine), "built_at": "2025-01-01"}
    sidecar_path(engine).write_text(json.dumps(data))
    (warning,) = _check(engine, ORIN_NX_16)
    assert "does not tell e.g. AGX Orin from Orin NX" in warning


# -- the pycuda device query ----------------------------------------------------------------


class _FakeDevice:
    def __init__(self, ordinal: int) -> None:
        self.ordinal = ordinal

    def compute_capability(self) -> tuple[int, int]:
        return (8, 7)

    def get_attribute(self, attr: str) -> int:
        return {"sm": 8 if self.ordinal == 1 else 16, "integrated": 1}[attr]

    def total_memory(self) -> int:
        return 15_600 << 20

    def name(self) -> str:
        return "Orin"


def test_device_identity_uses_the_current_context_device(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson Orin NX Engine Reference Design\x00")
    monkeypatch.setattr(compat, "BOARD_MODEL_FILE", model)
    cuda = SimpleNamespace(
        Error=RuntimeError, Device=lambda i: pytest.fail("must not open device 0 blindly"),
        Context=SimpleNamespace(get_device=lambda: _FakeDevice(1)),
        device_attribute=SimpleNamespace(MULTIPROCESSOR_COUNT="sm", INTEGRATED="integrated"),
        get_driver_version=lambda: 12060)
    assert compat.device_identity(cuda) == ORIN_NX_16


def test_device_query_failure_is_a_context_error() -> None:
    class DriverError(Exception):
        pass

    def fail() -> None:
        raise DriverError("cuCtxGetDevice failed: invalid context")

    cuda = SimpleNamespace(Error=DriverError, Context=SimpleNamespace(get_device=fail))
    with pytest.raises(compat.CudaContextError, match="invalid context"):
        compat.device_identity(cuda)


def test_missing_sidecar_is_a_backend_error(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    engine = tmp_path / "lonely.engine"
    engine.write_bytes(ENGINE_BYTES)
    monkeypatch.setattr(compat, "import_tensorrt", fake_trt)
    monkeypatch.setattr(compat, "import_pycuda", SimpleNamespace)
    monkeypatch.setattr(compat, "device_identity", lambda cuda: ORIN_NX_16)
    with pytest.raises(BackendError, match=r"sidecar .* not found"):
        TensorRTBackend(engine, None)  # type: ignore[arg-type]


# -- CUDA graph capture: a TensorRT exception falls back to plain launches ----------------


class FakeLibcuda:
    """The driver calls CudaGraph makes; EndCapture hands out graph handle 0x1234."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def cuStreamBeginCapture_v2(self, stream: object, mode: int) -> int:  # noqa: N802
        self.calls.append(("begin", 0))
        return 0

    def cuStreamEndCapture(self, stream: object, graph_ref: object) -> int:  # noqa: N802
        graph_ref._obj.value = 0x1234  # type: ignore[attr-defined]
        self.calls.append(("end", 0))
        return 0

    def cuGraphInstantiateWithFlags(self, exec_ref: object, graph: object, flags: int) -> int:  # noqa: N802
        exec_ref._obj.value = 0x5678  # type: ignore[attr-defined]
        return 0

    def cuGraphDestroy(self, graph: ctypes.c_void_p) -> int:  # noqa: N802
        self.calls.append(("destroy", graph.value))
        return 0

    def cuGraphExecDestroy(self, exe: ctypes.c_void_p) -> int:  # noqa: N802
        self.calls.append(("exec-destroy", exe.value))
        return 0


@pytest.fixture
def libcuda(monkeypatch: pytest.MonkeyPatch) -> FakeLibcuda:
    lib = FakeLibcuda()
    monkeypatch.setattr(cudagraph, "_libcuda", lambda: lib)
    return lib


def test_exception_during_capture_frees_the_graph(libcuda: FakeLibcuda) -> None:
    def enqueue() -> bool:
        raise RuntimeError("TensorRT: enqueue not capturable")

    with pytest.raises(cudagraph.CudaGraphError, match="not capturable"):
        cudagraph.CudaGraph(7, enqueue)
    assert libcuda.calls == [("begin", 0), ("end", 0), ("destroy", 0x1234)]


def test_backend_falls_back_to_no_graphs(libcuda: FakeLibcuda) -> None:
    runs: list[str] = []

    def execute(handle: int) -> bool:
        runs.append("warm-up" if len(runs) == 0 else "capture")
        if len(runs) > 1:
            raise RuntimeError("TensorRT error during capture")
        return True

    backend = TensorRTBackend.__new__(TensorRTBackend)
    backend._compute_stream = SimpleNamespace(handle=7, synchronize=lambda: None)
    backend._context = SimpleNamespace(execute_async_v3=execute,
                                       set_tensor_address=lambda name, ptr: None)
    backend._in_name, backend._out_name = "input", "logits"
    backend._slots = [Slot(None, 1, 2, None, None, None),  # type: ignore[arg-type]
                      Slot(None, 3, 4, None, None, None)]  # type: ignore[arg-type]
    backend._use_graph = True
    backend._capture_graphs()
    assert not backend.uses_cuda_graph
    assert all(slot.graph is None for slot in backend._slots)
    assert ("destroy", 0x1234) in libcuda.calls
