"""Train a registered segmentation architecture on a segmentation dataset.

Single process (CPU or one GPU) or multi-GPU with ``torchrun`` (DDP; detected from
``WORLD_SIZE``). Checkpoints every epoch to ``<out>/last.pt`` and ``<out>/best.pt`` (by
validation mIoU), a JSON line per epoch in ``<out>/log.jsonl``; ``resume`` restarts from
``last.pt`` with model, optimiser, scheduler, epoch and RNG state.

Checkpoint dict (shared with ``engines.torch_backend``)::

    {"arch": str, "arch_options": dict, "num_classes": int, "model": state_dict,
     "spec": ModelSpec.to_json(), "epoch": int (epochs completed), "optimizer": ...,
     "scheduler": ..., "best_miou": float, "rng": {...}, "config": dict}

Run ``python -m engines.train --help`` or ``segstream train --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Passive OpenMP waiting: with the default spin-wait, torch's intra-op threads thrash when
# other processes share the cores (a 10x slowdown measured on 2 shared cores). Only
# effective when set before torch first initialises OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from engines.data.augment import AugmentConfig
from engines.data.readers import IGNORE, SplitData, open_split
from engines.data.torch_dataset import EvalDataset, TrainDataset
from engines.losses import CLASS_WEIGHTINGS, SegLoss, class_weights
from engines.metrics import ConfusionMatrix, SegMetrics
from engines.quant_sim import enable_fake_quant
from engines.registry import build_model
from engines.spec import ModelSpec

OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored in every checkpoint).

    ``crop`` and ``input_size`` are (H, W). ``input_size`` is the deployment/eval input
    of the network (None: the size of the first validation image). ``lr`` is the peak
    learning rate after ``warmup_epochs`` of linear warmup; it then decays with a poly
    (power 0.9) schedule per iteration to 0 at the last step.
    """

    model: str
    data: str
    out: str
    epochs: int = 100
    batch_size: int = 8
    crop: tuple[int, int] = (360, 480)
    scale: tuple[float, float] = (0.5, 2.0)
    lr: float = 4e-3
    optimizer: str = "adamw"
    weight_decay: float | None = None  # None: 0.01 for AdamW, 5e-4 for SGD
    warmup_epochs: float = 1.0
    class_weight: str = "mfb"
    ohem: float | None = None
    aux_weight: float = 0.4
    arch_options: dict[str, Any] = field(default_factory=dict)
    fmt: str = "auto"
    train_split: str = "train"
    val_split: str | None = "val"
    val_every: int = 1
    input_size: tuple[int, int] | None = None
    seed: int = 0
    threads: int | None = None
    workers: int = 0
    amp: bool = True
    resume: bool = False
    max_steps_per_epoch: int | None = None  # for smoke tests; None = full epochs
    stop_after: int | None = None  # stop after this epoch (schedule still ends at epochs)
    name: str | None = None
    init_from: str | None = None  # checkpoint whose weights start the run (fine-tuning)
    qat: bool = False  # simulate INT8 in every conv (engines.quant_sim) while training

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.class_weight not in CLASS_WEIGHTINGS:
            raise ValueError(f"class_weight must be one of {CLASS_WEIGHTINGS}, "
                             f"got {self.class_weight!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs, batch_size and lr must be positive")


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


class WarmupPoly:
    """LR multiplier per iteration: linear warmup to 1, then ``(1 - t)^power`` to 0.

    A class (not a lambda) so that ``LambdaLR.state_dict()`` can store it.
    """

    def __init__(self, total_steps: int, warmup_steps: int, power: float = 0.9) -> None:
        self.total_steps = max(1, total_steps)
        self.warmup_steps = max(0, min(warmup_steps, self.total_steps - 1))
        self.power = power

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        t = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return max(0.0, 1.0 - t) ** self.power


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


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate_torch(model: torch.nn.Module, data: SplitData, spec: ModelSpec,
                   device: torch.device, batch_size: int = 4) -> SegMetrics:
    """Whole-split validation of a torch model at ``spec.input_size``; logits are
    upsampled (bilinear) to each label's size before argmax."""
    model.eval()
    loader = DataLoader(EvalDataset(data, spec.mean, spec.std, spec.input_size),
                        batch_size=1 if _mixed_sizes(data) else batch_size)
    cm = ConfusionMatrix(spec.num_classes, IGNORE)
    for x, y in loader:
        logits = model(x.to(device))  # (N, K, h, w)
        if logits.shape[-2:] != y.shape[-2:]:
            logits = torch.nn.functional.interpolate(logits, size=y.shape[-2:],
                                                     mode="bilinear", align_corners=False)
        cm.update(logits.argmax(1).cpu().numpy(), y.numpy())
    return cm.result()


