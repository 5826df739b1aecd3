"""Exponential moving average (EMA) of a network's weights during training.

``--ema DECAY`` keeps, beside the trained weights, their running average
``avg <- avg + (1 - d) * (w - avg)`` after every optimiser step, with the decay warmed up as
``d = min(DECAY, (1 + n) / (10 + n))`` for the n-th update (a young average follows the
weights closely). Floating-point parameters and buffers (BatchNorm running statistics
included) are averaged; integer buffers (``num_batches_tracked``) are copied. The average
is what such a run deploys: checkpoints keep it under ``"ema"`` beside the trained weights
(``"model"``, which a ``--resume`` continues from), and :func:`deployed_state` picks it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["ModelEMA", "deployed_state"]


class ModelEMA:
    """The averaged copy of ``model`` (same device, dtype and memory format).

    Args:
        model: the network being trained (not a DDP wrapper).
        decay: the average's decay per update, in (0, 1); ``1 / (1 - decay)`` is about the
            number of optimiser steps it spans (0.999: 1,000 steps).
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses (warmed up over the first updates)."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards ``model``'s current weights (after an optimiser step)."""
        d = self.current_decay()
        self.updates += 1
        trained = model.state_dict()
        for name, avg in self.module.state_dict().items():
            w = trained[name].detach()
            if avg.is_floating_point():
                avg.lerp_(w.to(avg.dtype), 1.0 - d)
            else:
                avg.copy_(w)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged parameters and buffers (tensors of the averaged module itself)."""
        return self.module.state_dict()

    def load(self, state: dict[str, torch.Tensor], updates: int) -> None:
        """Restore a saved average (``--resume``)."""
        self.module.load_state_dict(state)
        self.updates = int(updates)


def deployed_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a checkpoint deploys: its EMA where the run kept one, else its trained
    weights."""
    ema = ckpt.get("ema")
    return ema if ema is not None else ckpt["model"]
