"""TensorRTBackend's host-side bookkeeping against stand-ins for TensorRT and pycuda.

What is checked here is the backend's own logic, not TensorRT: which input shape a batch
profile gets, zero padding of partial batches, which double-buffer slot a submit after a
failed one takes, and that the CUDA context is made current (and popped again) on a thread
that did not create the backend. The stand-ins implement only the calls the backend makes
(TensorRT 10 names; pycuda's per-thread context stack, whose copies fail without a current
context as pycuda's do). The "network" is a per-frame function of its input, so every
output row shows which frame it came from. Real engines run in ``tests/gpu``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from engines import segmenter as segmenter_mod
from engines.backend import BackendError, DeviceUnavailableError
from engines.segmenter import Segmenter
from engines.spec import ModelSpec
from engines.trt import backend as backend_mod
from engines.trt import compat
from engines.trt.backend import TensorRTBackend
from engines.trt.engine_info import DeviceIdentity, EngineMismatchError, check_compatible

C, H, W, K = 3, 4, 6, 5  # network input (N, C, H, W) -> logits (N, K, H, W)


class FakeCuda:
    """``pycuda.driver``: per-thread context stacks, host-visible "device" buffers."""

    class Error(RuntimeError):
        pass

    def __init__(self) -> None:
        self.local = threading.local()
        self.buffers: dict[int, bytearray] = {}
        self.event_flags = SimpleNamespace(BLOCKING_SYNC=1, DISABLE_TIMING=2)
        cuda = self

        class Context:
            def push(self) -> None:
                cuda.stack().append(self)

            @staticmethod
            def pop() -> None:
                cuda.stack().pop()

            @staticmethod
            def get_current() -> object | None:
                return cuda.stack()[-1] if cuda.stack() else None

        class Stream:
            handle = 7

            def synchronize(self) -> None:
                cuda.require_context("cuStreamSynchronize")

            def wait_for_event(self, event: object) -> None:
                cuda.require_context("cuStreamWaitEvent")

        class Event:
            def __init__(self, flags: int = 0) -> None:
                self.flags = flags

            def record(self, stream: object) -> None:
                cuda.require_context("cuEventRecord")

            def query(self) -> bool:
                cuda.require_context("cuEventQuery")
                return True

            def synchronize(self) -> None:
                cuda.require_context("cuEventSynchronize")

        self.Context, self.Stream, self.Event = Context, Stream, Event
        Context().push()  # what pycuda.autoprimaryctx does on the importing thread

    def stack(self) -> list:
        if not hasattr(self.local, "stack"):
            self.local.stack = []
        return self.local.stack

    def require_context(self, call: str) -> None:
        if not self.stack():
            raise self.Error(f"{call} failed: invalid device context - no currently active "
                             "context?")

    def pagelocked_empty(self, shape: tuple[int, ...], dtype: object) -> np.ndarray:
        return np.zeros(shape, dtype)

    def mem_alloc(self, nbytes: int) -> DeviceAllocation:
        self.require_context("cuMemAlloc")
        addr = 0x1000 * (len(self.buffers) + 1)
        self.buffers[addr] = bytearray(nbytes)
        return DeviceAllocation(addr, self)

    def memcpy_htod_async(self, dev: DeviceAllocation, host: np.ndarray, stream: object) -> None:
        self.require_context("cuMemcpyHtoDAsync")
        self.buffers[int(dev)][:] = host.tobytes()

    def memcpy_dtoh_async(self, host: np.ndarray, dev: DeviceAllocation, stream: object) -> None:
        self.require_context("cuMemcpyDtoHAsync")
        host.reshape(-1).view(np.uint8)[:] = np.frombuffer(self.buffers[int(dev)], np.uint8)


class DeviceAllocation:
    """pycuda's: ``int()`` is the device address; ``free()`` needs the context."""

    def __init__(self, addr: int, cuda: FakeCuda) -> None:
        self.addr, self.cuda = addr, cuda

    def __int__(self) -> int:
        return self.addr

    def free(self) -> None:
        self.cuda.require_context("cuMemFree")


def network(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, K, H, W): class k's score = frame mean * (k + 1) + pixel."""
    return (x.mean(axis=(1, 2, 3))[:, None, None, None] * np.arange(1, K + 1)[None, :, None, None]
            + x[:, :1]).astype(np.float32)


