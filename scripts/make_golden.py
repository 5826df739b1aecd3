"""Regenerate the golden label maps of the shipped models (tests/golden/).

    .venv/bin/python scripts/make_golden.py [MODEL_STEM ...]
    .venv/bin/python scripts/make_golden.py --variant [MODEL_STEM ...]

Each shipped model (``engines/models/*.onnx``) segments two fixed synthetic street-like
frames (drawn with NumPy from a fixed seed, no dataset needed) through the stream's own
path: ``Preprocessor`` -> ONNX Runtime -> ``Postprocessor``. The label maps are written as
8-bit PNGs ``tests/golden/<model stem>__<frame>.png``. ``tests/engines/test_golden.py``
recomputes them and compares. Re-run this script only when a model or the pre/post
processing changes on purpose, and say why in the commit. ``tests/golden/isa.json`` records
the environment each map was made in (:func:`environment`: CPU integer-kernel family and
ONNX Runtime version), because INT8 kernels round differently on AVX2 and VNNI CPUs and
between ONNX Runtime releases.

``--variant`` writes only the INT8 models' maps, for this environment, into
``tests/golden/<environment>/`` beside the base ones (which it leaves alone): the test then
holds INT8 models to the strict tolerance on every kind of machine that has a variant.
Regenerating a model's base maps deletes its variants (they belong to the old weights).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
SEED = 20261125


def synthetic_frames(seed: int = SEED) -> dict[str, np.ndarray]:
    """Two uint8 BGR (360, 480, 3) frames: a road scene and the same at 720x960 size.

    Sky gradient, buildings, a road with lane marks, a car-like box and mild noise, so the
    shipped CamVid model produces several classes and real class boundaries.
    """
    rng = np.random.default_rng(seed)
    h, w = 360, 480
    img = np.zeros((h, w, 3), np.float32)
    sky = np.linspace(235, 170, h // 3, dtype=np.float32)[:, None]  # (h/3, 1)
    img[: h // 3] = np.stack([sky + 10, sky, sky - 30], axis=-1)  # BGR, bluish sky
    for x0 in range(0, w, 80):  # building blocks on the horizon
        top = int(rng.integers(h // 6, h // 3))
        img[top : h // 2, x0 : x0 + 70] = rng.integers(60, 140, 3)
    img[h // 2 :] = (95, 95, 100)  # asphalt
    img[h // 2 :, : w // 8] = (150, 150, 160)  # sidewalk left
    for y in range(h // 2 + 10, h, 30):  # dashed centre line
        img[y : y + 12, w // 2 - 3 : w // 2 + 3] = (220, 220, 220)
    img[int(h * 0.55) : int(h * 0.7), int(w * 0.6) : int(w * 0.8)] = (40, 30, 160)  # car
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    small = np.clip(img, 0, 255).astype(np.uint8)
    big = cv2.resize(small, (960, 720), interpolation=cv2.INTER_LINEAR)
    return {"street360x480": small, "street720x960": big}


ISA_FILE = GOLDEN / "isa.json"


def int8_isa() -> str:
    """The integer SIMD family ONNX Runtime's int8 kernels use on this CPU: ``vnni``
    (AVX-512 VNNI / AVX-VNNI), ``avx2``, or the machine name elsewhere (ARM...)."""
    import platform

    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    if "vnni" in flags:
        return "vnni"
    return "avx2" if " avx2" in flags else platform.machine()


def environment() -> str:
    """What INT8 label maps depend on beyond the model: the CPU's integer-kernel family and
    ONNX Runtime's minor version (its int8 kernels change between releases)."""
    import onnxruntime

    return f"{int8_isa()} onnxruntime-{'.'.join(onnxruntime.__version__.split('.')[:2])}"


def golden_path(model: Path, frame: str) -> Path:
    return GOLDEN / f"{model.stem}__{frame}.png"


def variant_dir(env: str) -> Path:
    """Where the INT8 maps made in ``env`` (:func:`environment`) go with ``--variant``."""
    return GOLDEN / env.replace(" ", "_")


def isa_key(path: Path) -> str:
    """A golden's key in ``isa.json``: its path under tests/golden/."""
    return path.relative_to(GOLDEN).as_posix()


def label_maps(model: Path) -> dict[str, np.ndarray]:
    """{frame name: (H, W) uint8 labels} for one model, 1 ONNX Runtime thread."""
    from engines.segmenter import Segmenter

    seg = Segmenter.from_path(model, threads=1)
    try:
        return {name: seg(frame) for name, frame in synthetic_frames().items()}
    finally:
        seg.close()


def main() -> int:
    sys.path.insert(0, str(ROOT))
    import json

    from engines.zoo import shipped_models

    GOLDEN.mkdir(parents=True, exist_ok=True)
    args = sys.argv[1:]
    variant = "--variant" in args
    only = {a for a in args if a != "--variant"}  # model stems (default: all)
    isa = json.loads(ISA_FILE.read_text()) if ISA_FILE.is_file() else {}
    env = environment()
    for model in shipped_models():
        if (only and model.stem not in only) or (variant and ".int8" not in model.name):
            continue
        if not variant:  # new base maps: other environments' variants are stale
            for old in GOLDEN.glob(f"*/{model.stem}__*.png"):
                old.unlink()
                isa.pop(isa_key(old), None)
                print(f"deleted {old.relative_to(ROOT)} (made from the previous weights)")
        for name, labels in label_maps(model).items():
            out = golden_path(model, name)
            if variant:
                out = variant_dir(env) / out.name
                out.parent.mkdir(exist_ok=True)
            cv2.imwrite(str(out), labels)
            isa[isa_key(out)] = env
            classes = np.unique(labels).tolist()
            print(f"wrote {out.relative_to(ROOT)} {labels.shape} classes {classes}")
    ISA_FILE.write_text(json.dumps(dict(sorted(isa.items())), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