def _mixed_sizes(data: SplitData) -> bool:
    return len({lbl.shape for lbl in data.labels}) > 1


def build_spec(cfg: TrainConfig, data: SplitData, input_size: tuple[int, int],
               metrics: dict[str, Any] | None = None) -> ModelSpec:
    name = cfg.name or f"{data.source.split(':')[0]}-{cfg.model}"
    return ModelSpec(
        name=name, architecture=cfg.model, classes=data.classes, input_size=input_size,
        output="logits", ignore_index=IGNORE,
        training_data=f"{data.source}; crop {cfg.crop[0]}x{cfg.crop[1]}, {cfg.epochs} epochs",
        metrics=metrics or {},
    )


def train(cfg: TrainConfig, *, progress: bool = True) -> Path:
    """Run training; returns the path of the best checkpoint (``last.pt`` if no val)."""
    from tqdm import tqdm

    info = setup_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    _seed_everything(cfg.seed + info.rank)

    train_data = open_split(cfg.data, cfg.train_split, cfg.fmt, progress=progress)
    val_data = open_split(cfg.data, cfg.val_split, cfg.fmt, progress=progress) \
        if cfg.val_split else None
    input_size = cfg.input_size or (val_data or train_data).labels[0].shape
    input_size = (int(input_size[0]), int(input_size[1]))
    spec = build_spec(cfg, train_data, input_size)

    model = build_model(cfg.model, train_data.num_classes, **cfg.arch_options).to(info.device)
    if cfg.init_from and not cfg.resume:
        _load_init_weights(model, cfg, train_data.num_classes, info.device)
    if cfg.qat:
        enable_fake_quant(model)
    if info.distributed and info.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    w = class_weights(cfg.class_weight, train_data.labels, train_data.num_classes)
    weight = None if w is None else torch.from_numpy(w)
    criterion = SegLoss(weight, IGNORE, cfg.aux_weight, cfg.ohem).to(info.device)

    dataset = TrainDataset(train_data, AugmentConfig(crop=cfg.crop, scale=cfg.scale),
                           spec.mean, spec.std, seed=cfg.seed)
    sampler = DistributedSampler(dataset, seed=cfg.seed, drop_last=True) \
        if info.distributed else None
    per_rank = len(dataset) // info.world_size
    if per_rank < cfg.batch_size:
        raise ValueError(f"batch size {cfg.batch_size} is larger than the {per_rank} training "
                         f"images per process; lower --batch-size")
    steps = per_rank // cfg.batch_size
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)

    if cfg.optimizer == "sgd":
        wd = 5e-4 if cfg.weight_decay is None else cfg.weight_decay
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=wd)
    else:
        wd = 1e-2 if cfg.weight_decay is None else cfg.weight_decay
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, WarmupPoly(cfg.epochs * steps, round(cfg.warmup_epochs * steps)))
    use_amp = cfg.amp and info.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best_miou = 0, -1.0
    last_path, best_path = out / "last.pt", out / "best.pt"
    if cfg.resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint {last_path}; start without "
                                    "--resume or point --out at the run to continue")
        ckpt = torch.load(last_path, map_location=info.device, weights_only=False)
        if ckpt["arch"] != cfg.model:
            raise ValueError(f"--resume: {last_path} is a {ckpt['arch']!r} run, not "
                             f"{cfg.model!r}")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        # Re-target the schedule to this run's --epochs (lets a resumed run end earlier or
        # later than first planned; the saved step count is kept).
        sched.lr_lambdas[0] = WarmupPoly(cfg.epochs * steps, round(cfg.warmup_epochs * steps))
        if "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_miou = int(ckpt["epoch"]), float(ckpt["best_miou"])
        _set_rng_state(ckpt["rng"])

    net = model
    if info.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)

    def make_ckpt(epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "arch": cfg.model, "arch_options": dict(cfg.arch_options),
            "num_classes": train_data.num_classes, "model": model.state_dict(),
            "spec": build_spec(cfg, train_data, input_size, metrics).to_json(),
            "epoch": epoch, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "best_miou": best_miou, "rng": _rng_state(),
            "config": asdict(cfg),
        }

    log_path = out / "log.jsonl"
    t_run = time.monotonic()
    for epoch in range(start_epoch, cfg.epochs):
        dataset.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                            shuffle=sampler is None, generator=gen, drop_last=True,
                            num_workers=cfg.workers, pin_memory=info.device.type == "cuda")
        net.train()
        t0, loss_sum, seen = time.monotonic(), 0.0, 0
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="it",
                   disable=not (progress and info.is_main), dynamic_ncols=True)
        for step, (x_cpu, y_cpu) in enumerate(loader):
            if step >= steps:
                break
            x = x_cpu.to(info.device, non_blocking=True)  # (N, 3, H, W) float32
            y = y_cpu.to(info.device, non_blocking=True)  # (N, H, W) int64
            with torch.autocast(info.device.type, dtype=torch.float16, enabled=use_amp):
                loss = criterion(net(x), y)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {epoch + 1} step {step}; lower --lr "
                    f"(now {cfg.lr}) or use --class-weight none. Last good checkpoint: "
                    f"{last_path}")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += loss.item()
            seen += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        bar.close()
        record: dict[str, Any] = {
            "epoch": epoch + 1, "loss": round(loss_sum / max(1, seen), 5),
            "lr": sched.get_last_lr()[0], "epoch_s": round(time.monotonic() - t0, 1),
        }
        if info.is_main:
            is_last = epoch + 1 == cfg.epochs
            metrics: dict[str, Any] = {}
            improved = False
            if val_data is not None and ((epoch + 1) % cfg.val_every == 0 or is_last):
                m = evaluate_torch(model, val_data, spec, info.device)
                record.update(val_miou=round(m.miou, 4), val_pixel_acc=round(m.pixel_acc, 4))
                metrics = {"val_miou": round(m.miou, 4), "val_pixel_acc": round(m.pixel_acc, 4),
                           "per_class_iou": m.per_class([c.name for c in train_data.classes]),
                           "epoch": epoch + 1}
                improved = m.miou > best_miou
                if improved:
                    best_miou = m.miou
                print(f"epoch {epoch + 1}: loss {record['loss']:.4f}  val mIoU "
                      f"{m.miou * 100:.2f}  (best {best_miou * 100:.2f})  "
                      f"{record['epoch_s']:.0f}s", flush=True)
            record["wall_s"] = round(time.monotonic() - t_run, 1)
            ckpt = make_ckpt(epoch + 1, metrics)
            _save_atomic(ckpt, last_path)
            if improved or (val_data is None and is_last):
                _save_atomic(ckpt, best_path)
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if info.distributed:
            dist.barrier()
        if cfg.stop_after is not None and epoch + 1 >= cfg.stop_after:
            break
    if info.distributed:
        dist.destroy_process_group()
    return best_path if best_path.is_file() else last_path