class FakeEngine:
    """A batch-profile engine: input (-1, C, H, W), profile N min 1 / opt 2 / max 4."""

    def __init__(self, cuda: FakeCuda, profile: tuple[int, int, int] = (1, 2, 4)) -> None:
        self.cuda, self.profile = cuda, profile
        self.num_io_tensors = 2
        self.fail_next = 0

    def get_tensor_name(self, i: int) -> str:
        return ("input", "logits")[i]

    def get_tensor_mode(self, name: str) -> str:
        return "in" if name == "input" else "out"

    def get_tensor_dtype(self, name: str) -> type:
        return np.float32

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, C, H, W) if name == "input" else (-1, K, H, W)

    def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
        return [(n, C, H, W) for n in self.profile]

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.shape, self.addr = engine, None, {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        lo, hi = self.engine.profile[0], self.engine.profile[2]
        if not lo <= shape[0] <= hi or tuple(shape[1:]) != (C, H, W):
            return False
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (self.shape[0], K, H, W)

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addr[name] = ptr

    def execute_async_v3(self, stream: int) -> bool:
        if self.engine.fail_next:
            self.engine.fail_next -= 1
            return False
        buffers = self.engine.cuda.buffers
        x = np.frombuffer(buffers[self.addr["input"]], np.float32).reshape(self.shape)
        buffers[self.addr["logits"]][:] = network(x).tobytes()
        return True


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    cuda = FakeCuda()
    engine = FakeEngine(cuda)
    trt = SimpleNamespace(
        __version__="10.3.0", nptype=lambda dtype: dtype,
        TensorIOMode=SimpleNamespace(INPUT="in"),
        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}),
        Runtime=lambda logger: SimpleNamespace(deserialize_cuda_engine=lambda data: engine))
    record = SimpleNamespace(shapes=[], built_at="2026-12-02", precision="fp32")
    checked: list[bytes] = []
    monkeypatch.setattr(compat, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(compat, "import_pycuda", lambda: cuda)
    monkeypatch.setattr(compat, "device_identity", lambda _: SimpleNamespace(
        name="Fake GPU", compute_capability=(8, 7), describe=lambda: "Fake GPU"))
    monkeypatch.setattr(backend_mod, "read_engine_record", lambda path: record)
    monkeypatch.setattr(backend_mod, "check_compatible",
                        lambda record, **kw: checked.append(kw["engine_bytes"]))
    return SimpleNamespace(cuda=cuda, engine=engine, checked=checked)


@pytest.fixture
def engine_file(tiny_model: Path, tmp_path: Path) -> tuple[Path, ModelSpec]:
    path = tmp_path / "model.engine"
    path.write_bytes(b"engine bytes")
    return path, ModelSpec.load(tiny_model.with_suffix(".json"))


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, C, H, W)).astype(np.float32)


def test_the_engine_file_is_read_once_and_those_bytes_are_checked(
        fakes: SimpleNamespace, engine_file: tuple[Path, ModelSpec]) -> None:
    TensorRTBackend(engine_file[0], engine_file[1])
    assert fakes.checked == [b"engine bytes"]


@pytest.mark.parametrize(("batch", "n"), [(None, 2), (1, 1), (3, 3), (4, 4), (9, 4), (0, 1)])
def test_batch_is_clamped_to_the_profile(fakes: SimpleNamespace,
                                         engine_file: tuple[Path, ModelSpec],
                                         batch: int | None, n: int) -> None:
    be = TensorRTBackend(*engine_file, batch=batch)
    assert be.max_batch == n and be.input_shape == (n, C, H, W)


def test_partial_batches_are_padded_and_return_their_rows(
        fakes: SimpleNamespace, engine_file: tuple[Path, ModelSpec]) -> None:
    be = TensorRTBackend(*engine_file, batch=4)
    x = frames(3)
    out = be.infer(x)
    assert out.shape == (3, K, H, W) and be.input_shape == (4, C, H, W)
    for i in range(3):  # each row is what that frame gives alone
        np.testing.assert_allclose(out[i], network(x[i:i + 1])[0], rtol=1e-6)


def test_a_failed_submit_never_hands_out_a_slot_in_flight(
        fakes: SimpleNamespace, engine_file: tuple[Path, ModelSpec]) -> None:
    be = TensorRTBackend(*engine_file, batch=1)
    a, b, c = frames(1, 1), frames(1, 2), frames(1, 3)
    be.submit(a)  # slot 0 in flight
    fakes.engine.fail_next = 1
    with pytest.raises(BackendError, match="execute_async_v3 failed"):
        be.submit(b)  # slot 1, failed: not in flight
    be.submit(c)  # must take slot 1 again, not slot 0 (still holding a's input)
    np.testing.assert_allclose(be.collect(), network(a), rtol=1e-6)
    np.testing.assert_allclose(be.collect(), network(c), rtol=1e-6)
    with pytest.raises(BackendError, match="without a submitted batch"):
        be.collect()


