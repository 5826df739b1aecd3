"""Launchers for the fused CUDA kernels in ``engines/cuda/*.cu``.

Two executors share one set of array-level operations (:class:`KernelOps`):

* :class:`CudaKernels` runs the kernels on the GPU through pycuda. It loads the
  precompiled images shipped in ``engines/cuda/prebuilt`` (cubins per architecture plus a
  PTX for newer GPUs, built by ``scripts/build_kernels.py``, see :func:`load_prebuilt`), so
  no nvcc is needed at run time; only when none fits or loads does it compile the sources
  with nvcc (``SourceModule``). pycuda is imported lazily, so this module imports on
  machines without CUDA.
* :class:`HostKernels` runs the *same* kernel source compiled by g++ through
  ``engines/cuda/hostshim.h`` (one loop iteration per CUDA thread). It exists to verify
  the kernels' arithmetic on machines without a GPU; it is far too slow for production.

Array-level operations (numpy in, numpy out):
    preprocess(frame (H, W, 3|4) uint8 BGR/BGRx, rows may be padded) -> (1, 3, h, w)
    preprocess_nv12(luma (H, W) uint8, chroma (H/2, W) uint8) -> (1, 3, h, w)
    upsample_argmax(logits (K, h, w) float32/float16, (H, W)) -> (H, W) uint8
    colorize(labels (H, W) uint8, palette (256, 3) RGB) -> (H, W, 3) BGR
    overlay(frame (H, W, 3) BGR, labels (h, w), palette, alpha) -> (H, W, 3) BGR
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.atomic import staged
from engines.kernel_refs import Normalization

KERNEL_DIR = Path(__file__).resolve().parent / "cuda"
KERNEL_FILES = ("segstream_cuda.cuh", "preprocess.cu", "postprocess.cu", "colorize.cu")
BLOCK = (32, 8)  # threads per block (x, y): one warp per row segment, 256 threads

# Precompiled images shipped as package data (scripts/build_kernels.py writes them).
PREBUILT_DIR = KERNEL_DIR / "prebuilt"
MANIFEST = "manifest.json"
# Turing T4, Ampere A100 / RTX 30, Jetson Orin, Ada L4 / RTX 40, Hopper, Blackwell.
PREBUILT_ARCHS: tuple[str, ...] = ("sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90",
                                   "sm_100", "sm_120")
PREBUILT_PTX = "compute_75"  # JIT-compiled by the driver on GPUs without a cubin above
NVCC_FLAGS = ("-O3",)

log = logging.getLogger(__name__)

# Kernel name -> argument types ("P" pointer, "i" int32, "f" float32), in order.
SIGNATURES: dict[str, str] = {
    "seg_preprocess_packed_f32": "PiiiiPii" + "ffffff",
    "seg_preprocess_packed_f16": "PiiiiPii" + "ffffff",
    "seg_preprocess_nv12_f32": "PiPiiiPii" + "ffffff",
    "seg_preprocess_nv12_f16": "PiPiiiPii" + "ffffff",
    "seg_upsample_argmax_f32": "PiiiPiii",
    "seg_upsample_argmax_f16": "PiiiPiii",
    "seg_colorize": "PiiiPPi",
    "seg_overlay": "PiiiPPiiifPi",
}


class KernelError(RuntimeError):
    """A kernel could not be built, loaded or launched; the message says what to do."""


def grid_for(width: int, height: int, block: tuple[int, int] = BLOCK) -> tuple[int, int]:
    """Blocks needed to cover a (height, width) output with one thread per pixel."""
    return (-(-width // block[0]), -(-height // block[1]))


def kernel_digest() -> str:
    """sha256 over every kernel source file (changes whenever any kernel changes)."""
    h = hashlib.sha256()
    for name in KERNEL_FILES:
        h.update((KERNEL_DIR / name).read_bytes())
    return h.hexdigest()


def cuda_source() -> str:
    """One translation unit that includes every kernel file (for SourceModule / nvcc).

    The first line carries :func:`kernel_digest`, so compile caches keyed on the source
    text (pycuda's) are invalidated when an included file changes.
    """
    includes = "".join(f'#include "{name}"\n' for name in KERNEL_FILES[1:])
    return f"// segstream kernels {kernel_digest()}\n{includes}"


def _out_dtype_suffix(dtype: np.dtype | type) -> str:
    dt = np.dtype(dtype)
    if dt == np.float32:
        return "f32"
    if dt == np.float16:
        return "f16"
    raise ValueError(f"output dtype must be float32 or float16, got {dt}")


def _pitched_rows(arr: np.ndarray, pixel_bytes: int, what: str) -> tuple[np.ndarray, int]:
    """A uint8 image whose rows may be padded -> (flat byte view from its first byte, pitch).

    The view spans ``(H - 1) * pitch + W * pixel_bytes`` bytes, so it never reads past the
    last pixel even when the padding after the last row is absent.
    """
    if arr.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8, got {arr.dtype}")
    h, w = arr.shape[:2]
    inner = arr.strides[1:]
    expect = (pixel_bytes, 1) if arr.ndim == 3 else (1,)
    pitch = arr.strides[0] if h > 1 else w * pixel_bytes  # a 1-row stride is arbitrary
    if (w > 1 and inner[0] != pixel_bytes) or inner[1:] != expect[1:] or pitch < w * pixel_bytes:
        raise ValueError(f"{what}: pixels must be packed within each row (strides {arr.strides})")
    n = (h - 1) * pitch + w * pixel_bytes
    flat = np.lib.stride_tricks.as_strided(arr, shape=(n,), strides=(1,), writeable=False)
    return flat, pitch


class KernelOps(ABC):
    """Array-level operations over an executor that can allocate, copy and launch."""

    block: tuple[int, int] = BLOCK

    # -- executor primitives ---------------------------------------------------------
    @abstractmethod
    def _upload(self, data: np.ndarray) -> Any:
        """Copy a contiguous array to executor memory; returns a handle."""

    @abstractmethod
    def _alloc(self, nbytes: int) -> Any:
        """Uninitialised executor memory of ``nbytes``."""

    @abstractmethod
    def _download(self, handle: Any, shape: Sequence[int], dtype: np.dtype | type) -> np.ndarray:
        """Copy executor memory back into a new host array."""

    @abstractmethod
    def _ptr(self, handle: Any) -> int:
        """Address of the memory behind ``handle`` (for kernel arguments)."""

    @abstractmethod
    def launch(self, name: str, grid: tuple[int, int], block: tuple[int, int],
               args: Sequence[Any]) -> None:
        """Run kernel ``name`` and wait for it; pointer arguments are ints."""

    # -- operations ------------------------------------------------------------------
    def preprocess(self, frame: np.ndarray, out_hw: tuple[int, int], norm: Normalization,
                   dtype: np.dtype | type = np.float32) -> np.ndarray:
        """(H, W, 3|4) uint8 BGR/BGRx (rows may be padded) -> (1, 3, h, w) normalised RGB."""
        if frame.ndim != 3 or frame.shape[2] not in (3, 4):
            raise ValueError(f"expected (H, W, 3|4) uint8 BGR/BGRx frame, got {frame.shape}")
        src_h, src_w, ch = frame.shape
        flat, pitch = _pitched_rows(frame, ch, "frame")
        out_h, out_w = out_hw
        suffix = _out_dtype_suffix(dtype)
        src = self._upload(np.ascontiguousarray(flat))
        dst = self._alloc(3 * out_h * out_w * np.dtype(dtype).itemsize)
        self.launch(f"seg_preprocess_packed_{suffix}", grid_for(out_w, out_h, self.block),
                    self.block, [self._ptr(src), pitch, ch, src_h, src_w, self._ptr(dst),
                                 out_h, out_w, *norm.kernel_args()])
        return self._download(dst, (1, 3, out_h, out_w), dtype)

    def preprocess_nv12(self, luma: np.ndarray, chroma: np.ndarray, out_hw: tuple[int, int],
                        norm: Normalization, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """NV12 planes (rows may be padded) -> (1, 3, h, w) normalised RGB."""
        src_h, src_w = luma.shape
        if src_h % 2 or src_w % 2 or chroma.shape != (src_h // 2, src_w):
            raise ValueError(f"NV12 needs even (H, W) and chroma (H/2, W); got luma "
                             f"{luma.shape}, chroma {chroma.shape}")
        y_flat, y_pitch = _pitched_rows(luma, 1, "luma")
        uv_flat, uv_pitch = _pitched_rows(chroma, 1, "chroma")
        out_h, out_w = out_hw
        suffix = _out_dtype_suffix(dtype)
        y_dev = self._upload(np.ascontiguousarray(y_flat))
        uv_dev = self._upload(np.ascontiguousarray(uv_flat))
        dst = self._alloc(3 * out_h * out_w * np.dtype(dtype).itemsize)
        self.launch(f"seg_preprocess_nv12_{suffix}", grid_for(out_w, out_h, self.block),
                    self.block, [self._ptr(y_dev), y_pitch, self._ptr(uv_dev), uv_pitch,
                                 src_h, src_w, self._ptr(dst), out_h, out_w,
                                 *norm.kernel_args()])
        return self._download(dst, (1, 3, out_h, out_w), dtype)

    def upsample_argmax(self, logits: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
        """(K, h, w) float32/float16 logits -> (H, W) uint8 labels, ties to the lowest id."""
        if logits.ndim != 3 or logits.dtype not in (np.float32, np.float16):
            raise ValueError(f"expected (K, h, w) float32/float16 logits, got {logits.shape} "
                             f"{logits.dtype}")
        k, h, w = logits.shape
        if not 1 <= k <= 256:
            raise ValueError(f"uint8 labels hold at most 256 classes, got K={k}")
        out_h, out_w = out_hw
        suffix = _out_dtype_suffix(logits.dtype)
        src = self._upload(np.ascontiguousarray(logits))
        dst = self._alloc(out_h * out_w)
        self.launch(f"seg_upsample_argmax_{suffix}", grid_for(out_w, out_h, self.block),
                    self.block, [self._ptr(src), k, h, w, self._ptr(dst), out_w, out_h, out_w])
        return self._download(dst, (out_h, out_w), np.uint8)

    def colorize(self, labels: np.ndarray, palette_rgb: np.ndarray) -> np.ndarray:
        """(H, W) uint8 labels -> (H, W, 3) uint8 BGR."""
        h, w = labels.shape
        pal = self._upload(_check_palette(palette_rgb))
        lab = self._upload(np.ascontiguousarray(labels, np.uint8))
        dst = self._alloc(h * w * 3)
        self.launch("seg_colorize", grid_for(w, h, self.block), self.block,
                    [self._ptr(lab), w, h, w, self._ptr(pal), self._ptr(dst), 3 * w])
        return self._download(dst, (h, w, 3), np.uint8)

    def overlay(self, frame_bgr: np.ndarray, labels: np.ndarray, palette_rgb: np.ndarray,
                alpha: float = 0.5) -> np.ndarray:
        """Colourised labels (nearest-upsampled to the frame) blended over the frame."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
            raise ValueError(f"expected (H, W, 3) uint8 BGR frame, got {frame_bgr.shape}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        h, w = frame_bgr.shape[:2]
        lh, lw = labels.shape
        pal = self._upload(_check_palette(palette_rgb))
        lab = self._upload(np.ascontiguousarray(labels, np.uint8))
        frm = self._upload(np.ascontiguousarray(frame_bgr))
        dst = self._alloc(h * w * 3)
        self.launch("seg_overlay", grid_for(w, h, self.block), self.block,
                    [self._ptr(lab), lw, lh, lw, self._ptr(pal), self._ptr(frm), 3 * w, h, w,
                     np.float32(alpha), self._ptr(dst), 3 * w])
        return self._download(dst, (h, w, 3), np.uint8)


def _check_palette(palette_rgb: np.ndarray) -> np.ndarray:
    if palette_rgb.shape != (256, 3) or palette_rgb.dtype != np.uint8:
        raise ValueError(f"palette must be (256, 3) uint8 RGB (ModelSpec.palette()), got "
                         f"{palette_rgb.shape} {palette_rgb.dtype}")
    return np.ascontiguousarray(palette_rgb)


# ---------------------------------------------------------------------------------------
# Precompiled kernel images (no nvcc at run time)
# ---------------------------------------------------------------------------------------


def _arch_cc(arch: str) -> tuple[int, int]:
    """``"sm_87"`` / ``"compute_75"`` -> (8, 7) / (7, 5); ``"sm_100"`` -> (10, 0)."""
    m = re.fullmatch(r"(?:sm|compute)_(\d+)(\d)", arch)
    if not m:
        raise ValueError(f"not a CUDA architecture: {arch!r} (expected e.g. sm_87)")
    return int(m.group(1)), int(m.group(2))


def nvcc_version(nvcc: str = "nvcc") -> str:
    """``"13.0.88"`` from ``nvcc --version``.

    Raises:
        KernelError: nvcc not found or its output not understood.
    """
    exe = shutil.which(nvcc)
    if exe is None:
        raise KernelError(f"{nvcc} not found: install the CUDA toolkit (or put it on PATH)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"release [\d.]+, V([\d.]+)", out)
    if not m:
        raise KernelError(f"cannot read the version from `{exe} --version`: {out.strip()!r}")
    return m.group(1)


def build_prebuilt(out_dir: str | Path = PREBUILT_DIR, *, nvcc: str = "nvcc",
                   archs: Sequence[str] = PREBUILT_ARCHS,
                   ptx_arch: str | None = PREBUILT_PTX) -> Path:
    """Compile :func:`cuda_source` into one cubin per arch plus a PTX, and a manifest.

    The manifest (``manifest.json``) records the :func:`kernel_digest` of the sources, the
    nvcc version and flags, and each image's file, kind, architecture and sha256; the
    loader refuses images whose digest no longer matches the sources.

    Returns:
        The manifest path.
    Raises:
        KernelError: nvcc missing or a compilation failed (its output included).
    """
    exe = shutil.which(nvcc)
    version = nvcc_version(nvcc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    with tempfile.TemporaryDirectory(prefix="segstream-kernels-") as tmp:
        src = Path(tmp) / "segstream_all.cu"
        src.write_text(cuda_source())
        jobs = [(a, "cubin", f"segstream_{a.replace('_', '')}.cubin") for a in archs]
        if ptx_arch:
            jobs.append((ptx_arch, "ptx", f"segstream_{ptx_arch.replace('_', '')}.ptx"))
        for arch, kind, name in jobs:
            _arch_cc(arch)
            cmd = [str(exe), f"-arch={arch}", f"-{kind}", *NVCC_FLAGS, "-Werror",
                   "all-warnings", "-I", str(KERNEL_DIR), "-o", str(Path(tmp) / name), str(src)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise KernelError(f"nvcc failed for {arch}:\n{' '.join(cmd)}\n{proc.stderr}")
            data = (Path(tmp) / name).read_bytes()
            (out / name).write_bytes(data)
            images.append({"file": name, "kind": kind, "arch": arch,
                           "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"kernel_digest": kernel_digest(), "nvcc": version,
                "flags": list(NVCC_FLAGS), "images": images}
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(directory: str | Path = PREBUILT_DIR) -> dict[str, Any]:
    """The prebuilt manifest, checked to match the current kernel sources.

    Raises:
        KernelError: no manifest, malformed, or built from other sources (stale).
    """
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        images = manifest["images"]
        digest = manifest["kernel_digest"]
        for im in images:
            _arch_cc(im["arch"])
            if not isinstance(im["file"], str) or not isinstance(im["sha256"], str):
                raise ValueError(f"image entry {im!r:.80} needs 'file' and 'sha256' strings")
            if im["kind"] not in ("cubin", "ptx"):
                raise ValueError(f"unknown image kind {im['kind']!r}")
    except FileNotFoundError:
        raise KernelError(f"no precompiled kernels ({path} missing); build them with "
                          "python scripts/build_kernels.py") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise KernelError(f"{path} is unreadable or malformed ({e}); rebuild it with "
                          "python scripts/build_kernels.py") from None
    if digest != kernel_digest():
        raise KernelError(f"precompiled kernels in {path.parent} are stale (built from other "
                          "sources than engines/cuda/*.cu); rebuild them with "
                          "python scripts/build_kernels.py")
    return manifest


def select_images(manifest: dict[str, Any], cc: tuple[int, int]) -> list[dict[str, Any]]:
    """Images that can run on a GPU of compute capability ``cc``, best first.

    A cubin runs on its own major architecture at the same or a higher minor revision
    (an sm_86 cubin runs on sm_87 and sm_89); the exact match comes first. A PTX runs on
    any GPU of its architecture or newer (the driver JIT-compiles it; the driver must be at
    least as new as the nvcc that wrote it).
    """
    cubins, ptx = [], []
    for im in manifest["images"]:
        major, minor = _arch_cc(im["arch"])
        if im["kind"] == "cubin" and major == cc[0] and minor <= cc[1]:
            cubins.append((minor, im))
        elif im["kind"] == "ptx" and (major, minor) <= tuple(cc):
            ptx.append(((major, minor), im))
    return ([im for _, im in sorted(cubins, key=lambda t: -t[0])]
            + [im for _, im in sorted(ptx, key=lambda t: t[0], reverse=True)])


def load_prebuilt(cuda: Any, cc: tuple[int, int],
                  directory: str | Path = PREBUILT_DIR) -> tuple[Any, str]:
    """Load the best precompiled image for ``cc`` through ``cuda.module_from_buffer``.

    Args:
        cuda: ``pycuda.driver`` (a context current).
        cc: the device's compute capability.
    Returns:
        (module, a description of the image that loaded).
    Raises:
        KernelError: no manifest / stale, no image for this GPU, or the driver refused every
            candidate (each reason listed).
    """
    manifest = read_manifest(directory)
    candidates = select_images(manifest, cc)
    if not candidates:
        raise KernelError(f"no precompiled kernel image for sm_{cc[0]}{cc[1]} in {directory} "
                          f"(has {', '.join(im['arch'] for im in manifest['images'])})")
    driver_error = getattr(cuda, "Error", RuntimeError)
    reasons = []
    for im in candidates:
        path = Path(directory) / im["file"]
        try:
            data = path.read_bytes()
        except OSError as e:
            reasons.append(f"{im['file']}: {e}")
            continue
        if hashlib.sha256(data).hexdigest() != im["sha256"]:
            reasons.append(f"{im['file']}: sha256 does not match the manifest")
            continue
        try:
            module = cuda.module_from_buffer(data)
        except driver_error as e:
            reasons.append(f"{im['file']}: the driver refused it ({e})")
            continue
        return module, f"{im['file']} (nvcc {manifest['nvcc']})"
    raise KernelError(f"no precompiled kernel image loaded for sm_{cc[0]}{cc[1]}: "
                      + "; ".join(reasons) + _driver_hint(cuda, manifest["nvcc"]))


def _driver_hint(cuda: Any, nvcc: str) -> str:
    """Why a driver refuses every image, when it is older than the images' toolkit.

    Images from nvcc X.Y load only on drivers of CUDA X.Y or newer (a CUDA 13 image needs
    an r580 driver; JetPack 6 ships CUDA 12.2-12.6 drivers).
    """
    try:
        driver = int(cuda.get_driver_version())  # e.g. 12060 for CUDA 12.6
        major, minor = (int(x) for x in nvcc.split(".")[:2])
    except (AttributeError, TypeError, ValueError):
        return ""
    if driver >= major * 1000 + minor * 10:
        return ""
    return (f" (this driver runs CUDA {driver // 1000}.{driver % 1000 // 10}, the images "
            f"were built by nvcc {nvcc}: rebuild them on this machine with "
            "`python scripts/build_kernels.py` and this CUDA's nvcc, or put nvcc on PATH, "
            "e.g. /usr/local/cuda/bin on Jetson, for the run-time compile)")


# ---------------------------------------------------------------------------------------
# GPU executor (pycuda)
# ---------------------------------------------------------------------------------------


class CudaKernels(KernelOps):
    """The kernels on the current CUDA device via pycuda.

    Args:
        module_path: an ahead-of-time ``.cubin`` / ``.ptx`` / ``.fatbin`` built from
            :func:`cuda_source`, loaded as is.
        options: nvcc options for the run-time compile fallback.
        prebuilt: folder of precompiled images (default: the ones shipped in the package).
        compile_fallback: compile with nvcc when no precompiled image loads.

    Without ``module_path``: the precompiled image for this GPU (:func:`load_prebuilt`),
    else a run-time nvcc compile (pycuda caches it), else :class:`KernelError` naming every
    reason. ``origin`` says which one loaded.

    Uses ``pycuda.autoprimaryctx``: the device's primary context, shared with TensorRT
    and the CUDA runtime, so device pointers pass freely between them.

    Raises:
        KernelError: pycuda missing, no CUDA context, or the kernels could not be loaded.
    """

    def __init__(self, module_path: str | Path | None = None,
                 options: Sequence[str] = NVCC_FLAGS, *,
                 prebuilt: str | Path | None = PREBUILT_DIR,
                 compile_fallback: bool = True) -> None:
        from engines.trt import compat  # pycuda and its primary context: one place

        try:
            cuda = compat.import_pycuda()
        except compat.TensorRTImportError as e:
            raise KernelError(f"the CUDA kernels cannot run: {e}") from e
        except compat.CudaContextError as e:
            raise KernelError(f"no usable CUDA context for the kernels: {e}") from e
        try:
            cc = tuple(cuda.Context.get_device().compute_capability())
        except cuda.Error as e:
            raise KernelError(f"no usable CUDA context for the kernels ({e}); check the "
                              "NVIDIA driver") from e
        self._cuda = cuda
        self.module, self.origin = self._load(cuda, (int(cc[0]), int(cc[1])), module_path,
                                              options, prebuilt, compile_fallback)
        self._funcs = {}
        try:
            for name, sig in SIGNATURES.items():
                fn = self.module.get_function(name)
                fn.prepare(sig)
                self._funcs[name] = fn
        except cuda.Error as e:
            raise KernelError(f"kernel {name} missing from {self.origin} ({e}); rebuild the "
                              "images with python scripts/build_kernels.py") from e
        log.info("CUDA kernels: %s", self.origin)

    @staticmethod
    def _load(cuda: Any, cc: tuple[int, int], module_path: str | Path | None,
              options: Sequence[str], prebuilt: str | Path | None,
              compile_fallback: bool) -> tuple[Any, str]:
        if module_path is not None:
            try:
                return cuda.module_from_file(str(module_path)), str(module_path)
            except cuda.Error as e:
                raise KernelError(f"cannot load kernels from {module_path} ({e}); build it "
                                  f"for sm_{cc[0]}{cc[1]}") from e
        reasons = []
        if prebuilt is not None:
            try:
                return load_prebuilt(cuda, cc, prebuilt)
            except KernelError as e:
                reasons.append(str(e))
        if compile_fallback:
            try:
                from pycuda.compiler import SourceModule

                module = SourceModule(cuda_source(), no_extern_c=True,
                                      include_dirs=[str(KERNEL_DIR)], options=list(options))
                log.warning("CUDA kernels compiled at run time with nvcc (%s)", reasons[0]
                            if reasons else "no precompiled images")
                return module, f"run-time nvcc compile for sm_{cc[0]}{cc[1]}"
            except Exception as e:  # CompileError, nvcc missing (OSError/ExecError), driver
                reasons.append(f"run-time compile failed: {type(e).__name__}: {e}")
        raise KernelError("cannot load the CUDA kernels: " + "; ".join(reasons))

    def launch_async(self, name: str, grid: tuple[int, int], block: tuple[int, int],
                     stream: Any, args: Sequence[Any]) -> None:
        """Queue kernel ``name`` on ``stream`` (a pycuda Stream); pointers are ints."""
        self._funcs[name].prepared_async_call((grid[0], grid[1], 1), (block[0], block[1], 1),
                                              stream, *args)

    def launch(self, name: str, grid: tuple[int, int], block: tuple[int, int],
               args: Sequence[Any]) -> None:
        self._funcs[name].prepared_call((grid[0], grid[1], 1), (block[0], block[1], 1), *args)
        self._cuda.Context.synchronize()

    def _upload(self, data: np.ndarray) -> Any:
        return self._cuda.to_device(data)

    def _alloc(self, nbytes: int) -> Any:
        return self._cuda.mem_alloc(max(1, nbytes))

    def _download(self, handle: Any, shape: Sequence[int], dtype: np.dtype | type) -> np.ndarray:
        out = np.empty(shape, dtype)
        self._cuda.memcpy_dtoh(out, handle)
        return out

    def _ptr(self, handle: Any) -> int:
        return int(handle)


# ---------------------------------------------------------------------------------------
# CPU executor (same kernel source, g++ + hostshim.h)
# ---------------------------------------------------------------------------------------

_CTYPES = {"P": ctypes.c_void_p, "i": ctypes.c_int, "f": ctypes.c_float}
HOST_SOURCE = "hostshim.cpp"
HOST_FLAGS = ("-std=c++17", "-O2", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared",
              "-Wall", "-Wextra", "-Werror")


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "segstream" / "kernels"


def build_host_library(cache_dir: str | Path | None = None, compiler: str = "g++") -> Path:
    """Compile the kernels for the CPU (hostshim.cpp) into a shared library, cached by hash.

    Raises:
        KernelError: no C++ compiler, or the build failed (the compiler output is included).
    """
    cxx = shutil.which(compiler)
    if cxx is None:
        raise KernelError(f"{compiler} not found: install a C++17 compiler (apt install g++)")
    digest = hashlib.sha256()
    for name in (*KERNEL_FILES, "hostshim.h", HOST_SOURCE):
        digest.update((KERNEL_DIR / name).read_bytes())
    digest.update(" ".join(HOST_FLAGS).encode())
    out_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"libsegshim-{digest.hexdigest()[:16]}.so"
    if lib.is_file():
        return lib
    with staged(lib) as (tmp,):  # concurrent builders never see a half-written library
        cmd = [cxx, *HOST_FLAGS, "-x", "c++", str(KERNEL_DIR / HOST_SOURCE), "-o", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise KernelError(f"building the host kernel library failed:\n{' '.join(cmd)}\n"
                              f"{proc.stderr}")
    return lib


class HostKernels(KernelOps):
    """The kernels' own source, compiled by g++ and run on the CPU (for verification)."""

    def __init__(self, library: str | Path | None = None,
                 block: tuple[int, int] = BLOCK) -> None:
        self.block = block
        self._lib = ctypes.CDLL(str(library or build_host_library()))
        self._funcs = {}
        for name, sig in SIGNATURES.items():
            fn = getattr(self._lib, name.replace("seg_", "shim_", 1))
            fn.argtypes = [ctypes.c_uint] * 4 + [_CTYPES[c] for c in sig]
            fn.restype = None
            self._funcs[name] = fn

    def launch(self, name: str, grid: tuple[int, int], block: tuple[int, int],
               args: Sequence[Any]) -> None:
        self._funcs[name](grid[0], grid[1], block[0], block[1], *args)

    def _upload(self, data: np.ndarray) -> Any:
        return np.ascontiguousarray(data)

    def _alloc(self, nbytes: int) -> Any:
        return np.empty(max(1, nbytes), np.uint8)

    def _download(self, handle: Any, shape: Sequence[int], dtype: np.dtype | type) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return handle[:n].view(dtype).reshape(shape).copy()

    def _ptr(self, handle: Any) -> int:
        return handle.ctypes.data