def _load_init_weights(model: torch.nn.Module, cfg: TrainConfig, num_classes: int,
                       device: torch.device) -> None:
    """Start from the weights of another run's checkpoint (same architecture and classes)."""
    path = Path(cfg.init_from)
    if not path.is_file():
        raise FileNotFoundError(f"--init-from: no checkpoint {path}")
    ckpt = torch.load(path, map_location=device, weights_only=False)
    if ckpt.get("arch") != cfg.model or ckpt.get("num_classes") != num_classes:
        raise ValueError(f"--init-from: {path} is a {ckpt.get('arch')!r} model with "
                         f"{ckpt.get('num_classes')} classes; this run trains {cfg.model!r} "
                         f"with {num_classes}")
    if dict(ckpt.get("arch_options", {})) != dict(cfg.arch_options):
        raise ValueError(f"--init-from: {path} was built with --arch-options "
                         f"{json.dumps(ckpt.get('arch_options', {}))}; pass the same")
    model.load_state_dict(ckpt["model"])


def load_checkpoint_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module,
                                                                          ModelSpec]:
    """Rebuild the network of a training checkpoint in eval mode, with its spec."""
    ckpt = torch.load(path, map_location=device, weights_only=False)
    model = build_model(ckpt["arch"], ckpt["num_classes"], **ckpt.get("arch_options", {}))
    model.load_state_dict(ckpt["model"])
    return model.eval().to(device), ModelSpec.from_json(ckpt["spec"], source=str(path))


