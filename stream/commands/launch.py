"""``segstream launch``: run a pipeline described by a YAML launch file."""

from __future__ import annotations

import argparse

from stream.commands._common import report_errors, setup_logging

EPILOG = """examples:
  segstream launch launch/dashcam.yaml
  segstream launch launch/rtsp_fleet.yaml --check      # validate only, print the config

The file is validated before anything starts: unknown keys and bad values are reported
with the file, the key path (e.g. sources[1].stall_timeout) and the reason.
See launch/*.yaml for annotated examples.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="run a pipeline from a YAML launch file",
                       description="Run the streaming pipeline described by a launch file.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="launch file (YAML)")
    p.add_argument("--check", action="store_true", help="validate the file and exit")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.set_defaults(func=run)


@report_errors
def run(args: argparse.Namespace) -> int:
    from stream.config import load_launch

    setup_logging(args.verbose)
    cfg = load_launch(args.file)
    if args.check:
        print(f"{args.file}: OK")
        for s in cfg.sources:
            print(f"  source {s.id}: {s.uri}")
        print(f"  model: {cfg.model or '(shipped default)'}  backend: {cfg.backend or 'auto'}")
        print(f"  publish: {', '.join(cfg.publish.endpoints)} [{cfg.publish.encoding}]")
        return 0
    from stream.runner import run_pipeline

    code, _ = run_pipeline(cfg)
    return code
