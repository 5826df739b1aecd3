"""GPU test helpers: skip cleanly where pycuda / TensorRT / a CUDA device is missing."""

from __future__ import annotations

import pytest

GPU_ONLY = "GPU-only, run tests/gpu/run_gpu_checks.sh on a CUDA machine"
SKIP_REASON = f"TensorRT not installed: {GPU_ONLY}"


def require_cuda() -> object:
    """pycuda.driver with the primary context current, or skip."""
    cuda = pytest.importorskip("pycuda.driver", reason=f"pycuda not installed: {GPU_ONLY}")
    try:
        import pycuda.autoprimaryctx  # noqa: F401
    except Exception as e:  # pycuda raises its own LogicError/RuntimeError without a device
        pytest.skip(f"no usable CUDA device ({e})")
    return cuda


def require_tensorrt() -> object:
    trt = pytest.importorskip("tensorrt", reason=SKIP_REASON)
    require_cuda()
    return trt
