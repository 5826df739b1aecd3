"""Where and how a training run runs: processes and devices (DDP under torchrun),
seeding, the autocast precision and the data prefetch depth. Policy only; the loop is
:func:`engines.train.train`."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np

# Passive OpenMP waiting, as engines/train.py sets it: only effective before torch first
# initialises OpenMP, so also here for whoever imports this module first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.distributed as dist

from engines.train_config import TrainConfig


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed() -> DistInfo:
    """Initialise DDP when launched by torchrun (``WORLD_SIZE`` > 1), else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
            backend = "nccl"
        else:
            device, backend = torch.device("cpu"), "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        return DistInfo(dist.get_rank(), world, local_rank, device)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return DistInfo(0, 1, 0, device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_bf16_supported() -> bool:
    """True when oneDNN runs bf16 natively here (AVX-512 BF16 / AMX); without it bf16
    convolutions fall back to a slow reference path (measured 5x slower on AVX2)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run: float16 on CUDA (``amp``), bfloat16 on a CPU that has
    it (``bf16`` auto/on), else None (float32)."""
    if device.type == "cuda":
        return torch.float16 if cfg.amp else None
    if cfg.bf16 == "on" or (cfg.bf16 == "auto" and cpu_bf16_supported()):
        return torch.bfloat16
    return None


def prefetch_depth(cfg: TrainConfig, device: torch.device) -> int:
    """Batches to prepare ahead on a thread: ``cfg.prefetch``, or when unset 2 where a core
    is spare beside the training threads (a GPU does the maths, or torch uses fewer threads
    than this process may run on) and 0 otherwise: on 2 cores with 2 torch threads the
    extra thread gained 6-10 % on one recipe and cost about 10 % on another (0.78-1.12x
    per round; docs/training.md)."""
    if cfg.workers:
        return 0
    if cfg.prefetch is not None:
        return cfg.prefetch
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1
    return 2 if device.type != "cpu" or cores > torch.get_num_threads() else 0
