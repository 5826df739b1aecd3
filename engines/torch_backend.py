"""Torch reference backend: runs a training checkpoint (``.pt``) exactly as trained.

The reference the ONNX and TensorRT engines are compared against, and a way to run a
checkpoint before exporting it. Checkpoint contract (written by ``engines.train``)::

    {"arch": str, "arch_options": dict, "num_classes": int, "model": state_dict,
     "spec": ModelSpec.to_json(), "ema": state_dict or None, ...}
    # optimiser / RNG state etc. are ignored; "ema", where a run kept one, is the deployed
    # weights (engines.ema.deployed_state)

Loading is ``torch.load(weights_only=True)`` with numpy arrays allowed (the RNG state in
training checkpoints): no arbitrary pickled code runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engines.backend import BackendError
from engines.spec import ModelSpec, ModelSpecError

REQUIRED_KEYS = ("arch", "num_classes", "model")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint dict on the CPU without executing pickled code.

    Raises:
        BackendError: not a file torch can read, or not a segstream checkpoint.
    """
    import torch

    path = Path(path)
    try:
        reconstruct = np._core.multiarray._reconstruct  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        reconstruct = np.core.multiarray._reconstruct
    safe: list[Any] = [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    scoped = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        if scoped is None:  # torch 2.4: a process-wide allowlist of the same entries
            torch.serialization.add_safe_globals(safe)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        else:
            # The RNG state's arrays name numpy's module as the writer's numpy did:
            # numpy.core (1.x) or numpy._core (2.x); either is the same function here.
            # (torch >= 2.6 takes (function, name) pairs; 2.5 only the function itself.)
            if _torch_at_least(torch.__version__, (2, 6)):
                safe += [(reconstruct, f"{mod}.multiarray._reconstruct")
                         for mod in ("numpy.core", "numpy._core")]
            with scoped(safe):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BackendError(f"no checkpoint {path}: give the last.pt (or best.pt) of a "
                           "`segstream train` run folder") from None
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise BackendError(f"cannot read checkpoint {path}: {_load_failure(e)}; a "
                           "checkpoint is the last.pt (or best.pt) `segstream train` "
                           "writes") from e
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise BackendError(
            f"{path} is not a segstream training checkpoint: need keys {list(REQUIRED_KEYS)}, "
            f"found {keys}. Train with `segstream train` (a bare state_dict lacks the "
            "architecture name)")
    return ckpt


def _load_failure(e: Exception) -> str:
    """torch.load's reason in one line, without its advice to load unsafely.

    A refused weights-only load explains how to turn the safe load off and allow arbitrary
    code: not advice for a file of unknown origin, and not what segstream will do.
    """
    if isinstance(e, EOFError):
        return "the file is empty or cut short"
    text = str(e)
    if "Weights only load failed" in text:
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        reason = detail[0].strip() if detail and detail[0].strip() else type(e).__name__
        return (f"not a torch checkpoint, or it holds objects a safe (weights-only) load "
                f"refuses ({reason})")
    first = text.strip().splitlines()
    return first[0] if first else type(e).__name__


def _torch_at_least(version: str, wanted: tuple[int, int]) -> bool:
    """``"2.13.0+cpu"`` >= (2, 6)."""
    parts = version.split("+", maxsplit=1)[0].split(".")[:2]
    try:
        return (int(parts[0]), int(parts[1])) >= wanted
    except (ValueError, IndexError):
        return True  # a development build: assume current


def checkpoint_spec(ckpt: dict[str, Any], source: str) -> ModelSpec:
    """The :class:`ModelSpec` saved in a checkpoint (``ckpt["spec"]``)."""
    if "spec" not in ckpt:
        raise BackendError(f"{source} has no 'spec' entry and no JSON sidecar beside it; "
                           "write one with ModelSpec.save or retrain with `segstream train`")
    try:
        return ModelSpec.from_json(ckpt["spec"], source=source)
    except ModelSpecError as e:
        raise BackendError(str(e)) from e


def build_from_checkpoint(ckpt: dict[str, Any], source: str) -> Any:
    """Rebuild the registry network of ``ckpt`` and load its weights (strict). Eval mode."""
    from engines.ema import deployed_state
    from engines.registry import UnknownModelError, build_model

    try:
        model = build_model(ckpt["arch"], int(ckpt["num_classes"]),
                            **dict(ckpt.get("arch_options") or {}))
    except UnknownModelError as e:
        raise BackendError(f"{source}: {e}") from e
    try:
        model.load_state_dict(deployed_state(ckpt), strict=True)
    except RuntimeError as e:
        raise BackendError(f"{source}: weights do not fit architecture {ckpt['arch']!r} with "
                           f"options {ckpt.get('arch_options')}: {e}") from e
    return model.eval()


class TorchBackend:
    """A checkpoint in torch, ``torch.inference_mode``, CPU or CUDA.

    ``infer``: (N, 3, H, W) float32 -> logits (N, K, ceil(H/s), ceil(W/s)) float32 when
    ``spec.output == "logits"``, or (N, H, W) uint8 labels (bilinear upsample to the
    input size + argmax, as the ``--argmax`` ONNX export does) when it is ``"labels"``.

    Args:
        model_path: the ``.pt`` checkpoint.
        spec: the sidecar; ``None`` uses the spec saved inside the checkpoint.
        threads: torch intra-op threads (process-wide setting; ``None`` leaves it alone).
        device: ``"cpu"`` or ``"cuda"`` / ``"cuda:0"``.
    """

    name = "torch"

    def __init__(self, model_path: str | Path, spec: ModelSpec | None = None, *,
                 threads: int | None = None, device: str = "cpu") -> None:
        import torch

        model_path = Path(model_path)
        if model_path.suffix.lower() not in (".pt", ".pth"):
            raise BackendError(
                f"the torch backend runs training checkpoints (.pt), not {model_path.name}; "
                "run ONNX files with --backend onnxruntime")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device {device!r} asked but torch sees no CUDA GPU; "
                               "use device='cpu'")
        if threads:
            torch.set_num_threads(threads)
        ckpt = load_checkpoint(model_path)
        self.spec = spec if spec is not None else checkpoint_spec(ckpt, str(model_path))
        if int(ckpt["num_classes"]) != self.spec.num_classes:
            raise BackendError(
                f"{model_path}: checkpoint has {ckpt['num_classes']} classes, the sidecar "
                f"{self.spec.num_classes}; fix or delete the stale sidecar")
        self.device = torch.device(device)
        self._model = build_from_checkpoint(ckpt, str(model_path)).to(self.device)
        h, w = self.spec.input_size
        self._input_shape = (1, 3, h, w)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return self._input_shape

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float -> (N, K, h, w) float32 logits or (N, H, W) uint8 labels."""
        import torch
        import torch.nn.functional as F

        if self._model is None:
            raise BackendError("TorchBackend.infer called after close()")
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise BackendError(f"expected a (N, 3, H, W) batch, got shape {batch.shape}")
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            out = self._model(x)  # (N, K, h, w)
            if self.spec.output == "labels":
                if out.shape[-2:] != x.shape[-2:]:
                    out = F.interpolate(out, size=x.shape[-2:], mode="bilinear",
                                        align_corners=False)
                return out.argmax(dim=1).to(torch.uint8).cpu().numpy()  # (N, H, W)
            return out.float().cpu().numpy()

    def close(self) -> None:
        self._model = None
