"""Train a registered segmentation architecture on a segmentation dataset.

Single process (CPU or one GPU) or multi-GPU with ``torchrun`` (DDP; detected from
``WORLD_SIZE``). Checkpoints every epoch to ``<out>/last.pt`` and ``<out>/best.pt`` (by
validation mIoU), a JSON line per epoch in ``<out>/log.jsonl``; ``resume`` restarts from
``last.pt`` with model, optimiser, scheduler, epoch and RNG state.

The checkpoint dict is described in :mod:`engines.checkpoint`.

Run ``python -m engines.train --help`` or ``segstream train --help``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, replace
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

from engines.arch.efficientnet_lite import PretrainedWeightsError
from engines.checkpoint import (
    load_checkpoint_model,
    load_init_weights,
    read_checkpoint,
    rng_state,
    save_atomic,
    set_rng_state,
)
from engines.data.augment import AugmentConfig, check_crop_fits, photometric
from engines.data.prefetch import Prefetcher
from engines.data.readers import IGNORE, SplitData, open_split
from engines.data.torch_dataset import EvalDataset, TrainDataset
from engines.distill import Teacher, distill_loss, teacher_providers, teacher_spec
from engines.ema import ModelEMA
from engines.losses import SegLoss, class_weights
from engines.metrics import ConfusionMatrix, SegMetrics, fmt_miou
from engines.quant_sim import enable_fake_quant
from engines.registry import UnknownModelError, build_model
from engines.spec import ModelSpec
from engines.train_config import TrainConfig, add_arguments, config_from_args, resumed_config
from engines.train_curves import plot_curves
from engines.train_runtime import (
    autocast_dtype,
    prefetch_depth,
    seed_everything,
    setup_distributed,
)

__all__ = ["TrainConfig", "add_arguments", "config_from_args", "load_checkpoint_model", "train"]

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


def check_disjoint(train_data: SplitData, val_data: SplitData, cfg: TrainConfig) -> None:
    """Refuse a validation split that holds training frames (the same pixels, whatever
    their names): its "val mIoU" would score frames the model fits, pick best.pt by them
    and go into the sidecar as a held-out figure. ``--train-split train+val`` needs
    ``--val-split ''``."""
    def digest(img: np.ndarray) -> bytes:
        return hashlib.blake2b(img.tobytes(), digest_size=16).digest() + bytes(str(img.shape),
                                                                               "ascii")

    seen = {digest(img) for img in train_data.images}
    shared = [n for n, img in zip(val_data.names, val_data.images, strict=True)
              if digest(img) in seen]
    if shared:
        raise ValueError(
            f"--val-split {cfg.val_split!r} shares {len(shared)} of its {len(val_data)} frames "
            f"with --train-split {cfg.train_split!r} (e.g. {shared[0]}): its mIoU would not "
            "be a held-out figure. For a final run on everything pass --val-split '' "
            "(nothing was written)")


@torch.no_grad()
def evaluate_torch(model: torch.nn.Module, data: SplitData, spec: ModelSpec,
                   device: torch.device, batch_size: int = 4) -> SegMetrics:
    """Whole-split validation of a torch model at ``spec.input_size``; logits are
    upsampled (bilinear) to each label's size before argmax."""
    model.eval()
    # its own generator: a validation draws nothing from the global RNG, so how often a
    # run validates (or, with --ema, that it scores two sets of weights) leaves the
    # training's dropout / drop-path draws unchanged
    loader = DataLoader(EvalDataset(data, spec.mean, spec.std, spec.input_size),
                        batch_size=1 if _mixed_sizes(data) else batch_size,
                        generator=torch.Generator())
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
               metrics: dict[str, Any] | None = None,
               model: torch.nn.Module | None = None) -> ModelSpec:
    """The sidecar of a run; normalisation is the model's own (``input_mean`` /
    ``input_std`` class attributes, e.g. a pretrained encoder's) or the ImageNet default."""
    name = cfg.name or f"{data.source.split(':')[0]}-{cfg.model}"
    norm = {k: tuple(getattr(model, f"input_{k}")) for k in ("mean", "std")
            if hasattr(model, f"input_{k}")}
    init = "ImageNet-pretrained encoder" if cfg.pretrained else "from scratch"
    extras = f", OHEM {cfg.ohem:g}" if cfg.ohem is not None else ""
    if cfg.mix is not None:
        extras += f", {'ClassMix' if cfg.mix == 'classmix' else 'CutMix'} p={cfg.mix_prob:g}"
    if cfg.photometric != "standard":
        extras += f", {cfg.photometric} photometric augmentation"
    if cfg.ema is not None:
        extras += f", EMA weights (decay {cfg.ema:g})"
    if cfg.distill:
        extras += (f", distilled from {Path(cfg.distill).name} (weight "
                   f"{cfg.distill_weight:g}, T {cfg.distill_temperature:g}"
                   + (", class-weighted)" if cfg.distill_balanced else ")"))
    return ModelSpec(
        name=name, architecture=cfg.model, classes=data.classes, input_size=input_size,
        output="logits", ignore_index=IGNORE,
        training_data=f"{data.source}; crop {cfg.crop[0]}x{cfg.crop[1]}, {cfg.epochs} epochs, "
                      f"{init}{extras}",
        metrics=metrics or {}, **norm,
    )


