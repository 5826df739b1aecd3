"""The curve PNG of a training run: loss and val mIoU per epoch, drawn from its ``log.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

from engines.atomic import staged


def plot_curves(log_path: Path, png: Path) -> Path | None:
    """Loss and val mIoU per epoch from ``log.jsonl`` to a PNG (needs matplotlib: the
    ``train`` extra); returns None, silently, without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["epoch"] for r in rows], [r["loss"] for r in rows], color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    val = [r for r in rows if "val_miou" in r]
    if val:
        ax2 = ax.twinx()
        ax2.plot([r["epoch"] for r in val], [r["val_miou"] * 100 for r in val], "o-",
                 color="tab:red")
        ax2.set_ylabel("val mIoU (%)", color="tab:red")
    ax.set_title(log_path.parent.name)
    fig.tight_layout()
    try:
        with staged(png) as (tmp,):
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return png
