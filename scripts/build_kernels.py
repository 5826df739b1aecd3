#!/usr/bin/env python3
"""Precompile the CUDA kernels (engines/cuda/*.cu) into engines/cuda/prebuilt.

One cubin per architecture in engines.cuda_kernels.PREBUILT_ARCHS plus a PTX for newer
GPUs, and manifest.json (source digest, nvcc version, per-image sha256). segstream loads
these at run time, so a deployment needs no nvcc. Rerun after editing any kernel file
(tests/engines/test_prebuilt_kernels.py fails until you do). On a Jetson whose driver
refuses images from a newer nvcc, run it there with JetPack's nvcc:

    python scripts/build_kernels.py [--out DIR] [--arch sm_87 ...] [--nvcc PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.cuda_kernels import (
    PREBUILT_ARCHS,
    PREBUILT_DIR,
    PREBUILT_PTX,
    KernelError,
    build_prebuilt,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=PREBUILT_DIR, help=f"default {PREBUILT_DIR}")
    p.add_argument("--arch", action="append", help=f"cubin arch (default {PREBUILT_ARCHS})")
    p.add_argument("--ptx", default=PREBUILT_PTX, help="PTX virtual arch ('' for none)")
    p.add_argument("--nvcc", default="nvcc")
    args = p.parse_args(argv)
    try:
        manifest = build_prebuilt(args.out, nvcc=args.nvcc,
                                  archs=tuple(args.arch or PREBUILT_ARCHS),
                                  ptx_arch=args.ptx or None)
    except KernelError as e:
        print(f"build_kernels: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
