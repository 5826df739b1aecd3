"""CUDA graph capture and replay through the CUDA driver API (libcuda, via ctypes).

pycuda streams expose their ``CUstream`` as ``stream.handle``; this module captures the
work an ``enqueue`` callback queues on such a stream (e.g. TensorRT's
``execute_async_v3``) into a graph and replays it with one ``cuGraphLaunch``, which cuts
the per-frame CPU launch cost of networks with many small layers. Uses only documented
driver entry points: ``cuStreamBeginCapture_v2``, ``cuStreamEndCapture``,
``cuGraphInstantiateWithFlags`` (CUDA >= 11.4), ``cuGraphLaunch``, ``cuGraphExecDestroy``,
``cuGraphDestroy``. The caller's context (pycuda's primary context) must be current.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache

CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1


class CudaGraphError(RuntimeError):
    """Capture, instantiation or launch of a CUDA graph failed (driver error named)."""


@cache
def _libcuda() -> ctypes.CDLL:
    # The driver's own soname first: find_library("cuda") can name the toolkit's link-time
    # stub libcuda.so, whose every call returns CUDA_ERROR_STUB_LIBRARY.
    errors = []
    for name in dict.fromkeys(("libcuda.so.1", ctypes.util.find_library("cuda"))):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as e:
            errors.append(str(e))
    else:
        raise CudaGraphError(f"cannot load the CUDA driver library ({'; '.join(errors)}); "
                             "CUDA graphs need an NVIDIA driver")
    vp, pvp = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
    for fn, args in (("cuStreamBeginCapture_v2", [vp, ctypes.c_int]),
                     ("cuStreamEndCapture", [vp, pvp]),
                     ("cuGraphInstantiateWithFlags", [pvp, vp, ctypes.c_ulonglong]),
                     ("cuGraphLaunch", [vp, vp]),
                     ("cuGraphExecDestroy", [vp]),
                     ("cuGraphDestroy", [vp]),
                     ("cuGetErrorName", [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)])):
        getattr(lib, fn).argtypes = args
        getattr(lib, fn).restype = ctypes.c_int
    return lib


def _check(rc: int, what: str) -> None:
    if rc != 0:
        name = ctypes.c_char_p()
        _libcuda().cuGetErrorName(rc, ctypes.byref(name))
        raise CudaGraphError(f"{what} failed: {(name.value or b'?').decode()} ({rc})")


class CudaGraph:
    """Work captured from one stream, replayable on any stream of the same context.

    Args:
        stream_handle: ``CUstream`` to capture on (``pycuda.driver.Stream().handle``);
            not the legacy default stream.
        enqueue: queues the work on that stream; it must not synchronise.
    """

    def __init__(self, stream_handle: int, enqueue: Callable[[], object]) -> None:
        lib = _libcuda()
        stream = ctypes.c_void_p(stream_handle)
        self._graph = ctypes.c_void_p()
        self._exec = ctypes.c_void_p()
        _check(lib.cuStreamBeginCapture_v2(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
               "cuStreamBeginCapture")
        try:
            result = enqueue()
        except BaseException as e:
            # Leave capture mode (or the stream stays unusable) and free the partial graph;
            # an error becomes a capture failure so callers fall back to plain launches.
            lib.cuStreamEndCapture(stream, ctypes.byref(self._graph))
            self.close()
            if not isinstance(e, Exception):
                raise  # KeyboardInterrupt, SystemExit
            raise CudaGraphError(f"the enqueued work raised during capture: "
                                 f"{type(e).__name__}: {e}") from e
        rc = lib.cuStreamEndCapture(stream, ctypes.byref(self._graph))
        try:
            if result is False:
                raise CudaGraphError("the enqueued work reported failure during capture")
            _check(rc, "cuStreamEndCapture")
            _check(lib.cuGraphInstantiateWithFlags(ctypes.byref(self._exec), self._graph, 0),
                   "cuGraphInstantiateWithFlags")
        except CudaGraphError:
            self.close()
            raise

    def launch(self, stream_handle: int) -> None:
        """Queue one replay on the stream."""
        _check(_libcuda().cuGraphLaunch(self._exec, ctypes.c_void_p(stream_handle)),
               "cuGraphLaunch")

    def close(self) -> None:
        lib = _libcuda()
        if self._exec:
            lib.cuGraphExecDestroy(self._exec)
            self._exec = ctypes.c_void_p()
        if self._graph:
            lib.cuGraphDestroy(self._graph)
            self._graph = ctypes.c_void_p()
