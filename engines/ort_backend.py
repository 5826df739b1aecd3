"""ONNX Runtime backend: the embedded default, tuned for few CPU cores."""

from __future__ import annotations

import os
import queue
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from engines.backend import ENGINE_POLICIES, BackendError
from engines.spec import ModelSpec, ModelSpecError, sidecar_path


def default_threads() -> int:
    """All available cores, capped at 4 (more rarely helps a single small graph)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 4))


class OrtBackend:
    """ONNX Runtime on the CPU (or another execution provider when asked).

    Session options for small edge CPUs: explicit intra-op thread count, sequential
    execution, full graph optimisation, no spin-waiting between runs. ``policy`` (the
    engine thread policy of the stream pipeline, like OpenVINO's latency and throughput
    hints) decides how the ``threads`` are used:

    * ``None``: one session with all threads, no spinning (tools: predict, eval, bench).
    * ``"latency"``: one session with all threads that spin while a run is in progress
      and stop when it returns (``session.force_spinning_stop``), so a frame arriving
      after an idle gap gets the back-to-back engine time instead of waking sleeping
      threads at every layer.
    * ``"throughput"``: ``streams`` sessions (default 2, at most one per thread) that split
      the threads and run different calls at the same time (:meth:`submit` /
      :meth:`collect`), no spinning. A small network's layers use two threads poorly
      (Fast-SCNN 360x480: 1.4x one thread's speed) while two frames at once on a thread
      each come close to 2x; each call takes longer.
    * ``"auto"``: the sessions of both, switched between calls by whoever measures the
      load (:meth:`set_mode`; the stream pipeline's :class:`stream.policy.EngineGovernor`).

    ONNX Runtime fixes spinning and threads when a session is created (its ``RunOptions``
    have no such entry, as of 1.23-1.32), hence separate sessions; the weights are small,
    and a session's threads sleep while another one runs.

    ``batch`` > 1 makes the sessions take up to that many frames per call: a graph with a
    symbolic N is used as it is, one fixed at N = 1 is rewritten at load
    (:mod:`engines.onnx_batch`) and checked to treat the frames of a batch independently.

    Raises:
        BackendError: the model does not load, or cannot run batches (with the fix).
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | Path,
        spec: ModelSpec,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        batch: int = 1,
        policy: str | None = None,
        streams: int | None = None,
    ) -> None:
        if policy is not None and policy not in ENGINE_POLICIES:
            raise BackendError(f"engine policy must be one of {', '.join(ENGINE_POLICIES)}, "
                               f"got {policy!r}")
        if batch < 1:
            raise BackendError(f"batch must be >= 1, got {batch}")
        self.spec = spec
        self.policy = policy
        self.threads = threads or default_threads()
        # sessions of the throughput mode (default: 2, each with half the threads)
        self.streams = max(1, min(streams or 2, self.threads))
        self._providers = providers or ["CPUExecutionProvider"]
        from engines.onnx_batch import BatchRewriteError, dynamic_batch_bytes, input_batch
        from engines.onnx_portable import portable_model_bytes

        try:
            # ceil_mode AveragePools rewritten to mean the same on every ORT version
            source: str | bytes = portable_model_bytes(model_path) or str(model_path)
            rewritten: list[str] = []
            if batch > 1 and input_batch(_load_graph(source)) is not None:
                source, rewritten = dynamic_batch_bytes(source)
        except BatchRewriteError as e:
            raise BackendError(f"{model_path} cannot run batches of {batch}: {e}; re-export "
                               "it with a dynamic batch (`segstream export`) or leave out "
                               "--batch") from e
        except Exception as e:  # onnx's DecodeError & co.: not a model file
            raise BackendError(f"ONNX Runtime could not load {model_path}: {e}") from e
        each = max(1, self.threads // self.streams)
        plans = {"plain": [(self.threads, False)], "latency": [(self.threads, True)],
                 "throughput": [(each, False)] * self.streams}
        wanted = {None: ("plain",), "latency": ("latency",), "throughput": ("throughput",),
                  "auto": ("throughput", "latency")}[policy]
        self._modes = {m: [self._session(model_path, source, t, spin) for t, spin in plans[m]]
                       for m in wanted}
        self._mode = wanted[0]
        self._pool: ThreadPoolExecutor | None = None  # runs submit()ted calls
        self._idle: dict[str, queue.SimpleQueue] = {}  # mode -> sessions not running
        self._pending: deque[Future] = deque()
        self.last_call_ns = 0  # how long the last collect()ed call ran on its session
        sess = self._modes[self._mode][0]
        inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
        self._input_name = inp.name
        self._output_name = out.name
        shape = _static(inp.shape) or [None] * 4
        check_graph_against_spec(model_path, spec, shape, _static(out.shape))
        h, w = spec.input_size
        self._input_shape = (shape[0] or 1, shape[1] or 3, shape[2] or h, shape[3] or w)
        self._dtype = np.dtype(np.float16) if "float16" in inp.type else np.dtype(np.float32)
        self.max_batch = batch if shape[0] is None else 1  # frames per infer() call
        if spec.output == "logits" and _static(out.shape)[1:2] in ([None], []):
            # The class count is not in the graph's metadata: one inference tells it.
            got = self.infer(np.zeros(self._input_shape, self._dtype)).shape
            check_graph_against_spec(model_path, spec, list(self._input_shape), list(got))
        if rewritten:
            self._check_batches(model_path, batch)

    def _session(self, model_path: str | Path, source: str | bytes, threads: int,
                 spin: bool) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        so.add_session_config_entry("session.force_spinning_stop", "1")
        # x86 CPUs without VNNI run ORT's fast u8s8 int8 GEMM with VPMADDUBSW, whose int16
        # pair sums can saturate: the test suite's tiny models then agree with FP32 on ~92 %
        # of pixels instead of > 95 % (the shipped CamVid INT8 models lose < 0.1 mIoU).
        # SEGSTREAM_INT8_PRECISE=1 keeps 32-bit accumulation there, at about FP32 speed
        # (measured: Fast-SCNN INT8 71.5 fps vs FP32 77.8 on an AVX2 VM); it does nothing
        # on VNNI/ARM CPUs or float models. Off by default: INT8 is chosen for speed.
        if os.environ.get("SEGSTREAM_INT8_PRECISE", "") not in ("", "0"):
            so.add_session_config_entry("session.x64quantprecision", "1")
        so.log_severity_level = 3
        try:
            return ort.InferenceSession(source, so, providers=self._providers)
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise BackendError(f"ONNX Runtime could not load {model_path}: {e}") from e

    def _check_batches(self, model_path: str | Path, batch: int) -> None:
        """Refuse a rewritten graph that mixes or drops the frames of a batch."""
        from engines.onnx_batch import batch_mismatch

        try:
            why = batch_mismatch(self.infer, self._input_shape, self._dtype, n=min(batch, 2))
        except Exception as e:  # ORT's own types: the rewritten graph does not run
            why = f"it does not run with N = 2 ({type(e).__name__}: {e})"
        if why:
            raise BackendError(f"{model_path} fixes its batch at 1 and could not be made to "
                               f"run batches of {batch}: {why}; re-export it with a dynamic "
                               "batch (`segstream export`) or leave out --batch")

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return self._input_shape

    @property
    def input_dtype(self) -> np.dtype:
        return self._dtype

    @property
    def mode(self) -> str:
        """How the next calls run: ``plain``, ``latency`` or ``throughput``."""
        return self._mode

    @property
    def spinning(self) -> bool:
        """Whether the next calls run on the spinning (latency) session."""
        return self._mode == "latency"

    def set_mode(self, mode: str) -> str:
        """Run the next calls in ``mode`` (``latency`` or ``throughput``) when the policy
        has it (``"auto"`` has both); returns the mode now. Call it from the thread that
        calls :meth:`infer` / :meth:`submit`; calls in flight finish in their mode."""
        if mode in self._modes:
            self._mode = mode
        return self._mode

    @property
    def in_flight(self) -> int:
        """Calls that may run at the same time (:meth:`submit`): the current mode's sessions."""
        return len(self._modes[self._mode])

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float -> (N, K, h, w) logits or (N, H, W) labels."""
        return self._run(self._modes[self._mode][0], batch)

    def submit(self, batch: np.ndarray) -> None:
        """Start a call on a free session of the current mode and return; at most
        :attr:`in_flight` at once, :meth:`collect` returns them in order."""
        if len(self._pending) >= self.in_flight:
            raise BackendError(f"{len(self._pending)} calls in flight: collect() one first")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max(len(m) for m in self._modes.values()),
                                            thread_name_prefix="segstream-ort")
        if self._mode not in self._idle:
            self._idle[self._mode] = queue.SimpleQueue()
            for sess in self._modes[self._mode]:
                self._idle[self._mode].put(sess)
        self._pending.append(self._pool.submit(self._run_idle, self._idle[self._mode], batch))

    def ready(self) -> bool:
        """The oldest submitted call has finished (:meth:`collect` will not wait)."""
        return bool(self._pending) and self._pending[0].done()

    def collect(self) -> np.ndarray:
        """Wait for the oldest submitted call; its output. :attr:`last_call_ns` is then
        the time that call ran on its session (not the time it waited to be collected)."""
        if not self._pending:
            raise BackendError("collect() without a submitted call")
        out, self.last_call_ns = self._pending.popleft().result()
        return out

    def _run_idle(self, idle: queue.SimpleQueue, batch: np.ndarray) -> tuple[np.ndarray, int]:
        sess = idle.get()
        try:
            t0 = time.perf_counter_ns()
            out = self._run(sess, batch)
            return out, time.perf_counter_ns() - t0
        finally:
            idle.put(sess)

    def _run(self, sess: Any, batch: np.ndarray) -> np.ndarray:
        if batch.dtype != self._dtype:
            batch = batch.astype(self._dtype)
        return sess.run([self._output_name], {self._input_name: batch})[0]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._pending.clear()
        self._idle.clear()
        self._modes = {self._mode: []}


def _load_graph(source: str | bytes) -> object:
    import onnx

    if isinstance(source, bytes):
        return onnx.load_from_string(source)
    return onnx.load(source, load_external_data=False)


def _static(shape: list[object] | None) -> list[int | None]:
    """An ONNX Runtime shape with symbolic / unknown dimensions as None ([]: unknown rank)."""
    return [d if isinstance(d, int) and d > 0 else None for d in shape or []]


def graph_io_dims(model: Any) -> tuple[list[int | None], list[int | None]]:
    """(input dims, output dims) of an ``onnx.ModelProto``'s first graph input and output,
    None where a dimension is symbolic: the shapes :func:`check_graph_against_spec` takes,
    read without a session."""
    inp, out = (
        [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in (model.graph.input[0], model.graph.output[0]))
    return inp, out


def check_graph_against_spec(model_path: str | Path, spec: ModelSpec,
                             inp: list[int | None], out: list[int | None]) -> None:
    """Refuse a graph whose (static) input/output shapes disagree with its sidecar, so that
    a mismatch fails when the model loads, not at the first frame. Unknown dimensions
    (None) and an unknown rank ([]) are not checked.

    Raises:
        ModelSpecError: naming the model, the sidecar, both values and the fix.
    """
    where = f"{model_path} and its sidecar {sidecar_path(model_path)}"
    fix = "fix the sidecar or re-export the model (`segstream export`)"
    inp = inp or [None] * 4
    if len(inp) != 4:
        raise ModelSpecError(f"{where}: the graph's input has shape {inp}; expected "
                             "(N, 3, H, W)")
    if inp[1] not in (None, 3):
        raise ModelSpecError(f"{where}: the graph's input has {inp[1]} channels; expected 3 "
                             "(RGB)")
    h, w = spec.input_size
    if (inp[2] not in (None, h)) or (inp[3] not in (None, w)):
        raise ModelSpecError(f"{where} disagree: the sidecar's input_size is {h}x{w} (HxW) "
                             f"but the graph takes {inp[2] or '?'}x{inp[3] or '?'}; {fix}")
    k = spec.num_classes
    if not out:
        return
    if spec.output == "logits":
        if len(out) != 4:
            raise ModelSpecError(f"{where} disagree: the sidecar says output 'logits' "
                                 f"(N, K, h, w) but the graph outputs shape {out}; {fix}")
        if out[1] not in (None, k):
            raise ModelSpecError(f"{where} disagree: the sidecar lists {k} classes but the "
                                 f"graph outputs {out[1]}; {fix}")
    elif len(out) != 3:
        raise ModelSpecError(f"{where} disagree: the sidecar says output 'labels' (N, H, W) "
                             f"but the graph outputs shape {out}; {fix}")
