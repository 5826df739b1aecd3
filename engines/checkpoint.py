"""Training checkpoints: atomic writes, safe reads, RNG state, and rebuilding a network.

A checkpoint is a dict (written by :func:`engines.train.train`, read by
``engines.torch_backend``)::

    {"arch": str, "arch_options": dict, "num_classes": int, "model": state_dict,
     "spec": ModelSpec.to_json(), "epoch": int (epochs completed), "optimizer": ...,
     "scheduler": ..., "scaler": ..., "best_miou": float,
     "rng": {...}, "rng_ranks": [{...} for each DDP rank] or None, "config": dict,
     "ema": state_dict or None, "ema_updates": int}

``"model"`` holds the trained weights (what ``--resume`` continues); a run with ``--ema``
deploys the average in ``"ema"`` (:func:`engines.ema.deployed_state`): export, eval,
``--init-from`` and the torch backend load it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.atomic import staged
from engines.backend import BackendError
from engines.ema import deployed_state
from engines.registry import build_model
from engines.spec import ModelSpec
from engines.train_config import TrainConfig

__all__ = ["TRAINING_ONLY_OPTIONS", "load_checkpoint_model", "load_init_weights",
           "read_checkpoint", "rng_state", "save_atomic", "set_rng_state"]

# --arch-options that change training only, not the network's weights or graph: a
# fine-tuning run (--init-from, e.g. QAT) may set them differently from its source run.
TRAINING_ONLY_OPTIONS = frozenset({"drop_path"})


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save to a staged file moved into place: a crash never leaves half a file."""
    with staged(path) as (tmp,):
        torch.save(obj, tmp)


def read_checkpoint(path: Path, what: str) -> dict[str, Any]:
    """A training checkpoint read without running pickled code (tensors, numpy arrays and
    plain Python values only: a checkpoint from elsewhere cannot execute anything)."""
    from engines.torch_backend import load_checkpoint

    try:
        return load_checkpoint(path)
    except BackendError as e:
        raise ValueError(f"{what}: {e}") from None


def rng_state() -> dict[str, Any]:
    """The state of every RNG training draws from (torch, NumPy, Python, CUDA)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (a resumed run draws what it would have)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_init_weights(model: torch.nn.Module, cfg: TrainConfig, num_classes: int) -> None:
    """Start from the weights of another run's checkpoint (same architecture and classes)."""
    path = Path(cfg.init_from)
    if not path.is_file():
        raise FileNotFoundError(f"--init-from: no checkpoint {path}")
    ckpt = read_checkpoint(path, "--init-from")
    if ckpt.get("arch") != cfg.model or ckpt.get("num_classes") != num_classes:
        raise ValueError(f"--init-from: {path} is a {ckpt.get('arch')!r} model with "
                         f"{ckpt.get('num_classes')} classes; this run trains {cfg.model!r} "
                         f"with {num_classes}")

    def structural(opts: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in opts.items() if k not in TRAINING_ONLY_OPTIONS}

    if structural(dict(ckpt.get("arch_options", {}))) != structural(dict(cfg.arch_options)):
        raise ValueError(f"--init-from: {path} was built with --arch-options "
                         f"{json.dumps(ckpt.get('arch_options', {}))}; pass the same "
                         f"(training-only options may differ: "
                         f"{', '.join(sorted(TRAINING_ONLY_OPTIONS))})")
    model.load_state_dict(deployed_state(ckpt))


def load_checkpoint_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module,
                                                                          ModelSpec]:
    """Rebuild the network of a training checkpoint in eval mode, with its spec."""
    ckpt = read_checkpoint(Path(path), "checkpoint")
    model = build_model(ckpt["arch"], ckpt["num_classes"], **ckpt.get("arch_options", {}))
    model.load_state_dict(deployed_state(ckpt))
    return model.eval().to(device), ModelSpec.from_json(ckpt["spec"], source=str(path))