def _pair(text: str, what: str) -> tuple[int, int]:
    """``"360x480"`` -> (360, 480)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{what} must be HxW, e.g. 360x480, got {text!r}") from None
    return h, w


def _opts(text: str) -> dict[str, Any]:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--arch-options must be a JSON object: {e}") from None
    if not isinstance(d, dict):
        raise argparse.ArgumentTypeError("--arch-options must be a JSON object")
    return d


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The training options (shared by ``segstream train`` and ``python -m engines.train``)."""
    p.add_argument("--model", required=True, help="registered architecture, e.g. fastscnn")
    p.add_argument("--data", required=True, help="dataset root (CamVid, Cityscapes or folder)")
    p.add_argument("--format", dest="fmt", default="auto",
                   choices=("auto", "camvid", "cityscapes", "folder"))
    p.add_argument("--out", required=True, help="run folder for checkpoints and log.jsonl")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=lambda s: _pair(s, "--crop"), default=(360, 480),
                   help="training crop HxW (default 360x480)")
    p.add_argument("--scale", type=float, nargs=2, default=(0.5, 2.0), metavar=("LO", "HI"),
                   help="random scale range (default 0.5 2.0)")
    p.add_argument("--input-size", type=lambda s: _pair(s, "--input-size"), default=None,
                   help="network input HxW for validation/deployment (default: val image size)")
    p.add_argument("--lr", type=float, default=4e-3, help="peak learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="default 0.01 (AdamW, decoupled) or 5e-4 (SGD)")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--class-weight", choices=CLASS_WEIGHTINGS, default="mfb")
    p.add_argument("--ohem", type=float, default=None, metavar="P",
                   help="online hard example mining: keep pixels with p(true) < P (e.g. 0.7)")
    p.add_argument("--aux-weight", type=float, default=0.4)
    p.add_argument("--arch-options", type=_opts, default={},
                   help='JSON constructor options, e.g. \'{"aux": true}\'')
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val", help="split for validation ('' for none)")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    p.add_argument("--name", default=None, help="model name in the sidecar")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="disable CUDA AMP")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument("--stop-after", type=int, default=None, metavar="EPOCH",
                   help="stop after this epoch, keeping the --epochs schedule (continue "
                        "later with --resume)")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start from this checkpoint's weights (fine-tuning; same --model, "
                        "classes and --arch-options)")
    p.add_argument("--qat", action="store_true",
                   help="quantization-aware fine-tuning: simulate INT8 (symmetric, "
                        "per-channel weights) in every conv; use with --init-from, then "
                        "export and `segstream calibrate --reference FP32.onnx`")
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        model=args.model, data=args.data, out=args.out, epochs=args.epochs,
        batch_size=args.batch_size, crop=tuple(args.crop), scale=tuple(args.scale),
        lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, class_weight=args.class_weight, ohem=args.ohem,
        aux_weight=args.aux_weight, arch_options=args.arch_options, fmt=args.fmt,
        train_split=args.train_split, val_split=args.val_split or None,
        val_every=args.val_every, input_size=args.input_size, seed=args.seed,
        threads=args.threads, workers=args.workers, amp=args.amp, resume=args.resume,
        max_steps_per_epoch=args.max_steps_per_epoch, stop_after=args.stop_after,
        name=args.name, init_from=args.init_from, qat=args.qat,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m engines.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    best = train(config_from_args(parser.parse_args()))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best checkpoint: {best}")
