"""The CUDA kernels' arithmetic, verified on the CPU.

``engines/cuda/*.cu`` are compiled *unchanged* by g++ through ``hostshim.h`` (the CUDA
grid becomes a loop) and compared with the NumPy references: labels bit-exact, tensors
within float32 / float16 tolerance, on odd sizes, up- and down-scaling and odd pitches.
The nvcc tests compile the same files for Jetson Orin (sm_87) and Hopper (sm_90).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.cuda_kernels import (
    KERNEL_DIR,
    KERNEL_FILES,
    SIGNATURES,
    HostKernels,
    build_host_library,
    cuda_source,
    grid_for,
)
from engines.kernel_refs import preprocess_packed_ref, upsample_argmax_f32
from tests.engines.kernel_cases import NORM, KernelParityCases, padded

NVCC = shutil.which("nvcc")


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("g++") is None:
        pytest.skip("g++ not installed: cannot build the host kernel shim")
    return build_host_library(tmp_path_factory.mktemp("shim"))


@pytest.fixture(scope="module", params=[(32, 8), (7, 3)], ids=["block32x8", "block7x3"])
def ops(request: pytest.FixtureRequest, host_lib: Path) -> HostKernels:
    """Default launch geometry, and an odd one whose blocks overhang every edge."""
    return HostKernels(host_lib, block=request.param)


class TestHostKernels(KernelParityCases):
    """All parity cases on the g++ build of the kernels."""


def test_library_is_cached_by_source_hash(host_lib: Path) -> None:
    assert build_host_library(host_lib.parent) == host_lib


def test_every_signature_has_a_shim_and_a_kernel(host_lib: Path) -> None:
    src = "".join((KERNEL_DIR / f).read_text() for f in KERNEL_FILES)
    shim = (KERNEL_DIR / "hostshim.cpp").read_text()
    for name in SIGNATURES:
        assert f"__global__ void {name}(" in src
        assert f"void {name.replace('seg_', 'shim_', 1)}(" in shim


def test_out_of_range_threads_write_nothing(host_lib: Path) -> None:
    """An oversized grid must leave memory past the output untouched (bounds checks)."""
    kern = HostKernels(host_lib)
    logits = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    out = np.full(6 * 7 + 64, 0xAB, np.uint8)
    kern.launch("seg_upsample_argmax_f32", (5, 5), (4, 4),
                [logits.ctypes.data, 3, 4, 5, out.ctypes.data, 7, 6, 7])
    assert (out[42:] == 0xAB).all()
    frame = np.zeros((4, 4, 3), np.uint8)
    dst = np.full(3 * 2 * 3 + 16, -7.0, np.float32)
    kern.launch("seg_preprocess_packed_f32", (4, 4), (8, 8),
                [frame.ctypes.data, 12, 3, 4, 4, dst.ctypes.data, 2, 3, *NORM.kernel_args()])
    assert (dst[18:] == -7.0).all()


def test_grid_covers_output() -> None:
    assert grid_for(480, 360) == (15, 45)
    assert grid_for(41, 29, (32, 8)) == (2, 4)


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])
def test_nvcc_compiles_every_kernel(tmp_path: Path, arch: str) -> None:
    """All kernels build for Jetson Orin (sm_87) and H100 (sm_90) with no warnings."""
    src = tmp_path / "all.cu"
    src.write_text(cuda_source())
    cubin = tmp_path / f"segstream_{arch}.cubin"
    proc = subprocess.run(
        [NVCC, f"-arch={arch}", "-cubin", "-O3", "-Werror", "all-warnings", "-I", str(KERNEL_DIR),
         "-o", str(cubin), str(src)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    data = cubin.read_bytes()
    assert data[:4] == b"\x7fELF"
    for name in SIGNATURES:  # extern "C": unmangled symbols pycuda can look up
        assert name.encode() in data


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_nvcc_ptx_keeps_float_ops_unfused(tmp_path: Path) -> None:
    """The *_rn intrinsics must keep nvcc from fusing the blends into FMAs (parity rule)."""
    src = tmp_path / "post.cu"
    src.write_text('#include "postprocess.cu"\n')
    ptx = tmp_path / "post.ptx"
    subprocess.run([NVCC, "-arch=sm_87", "-ptx", "-O3", "-I", str(KERNEL_DIR), "-o", str(ptx),
                    str(src)], check=True, capture_output=True)
    text = ptx.read_text()
    assert "mul.rn.f32" in text and "add.rn.f32" in text
    assert "fma.rn.f32" not in text


sizes = st.tuples(st.integers(1, 40), st.integers(1, 40))


@settings(max_examples=40, deadline=None)
@given(src=sizes, out=sizes, k=st.integers(1, 7), seed=st.integers(0, 2**32 - 1),
       half=st.booleans())
def test_upsample_argmax_any_size(host_lib: Path, src, out, k, seed, half) -> None:
    """Any (K, h, w) -> (H, W), up or down: labels equal the float32 mirror bit for bit."""
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((k, *src)) * 3).astype(np.float16 if half else np.float32)
    got = HostKernels(host_lib).upsample_argmax(logits, out)
    np.testing.assert_array_equal(got, upsample_argmax_f32(logits, *out))


@settings(max_examples=30, deadline=None)
@given(src=sizes, out=sizes, channels=st.sampled_from([3, 4]), pad=st.integers(0, 9),
       seed=st.integers(0, 2**32 - 1))
def test_preprocess_any_size_and_pitch(host_lib: Path, src, out, channels, pad, seed) -> None:
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (*src, channels), dtype=np.uint8)
    got = HostKernels(host_lib).preprocess(padded(frame, pad, rng), out, NORM)
    np.testing.assert_allclose(got, preprocess_packed_ref(frame, out, NORM), rtol=1e-5,
                               atol=2e-5)
