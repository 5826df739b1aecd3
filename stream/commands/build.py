"""``segstream build MODEL.onnx``: build a TensorRT engine (GPU machines)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from stream.commands._common import report_errors, setup_logging

DESCRIPTION = """Build a TensorRT 10/11 engine from an ONNX model, on the GPU that will run it.

The network is strongly typed: precision comes from the ONNX itself (an FP16 ONNX from
`segstream export --fp16`, a Q/DQ INT8 ONNX from `segstream calibrate`). --precision only
checks that the ONNX holds what you expect and records it. Dynamic inputs get one
optimisation profile from --shape / --min-shape / --opt-shape / --max-shape. Writes the
engine and its sidecar (model spec + TensorRT version, GPU, precision, shapes, ONNX
sha256); the tensorrt backend refuses an engine built for another GPU or TensorRT."""

EPILOG = """examples:
  segstream build models/camvid.fp16.onnx --precision fp16
  segstream build models/camvid.int8.onnx --precision int8 --timing-cache ~/.cache/trt.cache
  segstream build models/camvid_dyn.onnx --shape input:1x3x360x480 \\
      --min-shape input:1x3x240x320 --max-shape input:4x3x720x960 --workspace 1024
  segstream build models/camvid.onnx --dry-run      # check ONNX, precision, shapes only
  segstream build models/camvid.fp16.onnx --batch 4  # then: segstream run --batch 4 ...
  segstream run --model models/camvid.fp16.trt.engine --source csi://0

output: OUT (default MODEL.trt.engine) and OUT's sidecar (same stem, .json).
Exit status: 0 built, 1 build failed, 2 bad input or no TensorRT on this machine.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "build", help="build a TensorRT engine from ONNX (GPU)", description=DESCRIPTION,
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, metavar="MODEL.onnx",
                   help="ONNX model with its JSON sidecar")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "int8"), default="auto",
                   help="expected precision of the ONNX (default auto: whatever it holds)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:DxDxDxD",
                   help="input shape, e.g. input:1x3x360x480 (min = opt = max unless given)")
    p.add_argument("--min-shape", action="append", default=[], metavar="NAME:DxDxDxD",
                   help="smallest input shape of the optimisation profile")
    p.add_argument("--opt-shape", action="append", default=[], metavar="NAME:DxDxDxD",
                   help="shape TensorRT tunes for (default: --shape)")
    p.add_argument("--max-shape", action="append", default=[], metavar="NAME:DxDxDxD",
                   help="largest input shape of the optimisation profile")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="frames per engine call for `segstream run --batch N`: optimisation "
                        "profile N min 1, opt N, max N (a fixed-batch-1 ONNX is made dynamic "
                        "first; default 1)")
    p.add_argument("--workspace", type=int, default=None, metavar="MiB",
                   help="builder scratch memory limit in MiB (default: TensorRT's, the GPU's "
                        "memory); keep it modest on Jetson, which shares RAM with the CPU")
    p.add_argument("--timing-cache", type=Path, default=None, metavar="PATH",
                   help="load kernel timings from PATH if it exists and save them back "
                        "(rebuilds on the same GPU take seconds instead of minutes)")
    p.add_argument("--out", type=Path, default=None,
                   help="engine path, .engine or .plan (default MODEL.trt.engine)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the ONNX, precision and shapes, print the plan, build nothing")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="-v progress messages, -vv TensorRT's verbose log")
    p.set_defaults(func=run)


@report_errors
def run(args: argparse.Namespace) -> int:
    from engines.trt import compat
    from engines.trt.build import (
        BuildError,
        BuildOptions,
        build_engine,
        inspect_precision,
        prepare_build,
        read_onnx,
    )
    from engines.trt.engine_info import fmt_shape

    setup_logging(args.verbose)
    if args.workspace is not None and args.workspace <= 0:
        return _fail(f"--workspace must be > 0 MiB, got {args.workspace}")
    precision = args.precision
    try:  # everything decided before TensorRT: bad input exits 2
        if precision == "auto":
            if not args.model.is_file():
                return _fail(f"ONNX model {args.model} not found")
            precision = inspect_precision(read_onnx(args.model)).detected
        if args.batch < 1:
            return _fail(f"--batch must be >= 1, got {args.batch}")
        opts = BuildOptions(precision=precision, shape=tuple(args.shape), batch=args.batch,
                            min_shape=tuple(args.min_shape), opt_shape=tuple(args.opt_shape),
                            max_shape=tuple(args.max_shape), workspace_mib=args.workspace,
                            timing_cache=(args.timing_cache.expanduser() if args.timing_cache
                                          else None), verbose=args.verbose >= 2)
        prep = prepare_build(args.model, args.out, opts)
    except (ValueError, BuildError) as e:
        return _fail(str(e))
    print(f"model     {prep.onnx_path} ({prep.spec.name}, {prep.spec.num_classes} classes)")
    print(f"precision {precision} ({prep.precision.qdq_nodes} Q/DQ nodes, "
          f"{prep.precision.fp16_tensors} float16 tensors)")
    for s in prep.shapes:
        print(f"input     {s.name}: min {fmt_shape(s.min)}  opt {fmt_shape(s.opt)}  "
              f"max {fmt_shape(s.max)}")
    print(f"engine    {prep.out_path}")
    if args.dry_run:
        return 0
    try:
        path, record = build_engine(args.model, args.out, opts,
                                    on_status=lambda m: print(m, flush=True))
    except compat.TensorRTImportError as e:
        return _fail(f"{e}. Use --dry-run to check the model on this machine.")
    except BuildError as e:  # the parser or the builder failed: exit 1
        print(f"segstream: build failed: {e}", file=sys.stderr)
        return 1
    size_mib = path.stat().st_size / 2**20
    print(f"wrote     {path} ({size_mib:.1f} MiB) for {record.gpu_name} "
          f"(sm_{record.compute_capability[0]}{record.compute_capability[1]}), "
          f"TensorRT {record.tensorrt_version}")
    return 0


def _fail(message: str) -> int:
    print(f"segstream: error: {message}", file=sys.stderr)
    return 2
