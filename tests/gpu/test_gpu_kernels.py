"""The CUDA kernels on a real GPU (pycuda), against the same NumPy references as the CPU
shim tests (tests/engines/kernel_cases.py), plus ahead-of-time cubins and async launches.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engines.cuda_kernels import KERNEL_DIR, CudaKernels, cuda_source, grid_for
from engines.kernel_refs import preprocess_packed_ref, upsample_argmax_f32
from tests.engines.kernel_cases import NORM, KernelParityCases
from tests.gpu.conftest import require_cuda

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def ops() -> CudaKernels:
    require_cuda()
    return CudaKernels(compile_fallback=False)  # the shipped precompiled image, no nvcc


class TestCudaKernels(KernelParityCases):
    """Every parity case, on the GPU (the precompiled image the package ships)."""


def test_precompiled_image_loads_without_nvcc() -> None:
    """What `segstream run` does: the shipped image for this GPU, no run-time compile."""
    cuda = require_cuda()
    major, minor = cuda.Context.get_device().compute_capability()
    kern = CudaKernels(compile_fallback=False)
    assert kern.origin.startswith("segstream_"), kern.origin
    print(f"sm_{major}{minor}: loaded {kern.origin}")


def test_run_time_compile_fallback() -> None:
    require_cuda()
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed: the run-time compile fallback cannot be exercised")
    kern = CudaKernels(prebuilt=None)
    frame = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    np.testing.assert_allclose(kern.preprocess(frame, (29, 41), NORM),
                               preprocess_packed_ref(frame, (29, 41), NORM), rtol=1e-5,
                               atol=2e-5)


def test_ahead_of_time_cubin(tmp_path: Path) -> None:
    cuda = require_cuda()
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not installed")
    major, minor = cuda.Context.get_device().compute_capability()
    src = tmp_path / "all.cu"
    src.write_text(cuda_source())
    cubin = tmp_path / "segstream.cubin"
    subprocess.run([nvcc, f"-arch=sm_{major}{minor}", "-cubin", "-O3", "-I", str(KERNEL_DIR),
                    "-o", str(cubin), str(src)], check=True)
    kern = CudaKernels(module_path=cubin)
    frame = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    np.testing.assert_allclose(kern.preprocess(frame, (29, 41), NORM),
                               preprocess_packed_ref(frame, (29, 41), NORM), rtol=1e-5,
                               atol=2e-5)


def test_async_launch_on_stream(ops: CudaKernels) -> None:
    cuda = require_cuda()
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((11, 45, 60)).astype(np.float32)
    stream = cuda.Stream()
    src = cuda.to_device(logits)
    dst = cuda.mem_alloc(360 * 480)
    ops.launch_async("seg_upsample_argmax_f32", grid_for(480, 360), ops.block, stream,
                     [int(src), 11, 45, 60, int(dst), 480, 360, 480])
    out = cuda.pagelocked_empty((360, 480), np.uint8)
    cuda.memcpy_dtoh_async(out, dst, stream)
    stream.synchronize()
    np.testing.assert_array_equal(out, upsample_argmax_f32(logits, 360, 480))
