"""TensorRT version differences, in one place.

Supported: TensorRT 10.x and 11.x Python bindings (``import tensorrt``).

* Networks are strongly typed: layer precisions come from the ONNX tensor types (FP16
  weights from ``segstream export --fp16``, Q/DQ INT8 from ``segstream calibrate``).
  TensorRT 10 needs ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; TensorRT 11 is
  always strongly typed and deprecates the flag (ignored), so it is not passed there.
  ``EXPLICIT_BATCH`` is ignored since 10.0 (implicit batch is gone) and never passed.
* No builder precision flags (``BuilderFlag.FP16/INT8`` are deprecated with strong
  typing) and no implicit-quantization calibrators (``IInt8Calibrator``, deprecated).
* Name-based I/O (``num_io_tensors`` / ``get_tensor_name`` / ``set_tensor_address`` /
  ``execute_async_v3``), the only API left in 10+ (bindings were removed in 10.0).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from engines.trt.engine_info import DeviceIdentity

MIN_MAJOR = 10
GPU_ONLY_HINT = ("GPU-only: install TensorRT 10/11 and pycuda on a CUDA machine "
                 "(pip install 'segstream[gpu]', or JetPack 6 on Jetson)")


class TensorRTImportError(ImportError):
    """TensorRT (or pycuda) is not importable, or too old."""


class CudaContextError(RuntimeError):
    """No usable CUDA context/device (driver missing, no GPU, context creation failed)."""


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0, 26)``; trailing non-numeric parts are dropped."""
    parts = []
    for piece in version.split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
    if not parts:
        raise ValueError(f"not a version string: {version!r}")
    return tuple(parts)


def import_tensorrt() -> Any:
    """Import ``tensorrt`` and check it is 10.x or newer."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTImportError(f"TensorRT not installed ({e}); {GPU_ONLY_HINT}") from e
    major = version_tuple(trt.__version__)[0]
    if major < MIN_MAJOR:
        raise TensorRTImportError(
            f"TensorRT {trt.__version__} is too old: segstream needs TensorRT >= {MIN_MAJOR} "
            "(name-based I/O, strongly typed networks); JetPack 6 ships 10.x")
    return trt


def import_pycuda() -> Any:
    """``pycuda.driver`` with the device's primary context current (shared with TensorRT).

    Raises:
        TensorRTImportError: pycuda is not installed.
        CudaContextError: pycuda is there but no context could be made (no GPU or driver,
            a GPU busy in exclusive-process mode or hidden by CUDA_VISIBLE_DEVICES:
            ``pycuda.autoprimaryctx`` raises the driver's error, or pycuda's own
            RuntimeError when no device takes a context, at import time).
    """
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        raise TensorRTImportError(f"pycuda is not installed ({e}); {GPU_ONLY_HINT}") from e
    try:
        import pycuda.autoprimaryctx  # noqa: F401  (retains and pushes the primary context)
    except ImportError as e:
        raise TensorRTImportError(f"pycuda not usable ({e}); {GPU_ONLY_HINT}") from e
    except (cuda.Error, RuntimeError) as e:  # make_default_context raises RuntimeError
        raise CudaContextError(f"cannot create a CUDA context ({e}); check the NVIDIA driver "
                               "(nvidia-smi, or tegrastats on Jetson) and CUDA_VISIBLE_DEVICES"
                               ) from e
    return cuda


def trt_logger(trt: Any, *, verbose: bool = False) -> Any:
    """The process's one TensorRT logger, at WARNING (VERBOSE while ``verbose``).

    TensorRT keeps a single logger for every builder and runtime of a process: one created
    later with another logger logs through the first, which may have been freed by then
    (a build's local logger after the build returned). So every builder, parser and
    runtime here takes this one, kept alive for the process on the tensorrt module itself
    (so a stand-in module in tests gets its own). Each call sets the severity: a runtime
    made after a ``--verbose`` build logs at WARNING again.
    """
    logger = getattr(trt, "_segstream_logger", None)
    if logger is None:
        logger = trt.Logger(trt.Logger.WARNING)
        trt._segstream_logger = logger
    logger.min_severity = trt.Logger.VERBOSE if verbose else trt.Logger.WARNING
    return logger


def network_flags(trt: Any) -> int:
    """``create_network`` flags for a strongly typed network on this TensorRT version."""
    if version_tuple(trt.__version__)[0] >= 11:
        return 0  # always strongly typed; the flag is deprecated and ignored
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        raise TensorRTImportError(
            f"TensorRT {trt.__version__} has no STRONGLY_TYPED network flag; use TensorRT "
            ">= 10.0")
    return 1 << int(flag)


def parser_errors(parser: Any) -> list[str]:
    """Every ONNX parser error as one line: node, operator, description, source location."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = []
        for attr, label in (("node_name", "node"), ("node_operator", "op")):
            fn = getattr(err, attr, None)  # TensorRT >= 8.6
            value = fn() if fn is not None else ""
            if value:
                where.append(f"{label} {value}")
        if not where and err.node() >= 0:
            where.append(f"node #{err.node()}")
        desc = err.desc()
        src = f" [{err.file()}:{err.line()}]" if err.file() else ""
        lines.append(f"{', '.join(where) or 'graph'}: {desc}{src}")
    return lines


def set_workspace(trt: Any, config: Any, mib: int) -> None:
    """Cap the builder's scratch memory (``set_memory_pool_limit``; no max_workspace_size)."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(mib) << 20)


BOARD_MODEL_FILE = Path("/proc/device-tree/model")


def board_model(path: Path | None = None) -> str | None:
    """The Jetson board/module name (``"NVIDIA Jetson AGX Orin Developer Kit"``), or None
    where the file does not exist (desktop GPUs)."""
    try:
        raw = (path or BOARD_MODEL_FILE).read_bytes()
    except OSError:
        return None
    text = raw.rstrip(b"\0").decode("utf-8", "replace").strip()
    return text or None


def device_identity(cuda: Any) -> DeviceIdentity:
    """Identity of the device of the *current* CUDA context (the one pycuda's primary
    context made current, which TensorRT uses too), not blindly device 0.

    Raises:
        CudaContextError: no current context or the driver query failed.
    """
    error = getattr(cuda, "Error", RuntimeError)
    try:
        dev = cuda.Context.get_device()
        major, minor = dev.compute_capability()
        attr = cuda.device_attribute
        sm_count = int(dev.get_attribute(attr.MULTIPROCESSOR_COUNT))
        integrated = bool(dev.get_attribute(attr.INTEGRATED))
        total_mib = int(dev.total_memory()) >> 20
        driver = int(cuda.get_driver_version())  # e.g. 12060
        name = str(dev.name())
    except error as e:
        raise CudaContextError(f"cannot query the current CUDA device ({e}); check the "
                               "NVIDIA driver (nvidia-smi, or tegrastats on Jetson)") from e
    return DeviceIdentity(name=name, compute_capability=(int(major), int(minor)),
                          sm_count=sm_count, total_memory_mib=total_mib, integrated=integrated,
                          board=board_model() if integrated else None,
                          cuda_driver_version=f"{driver // 1000}.{driver % 1000 // 10}")


def np_dtype(trt: Any, dtype: Any) -> Any:
    """NumPy dtype of a TensorRT ``DataType``."""
    import numpy as np

    return np.dtype(trt.nptype(dtype))


def is_input(trt: Any, engine: Any, name: str) -> bool:
    return engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
