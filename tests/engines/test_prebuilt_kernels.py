"""Precompiled CUDA kernels shipped in engines/cuda/prebuilt, and the loader the GPU path uses.

Checked here without a GPU: every listed architecture has an image, each matches the
manifest's sha256 and the current .cu sources' digest, carries every entry point, and nvcc
(when installed, same release) rebuilds it byte for byte. The loader (``CudaKernels``) runs
against a stand-in ``pycuda.driver`` that hands the image bytes it was given back as a
module, so the choice of image, the driver-refusal fallback and the run-time compile
fallback are exercised as on a GPU machine.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from engines.cuda_kernels import (
    PREBUILT_ARCHS,
    PREBUILT_DIR,
    PREBUILT_PTX,
    SIGNATURES,
    CudaKernels,
    KernelError,
    build_prebuilt,
    kernel_digest,
    nvcc_version,
    read_manifest,
    select_images,
)

NVCC = shutil.which("nvcc")


def test_manifest_matches_the_sources() -> None:
    """Fails after a kernel edit until `python scripts/build_kernels.py` is rerun."""
    manifest = read_manifest(PREBUILT_DIR)
    assert manifest["kernel_digest"] == kernel_digest()


def test_every_listed_architecture_has_a_valid_image() -> None:
    manifest = read_manifest(PREBUILT_DIR)
    by_arch = {im["arch"]: im for im in manifest["images"]}
    assert set(by_arch) == {*PREBUILT_ARCHS, PREBUILT_PTX}
    for arch, im in by_arch.items():
        data = (PREBUILT_DIR / im["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == im["sha256"], arch
        if im["kind"] == "cubin":
            assert data[:4] == b"\x7fELF", arch
        else:
            text = data.decode()
            assert f".target sm_{arch.split('_')[1]}" in text
            assert "fma.rn.f32" not in text  # bit-exact parity rule, as in the PTX test
        for name in SIGNATURES:
            assert name.encode() in data, (arch, name)


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_nvcc_rebuilds_the_shipped_images(tmp_path: Path) -> None:
    manifest = read_manifest(PREBUILT_DIR)
    if nvcc_version() != manifest["nvcc"]:
        pytest.skip(f"nvcc {nvcc_version()} here, images built by nvcc {manifest['nvcc']}: "
                    "bytes differ between releases")
    rebuilt = json.loads(build_prebuilt(tmp_path, archs=("sm_87", "sm_90")).read_text())
    shipped = {im["file"]: im["sha256"] for im in manifest["images"]}
    for im in rebuilt["images"]:
        assert shipped[im["file"]] == im["sha256"], im["file"]


def test_image_choice_per_gpu() -> None:
    manifest = read_manifest(PREBUILT_DIR)

    def files(cc: tuple[int, int]) -> list[str]:
        return [im["file"] for im in select_images(manifest, cc)]

    assert files((8, 7)) == ["segstream_sm87.cubin", "segstream_sm86.cubin",
                             "segstream_sm80.cubin", "segstream_compute75.ptx"]
    assert files((7, 5))[0] == "segstream_sm75.cubin"
    assert files((12, 1))[0] == "segstream_sm120.cubin"  # same major, lower minor
    assert files((11, 0)) == ["segstream_compute75.ptx"]  # no cubin: the driver JITs PTX
    assert files((7, 0)) == []  # Volta: older than every image


# -- the loader against a stand-in pycuda ---------------------------------------------------


class FakeDriverError(Exception):
    pass


class FakeModule:
    def __init__(self, image: bytes) -> None:
        self.image = image

    def get_function(self, name: str) -> SimpleNamespace:
        if name.encode() not in self.image:
            raise FakeDriverError(f"cuModuleGetFunction failed: named symbol not found {name}")
        return SimpleNamespace(prepare=lambda sig: None)


def install_fake_pycuda(monkeypatch: pytest.MonkeyPatch, cc: tuple[int, int],
                        refuse: tuple[str, ...] = (), compiles: bool = False,
                        driver_version: int = 13000) -> list[str]:
    """pycuda stand-in for a GPU of capability ``cc``; returns the loaded-image log."""
    loaded: list[str] = []

    def module_from_buffer(data: bytes) -> FakeModule:
        if _image_name(data) in refuse:
            raise FakeDriverError("cuModuleLoadData failed: CUDA_ERROR_NO_BINARY_FOR_GPU")
        loaded.append(_image_name(data))
        return FakeModule(data)

    driver = ModuleType("pycuda.driver")
    driver.Error = FakeDriverError  # type: ignore[attr-defined]
    driver.Context = SimpleNamespace(  # type: ignore[attr-defined]
        get_device=lambda: SimpleNamespace(compute_capability=lambda: cc))
    driver.module_from_buffer = module_from_buffer  # type: ignore[attr-defined]
    driver.get_driver_version = lambda: driver_version  # type: ignore[attr-defined]
    compiler = ModuleType("pycuda.compiler")

    def source_module(source: str, **kwargs: object) -> FakeModule:
        if not compiles:
            raise OSError("nvcc: No such file or directory")
        loaded.append("run-time compile")
        return FakeModule(" ".join(SIGNATURES).encode())

    compiler.SourceModule = source_module  # type: ignore[attr-defined]
    pkg = ModuleType("pycuda")
    pkg.driver, pkg.compiler = driver, compiler  # type: ignore[attr-defined]
    for name, mod in (("pycuda", pkg), ("pycuda.driver", driver),
                      ("pycuda.autoprimaryctx", ModuleType("pycuda.autoprimaryctx")),
                      ("pycuda.compiler", compiler)):
        monkeypatch.setitem(sys.modules, name, mod)
    return loaded


_HASHES = {im["sha256"]: im["file"] for im in read_manifest(PREBUILT_DIR)["images"]}


def _image_name(data: bytes) -> str:
    return _HASHES.get(hashlib.sha256(data).hexdigest(), "unknown image")


def test_orin_loads_its_cubin_from_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = install_fake_pycuda(monkeypatch, (8, 7))
    kernels = CudaKernels()
    assert loaded == ["segstream_sm87.cubin"]
    assert kernels.origin.startswith("segstream_sm87.cubin")
    assert set(kernels._funcs) == set(SIGNATURES)


def test_driver_refusal_tries_the_next_image(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = install_fake_pycuda(monkeypatch, (8, 7), refuse=("segstream_sm87.cubin",))
    CudaKernels()
    assert loaded == ["segstream_sm86.cubin"]


def test_stale_images_fall_back_to_run_time_compile(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "prebuilt"
    shutil.copytree(PREBUILT_DIR, stale)
    manifest = json.loads((stale / "manifest.json").read_text())
    manifest["kernel_digest"] = "0" * 64
    (stale / "manifest.json").write_text(json.dumps(manifest))
    loaded = install_fake_pycuda(monkeypatch, (8, 7), compiles=True)
    kernels = CudaKernels(prebuilt=stale)
    assert loaded == ["run-time compile"] and "run-time nvcc" in kernels.origin


def test_nothing_loads_names_every_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_pycuda(monkeypatch, (7, 0))  # Volta: no image, and no nvcc
    with pytest.raises(KernelError) as exc:
        CudaKernels()
    assert "no precompiled kernel image for sm_70" in str(exc.value)
    assert "run-time compile failed: OSError" in str(exc.value)


def test_a_driver_older_than_the_images_says_how_to_get_kernels(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """JetPack 6 (a CUDA 12.6 driver) refuses images from nvcc 13: the error names the
    driver, the toolkit and the two ways out, not only the driver's refusals."""
    install_fake_pycuda(monkeypatch, (8, 7), driver_version=12060,
                        refuse=tuple(im["file"] for im in read_manifest(PREBUILT_DIR)["images"]))
    with pytest.raises(KernelError) as exc:
        CudaKernels()
    nvcc = read_manifest(PREBUILT_DIR)["nvcc"]
    assert f"this driver runs CUDA 12.6, the images were built by nvcc {nvcc}" in str(exc.value)
    assert "scripts/build_kernels.py" in str(exc.value) and "/usr/local/cuda/bin" in str(exc.value)
    assert "run-time compile failed: OSError" in str(exc.value)