def test_runs_on_a_thread_that_did_not_create_it(fakes: SimpleNamespace,
                                                 engine_file: tuple[Path, ModelSpec]) -> None:
    be = TensorRTBackend(*engine_file, batch=2)
    x, results, stacks = frames(2), [], []

    def worker() -> None:
        be.submit(x)
        results.append(be.ready())
        results.append(be.collect())
        be.close()
        stacks.append(len(fakes.cuda.stack()))  # pycuda aborts a thread ending with one

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert results and results[0] is True
    np.testing.assert_allclose(results[1], network(x), rtol=1e-6)
    assert stacks == [0]
    assert len(fakes.cuda.stack()) == 1  # the creating thread's context is left alone


def test_a_thread_with_another_context_current_runs_in_the_backends(
        fakes: SimpleNamespace, engine_file: tuple[Path, ModelSpec]) -> None:
    be = TensorRTBackend(*engine_file, batch=1)
    seen: list[object] = []

    def worker() -> None:
        theirs = fakes.cuda.Context()
        theirs.push()  # e.g. an application's context on a second GPU
        with be.cuda_context():
            seen.append(fakes.cuda.Context.get_current())
        seen.append(fakes.cuda.stack() == [theirs])

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [be._ctx, True]


def test_without_the_context_the_stand_in_fails_like_pycuda(fakes: SimpleNamespace) -> None:
    """The thread test above can fail: a copy on a thread without a context raises."""
    errors: list[Exception] = []

    def worker() -> None:
        try:
            fakes.cuda.memcpy_htod_async(DeviceAllocation(0, fakes.cuda), np.zeros(1), None)
        except FakeCuda.Error as e:
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert errors and "no currently active context" in str(errors[0])


@pytest.mark.parametrize(("batch", "fused"), [(1, True), (2, False), (4, False)])
def test_segmenter_routes_a_batch_profile_engine_by_the_batch_asked(
        fakes: SimpleNamespace, engine_file: tuple[Path, ModelSpec],
        monkeypatch: pytest.MonkeyPatch, batch: int, fused: bool) -> None:
    """A batch-profile engine asked for one frame per call gets the fused CUDA path (it
    was refused before: the backend sat at the profile's opt N); asked for more, the CPU
    pre/post path around an engine configured for that many frames."""
    made: list[TensorRTBackend] = []
    monkeypatch.setattr(segmenter_mod, "GpuFusedSegmenter", lambda be: made.append(be) or be)
    path, spec = engine_file
    monkeypatch.setattr(segmenter_mod, "create_backend",
                        lambda model, backend, threads, **opts: TensorRTBackend(
                            model, spec, **opts))
    seg = Segmenter.from_path(path, batch=batch)
    if fused:
        assert made and made[0].max_batch == 1
    else:
        assert isinstance(seg, Segmenter) and seg.max_batch == batch


def test_hash_of_the_given_bytes_is_compared(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "m.engine"
    path.write_bytes(b"on disk")
    record = SimpleNamespace(tensorrt_version="10.3.0", gpu_name="G", compute_capability=(8, 7),
                             device=DeviceIdentity("G", (8, 7)),
                             engine_sha256=hashlib.sha256(b"on disk").hexdigest(),
                             source_onnx="m.onnx", precision="fp16")
    kw = {"tensorrt_version": "10.3.0", "gpu_name": "G", "compute_capability": (8, 7),
          "engine_path": path}
    check_compatible(record, **kw)  # type: ignore[arg-type]
    check_compatible(record, engine_bytes=b"on disk", **kw)  # type: ignore[arg-type]
    with pytest.raises(EngineMismatchError, match="does not match its sidecar"):
        check_compatible(record, engine_bytes=b"swapped after the check", **kw)  # type: ignore[arg-type]


def test_an_unusable_gpu_is_a_device_error_worth_a_restart(
        fakes: SimpleNamespace, engine_file: tuple[Path, ModelSpec],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No CUDA context (a driver not up yet at boot) and an engine that does not
    deserialise (device memory) raise DeviceUnavailableError: the CLI exits 1 for it, which
    a service restarts, where a bad model exits 2 and stays down."""
    def no_context(_cuda: object) -> None:
        raise compat.CudaContextError("cannot create a CUDA context (cuInit failed)")

    monkeypatch.setattr(compat, "device_identity", no_context)
    with pytest.raises(DeviceUnavailableError, match="CUDA context"):
        TensorRTBackend(*engine_file)


def test_cli_exits_1_when_the_device_is_not_usable(tiny_model: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from stream.cli import main

    def unusable(*_a: object, **_k: object) -> None:
        raise DeviceUnavailableError("TensorRT could not deserialise x.engine: out of memory")

    monkeypatch.setattr(segmenter_mod.Segmenter, "from_path", unusable)
    rc = main(["run", "--source", "test://?frames=3", "--model", str(tiny_model),
               "--publish", "ipc:///tmp/segstream-test-unusable.sock", "--stats-interval", "0"])
    assert rc == 1 and "could not deserialise" in capsys.readouterr().err
