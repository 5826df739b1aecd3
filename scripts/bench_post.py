"""Post-processing cost: OpenCV's per-class upsample + argmax against the fused kernel.

    .venv/bin/python scripts/bench_post.py [--frames 26] [--repeats 5] [--camvid DIR]

Real CamVid val frames (``--camvid``, default ``$SEGSTREAM_CAMVID`` or ``../shared/camvid``)
go once through each shipped FP32 model for their logits (untimed): Fast-SCNN's
(11, 45, 60) and litefpn's (11, 90, 120). Each case (logits x output size) then times the
two paths on the same logits, alternating frame by frame so that the machine's noise
falls on both, and checks that they return the same labels byte for byte. Prints, per
case, median and p90 in ms of each path, the speed-up of the medians and the fraction of
cells the fused kernel filled at once (settled). Wall-clock times of one call; OpenCV
runs on its own thread pool (``cv2.getNumThreads()``), the fused kernel on one thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines import fused_post  # noqa: E402
from engines.postprocess import _upsample_argmax_cv  # noqa: E402
from engines.segmenter import Segmenter  # noqa: E402

MODELS = ("camvid_fastscnn", "camvid_litefpn")
SIZES = ((720, 1280), (360, 480))  # output (H, W)


def camvid_logits(model: str, frames: list[Path], threads: int) -> list[np.ndarray]:
    """(K, h, w) float32 logits of each frame, from the shipped model's ONNX Runtime run."""
    seg = Segmenter.from_path(ROOT / "engines" / "models" / f"{model}.onnx", threads=threads)
    try:
        return [np.ascontiguousarray(seg.backend.infer(seg.pre(cv2.imread(str(p))))[0],
                                     dtype=np.float32) for p in frames]
    finally:
        seg.close()


def time_case(fused: fused_post.FusedUpsampleArgmax, logits: list[np.ndarray],
              out_hw: tuple[int, int], repeats: int) -> dict[str, float]:
    """Both paths over every frame ``repeats`` times, interleaved; times in ms."""
    old, new, settled = [], [], []
    for _ in range(repeats):
        for lg in logits:
            t0 = time.perf_counter()
            ref = _upsample_argmax_cv(lg, *out_hw)
            t1 = time.perf_counter()
            res = fused.run(lg, *out_hw)
            t2 = time.perf_counter()
            if res is None or not np.array_equal(res[0], ref):
                raise SystemExit(f"fused labels differ from OpenCV's at {out_hw}: not a benchmark")
            old.append((t1 - t0) * 1e3)
            new.append((t2 - t1) * 1e3)
            settled.append(res[1])
    return {"old_med": float(np.median(old)), "old_p90": float(np.percentile(old, 90)),
            "new_med": float(np.median(new)), "new_p90": float(np.percentile(new, 90)),
            "settled": float(np.mean(settled))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example: .venv/bin/python scripts/bench_post.py "
                                        "--frames 26 --repeats 5")
    default_camvid = os.environ.get("SEGSTREAM_CAMVID", str(ROOT.parent / "shared" / "camvid"))
    ap.add_argument("--camvid", type=Path, default=Path(default_camvid),
                    help="CamVid root with val/ (default: %(default)s)")
    ap.add_argument("--frames", type=int, default=26, help="val frames, evenly spaced (26)")
    ap.add_argument("--repeats", type=int, default=5, help="passes over the frames (5)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (2)")
    args = ap.parse_args(argv)
    val = sorted((args.camvid / "val").glob("*.png"))
    if not val:
        ap.error(f"no CamVid val frames in {args.camvid / 'val'}: pass --camvid DIR")
    if args.frames < 1 or args.repeats < 1:
        ap.error("--frames and --repeats must be >= 1")
    frames = [val[i] for i in np.linspace(0, len(val) - 1, min(args.frames, len(val))).astype(int)]
    fused = fused_post.load()
    if fused is None:
        raise SystemExit("the fused kernel is unavailable here (see the log line above)")
    print(f"{len(frames)} CamVid val frames x {args.repeats} repeats; OpenCV {cv2.__version__} "
          f"({cv2.getNumThreads()} threads), fused kernel on 1 thread; times in ms")
    print(f"{'logits':<28} {'output':>9}  {'OpenCV med':>10} {'p90':>6}  "
          f"{'fused med':>9} {'p90':>6}  {'speed-up':>8}  {'settled':>7}")
    for model in MODELS:
        logits = camvid_logits(model, frames, args.threads)
        shape = "x".join(map(str, logits[0].shape))
        for out_hw in SIZES:
            fused.geometry_for(*logits[0].shape[1:], *out_hw)  # probe outside the timing
            r = time_case(fused, logits, out_hw, args.repeats)
            print(f"{model + ' ' + shape:<28} {out_hw[1]:>4}x{out_hw[0]:<4}  "
                  f"{r['old_med']:>10.2f} {r['old_p90']:>6.2f}  {r['new_med']:>9.2f} "
                  f"{r['new_p90']:>6.2f}  {r['old_med'] / r['new_med']:>7.1f}x  "
                  f"{r['settled']:>7.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
