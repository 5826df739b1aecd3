"""The ``Backend`` protocol and the one factory that creates backends.

A backend runs a segmentation network on a pre-processed batch. Backends are imported
lazily so that ``import engines`` never pulls in torch, TensorRT or pycuda.

Contract for every backend:
    input:  (N, 3, H, W) float32 (or float16 where the model asks), NCHW, RGB, normalised
            as the model's :class:`~engines.spec.ModelSpec` says.
    output: ``spec.output == "logits"``: (N, K, h, w) float32 class scores at the
            network's output stride; ``"labels"``: (N, H, W) integer class ids at input size.
    batch:  a backend that takes more than one frame per call says so in an attribute
            ``max_batch`` (ONNX Runtime created with ``batch=N``, a TensorRT engine built
            with a batch profile); without it, N is 1 (see :func:`max_batch_of`). The frames
            of a batch are independent: each one's output is what it would be alone.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from engines.spec import ModelSpec, sidecar_path

BACKENDS = ("onnxruntime", "torch", "tensorrt")
# How the engine's CPU threads wait between parallel sections (ONNX Runtime; see
# engines.ort_backend.OrtBackend): "auto" switches by measured load.
ENGINE_POLICIES = ("auto", "latency", "throughput")
# test-time augmentation of engines.segmenter.Segmenter: "flip" also runs each frame
# mirrored left-right and averages the two logit maps (two network runs per frame)
TTA_MODES = ("none", "flip")

_IMPL = {
    "onnxruntime": ("engines.ort_backend", "OrtBackend"),
    "torch": ("engines.torch_backend", "TorchBackend"),
    "tensorrt": ("engines.trt.backend", "TensorRTBackend"),
}

_SUFFIX = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt",
           ".pt": "torch", ".pth": "torch"}


class BackendError(RuntimeError):
    """A backend could not be created or failed to run; the message says why and what to do."""


class DeviceUnavailableError(BackendError):
    """The accelerator could not be used just now (no CUDA context: a driver not up yet at
    boot; an engine that did not deserialise: device memory, on Jetson shared with the
    system): unlike a bad model or option, trying again later may succeed."""


@runtime_checkable
class Backend(Protocol):
    """A loaded model that turns pre-processed batches into logits or labels."""

    name: str
    spec: ModelSpec

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(N, C, H, W) the backend expects; N is 1 unless built for batches."""
        ...

    @property
    def input_dtype(self) -> np.dtype:
        """float32 or float16."""
        ...

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run the network. (N, 3, H, W) -> (N, K, h, w) logits or (N, H, W) labels."""
        ...

    def close(self) -> None:
        """Release sessions, device buffers and streams."""
        ...


def max_batch_of(backend: object) -> int:
    """Frames one ``infer`` call of ``backend`` takes (its ``max_batch``, else 1)."""
    return max(1, int(getattr(backend, "max_batch", 1)))


def backend_for_path(model_path: str | Path) -> str:
    """Pick the backend from the model file suffix (.onnx, .engine/.plan, .pt)."""
    suffix = Path(model_path).suffix.lower()
    try:
        return _SUFFIX[suffix]
    except KeyError:
        raise BackendError(
            f"cannot tell the backend of {model_path!s} from its suffix {suffix!r}; "
            f"use one of {sorted(_SUFFIX)} or pass --backend {{{','.join(BACKENDS)}}}"
        ) from None


def create_backend(
    model_path: str | Path,
    backend: str | None = None,
    *,
    spec: ModelSpec | None = None,
    threads: int | None = None,
    **options: object,
) -> Backend:
    """Create a backend for ``model_path``.

    Args:
        model_path: ``.onnx`` (ONNX Runtime, or torch/TensorRT when asked), ``.engine`` /
            ``.plan`` (TensorRT) or ``.pt`` (torch checkpoint).
        backend: one of :data:`BACKENDS`; ``None`` picks by suffix.
        spec: the sidecar; loaded from ``model.json`` beside the model when ``None``
            (for a torch checkpoint without one, the spec saved in the checkpoint).
        threads: CPU threads for CPU backends (``None``: all cores, at most 4).
        options: backend-specific options (e.g. ``device="cuda"`` for torch).

    Raises:
        BackendError: unknown backend name, missing model file, missing dependency.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise BackendError(
            f"model file {model_path} not found; train one with `segstream train` or omit "
            "--model to use the shipped CamVid model"
        )
    name = backend or backend_for_path(model_path)
    if name not in _IMPL:
        raise BackendError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    if spec is None and not (name == "torch" and not sidecar_path(model_path).is_file()):
        spec = ModelSpec.load(sidecar_path(model_path))  # a .pt without one: its own spec
    module_name, cls_name = _IMPL[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendError(
            f"backend {name!r} is not available: {e}. "
            + {"tensorrt": "Install the GPU extra on a CUDA machine: pip install 'segstream[gpu]'.",
               "torch": "Install torch: pip install torch==2.13.0.",
               "onnxruntime": "Install onnxruntime: pip install onnxruntime."}[name]
        ) from e
    cls = getattr(module, cls_name)
    return cls(model_path, spec, threads=threads, **options)
