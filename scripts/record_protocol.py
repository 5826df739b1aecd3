"""Record the training protocol of a shipped model in its sidecar(s).

    .venv/bin/python scripts/record_protocol.py engines/models/camvid_litefpn.json \
        engines/models/camvid_litefpn.int8.json \
        --train-only-report runs/reports/litefpn_val.json \
        --final-run runs/litefpn_trainval

The CamVid protocol (docs/training.md, "Protocol"): the recipe is chosen on val with a run
trained on **train only**; the shipped weights come from a final run of the same recipe on
**train+val**. Val then says nothing about the shipped weights (they saw it), so this
script writes into each sidecar's ``metrics``:

- ``protocol``: training split of the shipped weights, how the checkpoint was chosen, the
  train-only run's val mIoU and per-class IoU (from ``segstream eval --out`` of that run's
  export), and the final run's epochs, last loss and recipe (from its ``log.jsonl`` and
  ``last.pt`` config; the splits and frame counts from the sidecar's ``training_data``);
- any top-level figures scored on a split the final run trained on (``val_miou``,
  ``per_class_iou``, ... from ``segstream eval --record`` or ``calibrate``) are moved under
  ``seen_split_fit`` with a note, so no tool or reader takes them for held-out accuracy.

Nothing is computed here: every figure comes from the files given. Without
``--final-run`` it records a train-only shipped model (the train-only figures are then
its own held-out val figures).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_run(run_dir: Path) -> dict:
    """Epochs, frames, last loss and summed epoch time of a finished training run."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()
            if line.strip()]
    if not rows:
        raise SystemExit(f"{run_dir}/log.jsonl is empty: not a finished run")
    from engines.torch_backend import load_checkpoint  # the checkpoint holds the run's config

    ckpt = load_checkpoint(run_dir / "last.pt")
    cfg = ckpt.get("config") or {}
    if ckpt.get("epoch") != cfg.get("epochs"):
        raise SystemExit(f"{run_dir}/last.pt is epoch {ckpt.get('epoch')} of "
                         f"{cfg.get('epochs')}: resume the run to its end first")
    last = {}
    for r in rows:  # a resumed run may repeat epochs: keep the latest line per epoch
        last[r["epoch"]] = r
    sched = (ckpt.get("scheduler") or {}).get("lr_lambdas") or [{}]
    steps = sched[0].get("total_steps") if isinstance(sched[0], dict) else None
    recipe_keys = ("crop", "scale", "lr", "batch_size", "class_weight", "encoder_lr_mult",
                   "warmup_epochs", "arch_options", "pretrained", "ohem", "mix", "mix_prob",
                   "photometric", "distill", "distill_weight", "distill_temperature",
                   "distill_balanced", "seed", "bf16", "ema")
    run = {"split": cfg.get("train_split", "train"), "epochs": ckpt["epoch"],
           "optimizer_steps": steps, "final_loss": last[ckpt["epoch"]]["loss"],
           "recipe": {k: cfg.get(k) for k in recipe_keys
                      if k in cfg and (k != "mix_prob" or cfg.get("mix") is not None)
                      and (not k.startswith("distill_") or cfg.get("distill"))}}
    # logged since 2026-12-03; the kept line per epoch (a resume replaces earlier ones)
    autocast = sorted({r["autocast"] for r in last.values() if "autocast" in r})
    if autocast:
        run["autocast"] = "+".join(autocast)
    return run


def split_frames(sidecar: dict) -> str:
    """The data part of the sidecar's training_data line ('camvid:DIR train (367) + ...')."""
    return sidecar.get("training_data", "").split(";")[0]


def record(path: Path, report: dict, final: dict | None,
           train_only_run: dict | None = None) -> None:
    doc = json.loads(path.read_text())
    metrics = dict(doc.get("metrics", {}))
    train_only = {"val_miou": report["miou"], "per_class_iou": report["per_class_iou"],
                  "pixel_acc": report.get("pixel_acc"), "eval_split": report.get("data"),
                  "eval_backend": report.get("backend"), **(train_only_run or {})}
    if final is None:
        protocol = {"training_split": split_frames(doc),
                    "model_selection": "recipe chosen on val; final-epoch checkpoint, not "
                                       "selected by its val score",
                    "train_only_val_miou": report["miou"], "train_only": train_only,
                    "train_val_run": None,
                    "note": "no train+val run of this recipe has been shipped yet"}
    else:
        from engines.evaluate import VAL_FIGURE_KEYS

        seen = {k: metrics.pop(k) for k in VAL_FIGURE_KEYS if k in metrics}
        if seen or metrics.get("seen_split_fit"):
            # what `segstream eval --record` already filed there wins over top-level
            # figures (e.g. the training loop's val score of a run that validated on val)
            seen = {**seen, **metrics.get("seen_split_fit", {})}
            from engines.evaluate import SEEN_SPLIT_NOTE

            seen["note"] = f"{SEEN_SPLIT_NOTE}; see protocol.train_only"
            metrics["seen_split_fit"] = seen
        protocol = {"training_split": split_frames(doc) or final["split"],
                    "model_selection": "recipe chosen on val with a train-only run; shipped "
                                       "weights = final epoch of the train+val run (no "
                                       "selection on any score)",
                    "train_only_val_miou": report["miou"], "train_only": train_only,
                    "train_val_run": {k: final[k] for k in ("epochs", "optimizer_steps",
                                                             "final_loss", "recipe",
                                                             "autocast")
                                      if final.get(k) is not None},
                    "note": "val was in the shipped weights' training data: the val figures "
                            "here are the train-only run of the same recipe"}
        quant = metrics.get("quantization")
        if isinstance(quant, dict) and quant.get("eval_source"):
            quant["eval_note"] = ("fp32/int8 mIoU and drop measured on a split the FP32 "
                                  "weights were trained on: read the drop and the "
                                  "agreement, not the level")
    metrics["protocol"] = protocol
    doc["metrics"] = metrics
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{path}: protocol recorded ({protocol['training_split']})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sidecars", nargs="+", type=Path, help="model JSON sidecars to update")
    p.add_argument("--train-only-report", type=Path, required=True,
                   help="segstream eval --out JSON of the train-only run's model on val")
    p.add_argument("--final-run", type=Path, default=None,
                   help="run folder (log.jsonl, last.pt) of the shipped train+val run")
    p.add_argument("--train-only-epochs", type=int, default=None,
                   help="epochs of the train-only run (recorded beside its figures)")
    p.add_argument("--train-only-steps", type=int, default=None,
                   help="optimiser steps of the train-only run (e.g. 108 x 45 = 4860): a "
                        "train+val run may match its steps rather than its epochs")
    args = p.parse_args(argv)
    report = json.loads(args.train_only_report.read_text())
    run = {k: v for k, v in (("epochs", args.train_only_epochs),
                             ("optimizer_steps", args.train_only_steps)) if v is not None}
    run["report"] = args.train_only_report.as_posix()  # tests tie a committed one to these
    final = load_run(args.final_run) if args.final_run else None
    for side in args.sidecars:
        if not side.is_file():
            print(f"error: no sidecar {side}", file=sys.stderr)
            return 2
        record(side, report, final, run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