def param_groups(model: torch.nn.Module, lr: float, encoder_lr_mult: float
                 ) -> list[dict[str, Any]]:
    """Trainable parameters; those of ``model.encoder`` (if any) at ``lr * encoder_lr_mult``."""
    encoder = getattr(model, "encoder", None)
    enc_ids = {id(p) for p in encoder.parameters()} if isinstance(encoder, torch.nn.Module) \
        else set()
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in enc_ids], "lr": lr}]
    enc = [p for p in trainable if id(p) in enc_ids]
    if enc:
        groups.append({"params": enc, "lr": lr * encoder_lr_mult})
    return groups


def load_pretrained(model: torch.nn.Module, arch: str) -> str:
    """``--pretrained``: the model's own ImageNet loader; a clear error without one."""
    loader = getattr(model, "load_pretrained", None)
    if loader is None:
        from engines.registry import available_models
        from engines.registry import build_model as _build

        have = [n for n in available_models() if hasattr(_build(n, 2), "load_pretrained")]
        raise PretrainedWeightsError(
            f"--pretrained: architecture {arch!r} has no pretrained weights (none can be "
            f"downloaded here); architectures with installable ImageNet weights: "
            f"{', '.join(have)}")
    return str(loader())


def train(cfg: TrainConfig, *, progress: bool = True, bars: bool = True) -> Path:
    """Run training; returns the path of the best checkpoint (``last.pt`` if no val).

    ``progress=False`` prints nothing; ``bars=False`` (``--no-progress``) prints one line
    per epoch instead of progress bars, for logs written to a file."""
    from tqdm import tqdm

    info = setup_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if not cfg.resume and last_path.exists():
        raise FileExistsError(f"--out {out} already holds a run ({last_path}): continue "
                              "it with --resume, or give a new --out (nothing was changed)")
    ckpt = None
    if cfg.resume:  # the run's own recipe, before anything is read or written
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint {last_path}; start without "
                                    "--resume or point --out at the run to continue")
        ckpt = read_checkpoint(last_path, "--resume")
        if ckpt.get("arch") != cfg.model:
            raise ValueError(f"--resume: {last_path} is a {ckpt.get('arch')!r} run, not "
                             f"{cfg.model!r}")
        cfg = resumed_config(cfg, ckpt.get("config") or {})
    check_model_options(cfg)
    if cfg.distill:
        teacher_spec(cfg.distill)  # before any data is read
        if not cfg.resume:  # the recipe names the file wherever the run is resumed from
            cfg = replace(cfg, distill=str(Path(cfg.distill).resolve()))
    if cfg.pretrained and not cfg.resume and not cfg.init_from:
        # Missing weights fail here, before the data is read (a CamVid split: seconds), and
        # before seeding, so that this probe model leaves the run's random init unchanged.
        load_pretrained(build_model(cfg.model, 2, **cfg.arch_options), cfg.model)
    seed_everything(cfg.seed + info.rank)

    train_data = open_split(cfg.data, cfg.train_split, cfg.fmt, progress=progress and bars,
                            limit=cfg.limit)
    val_data = open_split(cfg.data, cfg.val_split, cfg.fmt, progress=progress and bars) \
        if cfg.val_split else None
    if val_data is not None:
        check_disjoint(train_data, val_data, cfg)
    aug = AugmentConfig(crop=cfg.crop, scale=cfg.scale, mix=cfg.mix, mix_prob=cfg.mix_prob,
                        **photometric(cfg.photometric))
    check_crop_fits(aug, [lbl.shape for lbl in train_data.labels])
    input_size = cfg.input_size or (val_data or train_data).labels[0].shape
    input_size = (int(input_size[0]), int(input_size[1]))

    model = build_model(cfg.model, train_data.num_classes, **cfg.arch_options)
    spec = build_spec(cfg, train_data, input_size, model=model)
    if cfg.pretrained and not cfg.resume and not cfg.init_from:
        src = load_pretrained(model, cfg.model)
        if progress and info.is_main:
            print(f"encoder: ImageNet weights from {src}", flush=True)
    if ckpt is not None and int(ckpt.get("num_classes", train_data.num_classes)) \
            != train_data.num_classes:
        raise ValueError(f"--resume: {last_path} has {ckpt['num_classes']} classes, the data "
                         f"{cfg.data} has {train_data.num_classes}: resume with the run's "
                         "own data, or start a new run")
    model = model.to(info.device)
    if info.device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)  # 1.35x faster on CPU
    if cfg.init_from and not cfg.resume:
        load_init_weights(model, cfg, train_data.num_classes)
    if cfg.qat:
        enable_fake_quant(model)
    if info.distributed and info.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    w = class_weights(cfg.class_weight, train_data.labels, train_data.num_classes)
    weight = None if w is None else torch.from_numpy(w)
    criterion = SegLoss(weight, IGNORE, cfg.aux_weight, cfg.ohem).to(info.device)
    kd_weight = criterion.weight if cfg.distill_balanced else None  # on the device already

    dataset = TrainDataset(train_data, aug,
                           spec.mean, spec.std, seed=cfg.seed)
    sampler = DistributedSampler(dataset, seed=cfg.seed, drop_last=True) \
        if info.distributed else None
    per_rank = len(dataset) // info.world_size
    if per_rank < cfg.batch_size:
        raise ValueError(f"batch size {cfg.batch_size} is larger than the {per_rank} training "
                         f"images per process; lower --batch-size")
    steps = per_rank // cfg.batch_size
    teacher = Teacher(cfg.distill, [c.name for c in train_data.classes], spec.mean, spec.std,
                      batch=cfg.batch_size, threads=cfg.threads,
                      providers=teacher_providers(info.device.type)) if cfg.distill else None
    if info.is_main:  # created only once the inputs are known good: nothing left on failure
        out.mkdir(parents=True, exist_ok=True)
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)

    if cfg.optimizer == "sgd":
        wd = 5e-4 if cfg.weight_decay is None else cfg.weight_decay
        opt: torch.optim.Optimizer = torch.optim.SGD(
            param_groups(model, cfg.lr, cfg.encoder_lr_mult), lr=cfg.lr, momentum=0.9,
            weight_decay=wd)
    else:
        wd = 1e-2 if cfg.weight_decay is None else cfg.weight_decay
        opt = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.encoder_lr_mult), lr=cfg.lr,
                                weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, WarmupPoly(cfg.epochs * steps, round(cfg.warmup_epochs * steps)))
    amp_dtype = autocast_dtype(cfg, info.device)
    use_amp = amp_dtype == torch.float16  # loss scaling: float16 only
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best_miou = 0, -1.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        # Re-target the schedule to this run's --epochs (lets a resumed run end earlier or
        # later than first planned; the saved step count is kept).
        # LambdaLR keeps one lambda per parameter group (encoder and decoder groups):
        # every group follows the new end.
        sched.lr_lambdas = [WarmupPoly(cfg.epochs * steps, round(cfg.warmup_epochs * steps))
                            ] * len(opt.param_groups)
        if "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_miou = int(ckpt["epoch"]), float(ckpt["best_miou"])
        ranks = ckpt.get("rng_ranks") or []  # DDP: every rank's own state (rank 0's: "rng")
        if info.rank == 0:
            set_rng_state(ckpt["rng"])
        elif len(ranks) == info.world_size:
            set_rng_state(ranks[info.rank])
        else:  # another number of processes than the run had: not exact, but ranks differ
            seed_everything(cfg.seed + 1009 * start_epoch + info.rank)
    # rank 0 alone averages: it validates and writes the checkpoints
    ema = ModelEMA(model, cfg.ema) if cfg.ema is not None and info.is_main else None
    if ema is not None and ckpt is not None and ckpt.get("ema") is not None:
        ema.load(ckpt["ema"], ckpt["ema_updates"])

    net = model
    if info.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)

    def make_ckpt(epoch: int, metrics: dict[str, Any],
                  rank_states: list[Any] | None) -> dict[str, Any]:
        return {
            "arch": cfg.model, "arch_options": dict(cfg.arch_options),
            "num_classes": train_data.num_classes, "model": model.state_dict(),
            "spec": build_spec(cfg, train_data, input_size, metrics, model).to_json(),
            "epoch": epoch, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "best_miou": best_miou, "rng": rng_state(),
            "rng_ranks": rank_states, "config": asdict(cfg),
            "ema": ema.state_dict() if ema is not None else None,
            "ema_updates": ema.updates if ema is not None else 0,
        }

    prefetch = prefetch_depth(cfg, info.device)
    # what --bf16 auto / --amp resolved to on this machine (runs are compared by it)
    precision = str(amp_dtype).removeprefix("torch.") if amp_dtype else "float32"
    if progress and info.is_main:
        print("data: " + (f"augmented {prefetch} batches ahead on a prefetch thread" if prefetch
                          else f"{cfg.workers} worker processes" if cfg.workers
                          else "augmented on the main thread"), flush=True)
        print(f"precision: {precision}"
              + (f" autocast on {info.device.type}" if amp_dtype else ""), flush=True)
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
        t0, loss_sum, kd_sum, seen = time.monotonic(), 0.0, 0.0, 0
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="it",
                   disable=not (progress and bars and info.is_main), dynamic_ncols=True)
        # The epoch's first `steps` batches, augmented on a prefetch thread unless worker
        # processes do it (the same batches in the same order either way).
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = itertools.islice(loader, steps)
        prefetcher = None
        if prefetch:
            batches = prefetcher = Prefetcher(batches, depth=prefetch, name="train-prefetch")
        try:
            for step, (x_cpu, y_cpu) in enumerate(batches):
                x = x_cpu.to(info.device, non_blocking=True)  # (N, 3, H, W) float32
                if info.device.type == "cpu":
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y_cpu.to(info.device, non_blocking=True)  # (N, H, W) int64
                with torch.autocast(info.device.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    outputs = net(x)
                loss = criterion(_to_float(outputs), y)
                if teacher is not None:
                    main = outputs if isinstance(outputs, torch.Tensor) else outputs[0]
                    kd = distill_loss(main, teacher(x_cpu), y, cfg.distill_temperature, IGNORE,
                                      kd_weight)
                    kd_sum += kd.item()
                    loss = loss + cfg.distill_weight * kd
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(
                        f"loss became {loss.item()} at epoch {epoch + 1} step {step}; lower --lr "
                        f"(now {cfg.lr}) or use --class-weight none. "
                        + (f"Last good checkpoint: {last_path}" if last_path.exists()
                           else "No checkpoint was written yet."))
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                if ema is not None:
                    ema.update(model)
                loss_sum += loss.item()
                seen += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        finally:
            if prefetcher is not None:
                prefetcher.close()
        bar.close()
        record: dict[str, Any] = {
            "epoch": epoch + 1, "loss": round(loss_sum / max(1, seen), 5),
            "lr": sched.get_last_lr()[0], "epoch_s": round(time.monotonic() - t0, 1),
            "img_s": round(seen * cfg.batch_size / max(1e-9, time.monotonic() - t0), 2),
            "autocast": precision,
        }
        if teacher is not None:  # the distillation term alone (before its weight)
            record["distill_loss"] = round(kd_sum / max(1, seen), 5)
        rank_states = None
        if info.distributed:  # each rank resumes with its own dropout / drop-path draws
            rank_states = [None] * info.world_size
            dist.all_gather_object(rank_states, rng_state())
        if info.is_main:
            is_last = epoch + 1 == cfg.epochs
            metrics: dict[str, Any] = {}
            improved = False
            score = ""
            if val_data is not None and ((epoch + 1) % cfg.val_every == 0 or is_last):
                # the deployed weights (the EMA where the run keeps one) are scored
                m = evaluate_torch(ema.module if ema is not None else model, val_data, spec,
                                   info.device)
                record.update(val_miou=round(m.miou, 4), val_pixel_acc=round(m.pixel_acc, 4))
                if ema is not None:  # and the trained weights beside them
                    record["val_miou_trained"] = round(
                        evaluate_torch(model, val_data, spec, info.device).miou, 4)
                metrics = {"val_miou": round(m.miou, 4), "val_pixel_acc": round(m.pixel_acc, 4),
                           "per_class_iou": m.per_class([c.name for c in train_data.classes]),
                           "epoch": epoch + 1}
                improved = m.miou > best_miou
                if improved:
                    best_miou = m.miou
                score = f"  val mIoU {fmt_miou(m.miou)}  (best {fmt_miou(best_miou)})"
                if ema is not None:
                    score += f"  trained weights {fmt_miou(record['val_miou_trained'])}"
            if progress and (score or not bars):  # with --no-progress, every epoch
                print(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['loss']:.4f}{score}  "
                      f"{record['epoch_s']:.0f}s  {record['img_s']:.1f} img/s", flush=True)
            record["wall_s"] = round(time.monotonic() - t_run, 1)
            ckpt = make_ckpt(epoch + 1, metrics, rank_states)
            if improved or (val_data is None and is_last):  # first: last.pt records the
                save_atomic(ckpt, best_path)  # best score, which best.pt must then hold
            save_atomic(ckpt, last_path)
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            plot_curves(log_path, out / "curves.png")
        if info.distributed:
            dist.barrier()
        if cfg.stop_after is not None and epoch + 1 >= cfg.stop_after:
            break
    if info.distributed:
        dist.destroy_process_group()
    return best_path if best_path.is_file() else last_path


def _to_float(out: torch.Tensor | tuple[torch.Tensor, ...]
              ) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Logits back to float32 for the loss (autocast outputs may be bf16 / fp16)."""
    if isinstance(out, tuple):
        return tuple(o.float() for o in out)
    return out.float()


def check_model_options(cfg: TrainConfig) -> None:
    """Fail before any data is read when ``--model`` is not registered or
    ``--arch-options`` are not its constructor's (builds a 2-class instance once)."""
    try:
        build_model(cfg.model, 2, **cfg.arch_options)
    except UnknownModelError as e:
        raise ValueError(str(e)) from None
    except TypeError as e:  # an option the architecture's constructor does not take
        raise ValueError(f"--arch-options {json.dumps(cfg.arch_options)} do not fit "
                         f"{cfg.model!r}: {e}") from None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m engines.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args()
    best = train(config_from_args(args), bars=args.progress_bars)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best checkpoint: {best}")
