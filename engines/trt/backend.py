"""TensorRT backend: a deserialised engine behind the :class:`~engines.backend.Backend`
protocol, double-buffered so uploads overlap inference.

Data path per submitted batch (two slots, A and B, alternate)::

    host batch -> pinned host_in[s] --H2D (copy stream)--> dev_in[s]
        event uploaded[s] --> compute stream: execute_async_v3 (or CUDA graph[s])
        --> dev_out[s] --D2H (compute stream)--> pinned host_out[s] --> event done[s]

While slot A's inference runs on the compute stream, ``submit`` of the next batch uploads
into slot B on the copy stream. ``infer`` is ``submit`` + ``collect``.

Batches: an engine built with ``segstream build --batch N`` (profile N min 1, opt N,
max N) can run 1 to N frames per call; the backend is configured for ``batch`` frames
(clamped to the profile; default: the profile's opt N) and ``max_batch`` says how many
that is. A call with fewer frames is padded with zeros to the configured N (the frames of
a batch are independent, so the padding changes no frame's output), which keeps one input
shape and so the CUDA graphs valid; ``collect`` returns only the submitted frames' rows.

Threads: pycuda makes the primary context current only on the thread that imported it
(``pycuda.autoprimaryctx``). Every public method makes it current on the calling thread
for its duration (:meth:`TensorRTBackend.cuda_context`), so a backend made on one thread
can run on another (a ROS 2 executor's, the stream's engine thread). Device buffers,
pinned buffers, streams and events come from pycuda on the device's primary context
(``pycuda.autoprimaryctx``), the context TensorRT's runtime uses too.

The engine's sidecar is checked (TensorRT version, GPU, file hash) *before*
deserialising, see :func:`engines.trt.engine_info.check_compatible`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.backend import BackendError, DeviceUnavailableError
from engines.spec import ModelSpec, ModelSpecError
from engines.trt import compat
from engines.trt.engine_info import EngineMismatchError, check_compatible, read_engine_record

log = logging.getLogger(__name__)
NUM_SLOTS = 2


@dataclass(eq=False)  # a slot is a resource: compared by identity
class Slot:
    """One set of I/O buffers; a batch owns a slot from submit until collect."""

    host_in: np.ndarray  # pinned, (N, 3, H, W) engine input dtype
    dev_in: Any  # pycuda DeviceAllocation, same bytes
    dev_out: Any
    host_out: np.ndarray  # pinned, engine output shape and dtype
    uploaded: Any  # pycuda Event: H2D done
    done: Any  # pycuda Event: outputs are in host_out
    graph: Any = None  # CudaGraph of execute_async_v3 bound to this slot's buffers
    frames: int = 0  # rows of host_out that belong to the submitted batch (rest: padding)


class TensorRTBackend:
    """A TensorRT engine (``.engine`` / ``.plan``) on the current CUDA device.

    Args:
        model_path: engine file built by ``segstream build`` (with its sidecar).
        spec: the model sidecar.
        threads: unused (GPU backend); accepted for the factory's common signature.
        cuda_graph: capture ``execute_async_v3`` per slot into CUDA graphs and replay them
            (fixed shapes only; falls back to plain enqueue when capture fails).
        force: load an engine built on another GPU model of the same compute capability.
        batch: frames per call for an engine with a dynamic batch dimension, clamped to
            its optimisation profile (None: the profile's opt N); an engine with a fixed
            N always takes N.

    Raises:
        BackendError: TensorRT/pycuda missing, engine incompatible or unreadable, or an
            I/O layout other than one input and one output.
    """

    name = "tensorrt"

    def __init__(self, model_path: str | Path, spec: ModelSpec, *, threads: int | None = None,
                 cuda_graph: bool = False, force: bool = False,
                 batch: int | None = None) -> None:
        del threads
        model_path = Path(model_path)
        self.spec = spec
        try:
            trt = compat.import_tensorrt()
            cuda = compat.import_pycuda()
            device = compat.device_identity(cuda)
        except compat.TensorRTImportError as e:
            raise BackendError(str(e)) from e
        except compat.CudaContextError as e:
            raise DeviceUnavailableError(str(e)) from e
        self._trt, self._cuda = trt, cuda
        try:
            record = read_engine_record(model_path)
            data = model_path.read_bytes()  # hashed and deserialised: the same bytes
            check_compatible(record, tensorrt_version=trt.__version__, gpu_name=device.name,
                             compute_capability=device.compute_capability,
                             engine_path=model_path, force=force, device=device,
                             engine_bytes=data)
        except (EngineMismatchError, ModelSpecError) as e:
            raise BackendError(str(e)) from e
        except OSError as e:
            raise BackendError(f"cannot read the engine {model_path}: {e}") from e
        gpu_name = device.describe()
        self.record = record
        # pycuda.autoprimaryctx made the device's primary context current on this thread
        self._ctx = cuda.Context.get_current()
        self._logger = compat.trt_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise DeviceUnavailableError(
                f"TensorRT could not deserialise {model_path} (see the log above): out of "
                "device memory (on Jetson: system memory), or a damaged engine (rebuild it "
                "with `segstream build`)")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if compat.is_input(trt, self._engine, n)]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"{model_path}: expected one input and one output tensor, got "
                               f"inputs {inputs} and outputs {outputs}")
        self._in_name, self._out_name = inputs[0], outputs[0]
        self._in_dtype = compat.np_dtype(trt, self._engine.get_tensor_dtype(self._in_name))
        self._out_dtype = compat.np_dtype(trt, self._engine.get_tensor_dtype(self._out_name))
        self._context = self._engine.create_execution_context()
        self._copy_stream = cuda.Stream()  # H2D uploads
        self._compute_stream = cuda.Stream()  # inference, kernels, D2H
        # Blocking-sync events: collect() sleeps in the driver instead of spinning a CPU core
        # (on Jetson the CPU cores feed capture and publishing); no timing needed.
        self._event_flags = cuda.event_flags.BLOCKING_SYNC | cuda.event_flags.DISABLE_TIMING
        self._pending: deque[Slot] = deque()
        self._next = 0
        self._slots: list[Slot] = []
        self._use_graph = cuda_graph
        self._configure(self._initial_input_shape(batch))
        log.info("TensorRT %s engine %s: %s %s -> %s %s on %s (built %s, %s)",
                 trt.__version__, model_path.name, self._in_name, self._in_shape,
                 self._out_name, self._out_shape, gpu_name, record.built_at, record.precision)

    # -- shapes and buffers ------------------------------------------------------------
    def _initial_input_shape(self, batch: int | None) -> tuple[int, ...]:
        """The engine's static input shape, else its profile's opt shape with N =
        ``batch`` clamped to the profile's N range (None: the opt N)."""
        shape = tuple(self._engine.get_tensor_shape(self._in_name))
        if -1 not in shape:
            return shape
        lo, opt, hi = (tuple(s) for s in
                       self._engine.get_tensor_profile_shape(self._in_name, 0))
        n = opt[0] if batch is None else min(max(int(batch), lo[0]), hi[0])
        return (n, *opt[1:])

    def _configure(self, shape: tuple[int, ...]) -> None:
        """Set the input shape, (re)allocate both slots, capture graphs if asked."""
        self._drain()
        if not self._context.set_input_shape(self._in_name, shape):
            raise BackendError(f"input shape {shape} is outside the engine's optimisation "
                               f"profile {self.record.shapes}; rebuild with --min/--max-shape")
        self._in_shape = shape
        self._out_shape = tuple(self._context.get_tensor_shape(self._out_name))
        self._close_slots()
        cuda = self._cuda
        for _ in range(NUM_SLOTS):
            host_in = cuda.pagelocked_empty(self._in_shape, self._in_dtype)
            host_out = cuda.pagelocked_empty(self._out_shape, self._out_dtype)
            self._slots.append(Slot(host_in, cuda.mem_alloc(host_in.nbytes),
                                    cuda.mem_alloc(host_out.nbytes), host_out,
                                    cuda.Event(self._event_flags),
                                    cuda.Event(self._event_flags)))
        if self._use_graph:
            self._capture_graphs()

    def _capture_graphs(self) -> None:
        """Capture one graph per slot; any failure (the driver's, or an exception TensorRT
        raises inside capture) releases what was captured and runs without graphs."""
        from engines.trt.cudagraph import CudaGraph, CudaGraphError

        stream = self._compute_stream
        try:
            for slot in self._slots:
                self._bind(slot)
                # One plain run first: TensorRT finishes deferred setup outside capture.
                if not self._context.execute_async_v3(stream.handle):
                    raise CudaGraphError("warm-up execute_async_v3 failed")
                stream.synchronize()
                slot.graph = CudaGraph(
                    stream.handle, lambda: self._context.execute_async_v3(stream.handle))
        except Exception as e:  # TensorRT raises RuntimeError & co. inside capture too
            log.warning("CUDA graph capture failed, running without graphs: %s: %s",
                        type(e).__name__, e)
            self._use_graph = False
            for slot in self._slots:
                if slot.graph is not None:
                    slot.graph.close()
                    slot.graph = None
            stream.synchronize()

    def _bind(self, slot: Slot) -> None:
        self._context.set_tensor_address(self._in_name, int(slot.dev_in))
        self._context.set_tensor_address(self._out_name, int(slot.dev_out))

    # -- Backend protocol ----------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return tuple(self._in_shape)  # type: ignore[return-value]

    @property
    def input_dtype(self) -> np.dtype:
        return self._in_dtype

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self._out_shape

    @property
    def output_dtype(self) -> np.dtype:
        return self._out_dtype

    @property
    def uses_cuda_graph(self) -> bool:
        return self._use_graph

    @property
    def in_flight(self) -> int:
        """Batches that may be in flight at once (:meth:`submit` / :meth:`collect`)."""
        return NUM_SLOTS

    @property
    def max_batch(self) -> int:
        """Frames one call takes: the N the input is configured for (the engine's static
        N, or ``batch`` within its profile); smaller calls are padded up to it."""
        return int(self._in_shape[0])

    @contextmanager
    def cuda_context(self) -> Iterator[None]:
        """Make this backend's CUDA context current on the calling thread while inside.

        pycuda keeps a context stack per thread and aborts the process when a thread
        ends with a context still pushed, so a thread without one gets it pushed here and
        popped on the way out; on a thread where it is current this costs one query. A
        thread where another context is current (a second GPU, an application's own)
        gets ours pushed over it for the work, and its own back after.
        """
        if self._ctx is None or self._cuda.Context.get_current() == self._ctx:
            yield
            return
        self._ctx.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float -> (N, K, h, w) float32 logits or (N, H, W) labels."""
        if self._pending:
            raise BackendError("infer() called with batches in flight; collect() them first")
        self.submit(batch)
        return self.collect()

    def submit(self, batch: np.ndarray) -> None:
        """Queue a batch; returns once its upload and inference are queued (not finished).

        At most two batches are in flight; ``collect()`` returns them in order.
        """
        with self.cuda_context():
            self._submit(batch)

    def _submit(self, batch: np.ndarray) -> None:
        if len(self._pending) == NUM_SLOTS:
            raise BackendError(f"{NUM_SLOTS} batches already in flight: collect() one first")
        n = int(batch.shape[0])
        if n < self._in_shape[0] and tuple(batch.shape[1:]) == self._in_shape[1:]:
            slot = self.acquire_slot()  # a partial batch: zero padding up to the shape
            slot.host_in[n:] = 0
            np.copyto(slot.host_in[:n], batch, casting="same_kind")
            self._run_slot(slot, n)
            return
        if tuple(batch.shape) != self._in_shape:
            if self._pending:
                raise BackendError(f"batch shape {batch.shape} differs from the in-flight "
                                   f"{self._in_shape}: collect() before changing shapes")
            self._configure(tuple(batch.shape))
        slot = self.acquire_slot()
        np.copyto(slot.host_in, batch, casting="same_kind")  # float32 -> engine dtype
        self._run_slot(slot, n)

    def _run_slot(self, slot: Slot, frames: int) -> None:
        """Queue upload, inference and download of ``slot``'s filled host input."""
        slot.frames = frames
        try:
            self._cuda.memcpy_htod_async(slot.dev_in, slot.host_in, self._copy_stream)
            slot.uploaded.record(self._copy_stream)
            self._compute_stream.wait_for_event(slot.uploaded)
            self.enqueue(slot)
            self._cuda.memcpy_dtoh_async(slot.host_out, slot.dev_out, self._compute_stream)
        except BaseException:
            self.abandon()
            raise
        self.finish(slot)

    def ready(self) -> bool:
        """The oldest batch in flight has finished (collecting it will not wait)."""
        if not self._pending:
            return False
        with self.cuda_context():
            return bool(self._pending[0].done.query())

    def collect(self) -> np.ndarray:
        """Wait for the oldest submitted batch and return its output (a fresh array)."""
        if not self._pending:
            raise BackendError("collect() without a submitted batch")
        with self.cuda_context():
            slot = self.pop_finished()
        out = slot.host_out[:slot.frames or None].copy()
        if out.dtype == np.float16:
            out = out.astype(np.float32)  # protocol: float32 logits
        return out

    def close(self) -> None:
        with self.cuda_context():
            self._drain()
            self._close_slots()
        self._context = None
        self._engine = None
        self._runtime = None

    # -- building blocks shared with the all-GPU pipeline (engines.trt.pipeline) --------------
    @property
    def driver(self) -> Any:
        """The ``pycuda.driver`` module this backend allocates with."""
        return self._cuda

    @property
    def streams(self) -> tuple[Any, Any]:
        """(copy stream, compute stream)."""
        return self._copy_stream, self._compute_stream

    def acquire_slot(self) -> Slot:
        """The next free slot, round robin (the caller marks it with :meth:`finish`, or
        calls :meth:`abandon` when queueing its work failed; until then the same slot is
        handed out again, so a failed submit never hands out a slot still in flight)."""
        if len(self._pending) == NUM_SLOTS:
            raise BackendError(f"{NUM_SLOTS} batches already in flight: collect() one first")
        return self._slots[self._next]

    def enqueue(self, slot: Slot) -> None:
        """Queue inference on ``slot``'s device buffers on the compute stream."""
        stream = self._compute_stream
        if slot.graph is not None:
            slot.graph.launch(stream.handle)
            return
        self._bind(slot)
        if not self._context.execute_async_v3(stream.handle):
            raise BackendError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def finish(self, slot: Slot) -> None:
        """Record ``slot``'s completion on the compute stream and queue it for collect."""
        slot.done.record(self._compute_stream)
        self._pending.append(slot)
        self._next = (self._slots.index(slot) + 1) % NUM_SLOTS

    def abandon(self) -> None:
        """After a failed submit: wait until both streams are idle, so that whatever part
        of it was queued no longer reads the slot's buffers when the slot is reused."""
        self._copy_stream.synchronize()
        self._compute_stream.synchronize()

    def pop_finished(self) -> Slot:
        """Wait for the oldest in-flight slot and hand it back (pipeline use)."""
        if not self._pending:
            raise BackendError("nothing in flight")
        slot = self._pending.popleft()
        slot.done.synchronize()
        return slot

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft().done.synchronize()

    def _close_slots(self) -> None:
        for slot in self._slots:
            if slot.graph is not None:
                slot.graph.close()
            slot.dev_in.free()
            slot.dev_out.free()
        self._slots = []
        self._next = 0
