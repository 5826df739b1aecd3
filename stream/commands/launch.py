"""``segstream launch``: run a pipeline described by a YAML launch file."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from stream.commands._common import report_errors, setup_logging

if TYPE_CHECKING:
    from stream.config import PipelineConfig

EPILOG = r"""examples:
  segstream launch launch/dashcam.yaml
  segstream launch launch/rtsp_fleet.yaml --check      # validate only, print the config
  segstream launch launch/dashcam.yaml --publish tcp://127.0.0.1:6000 --set publish.encoding=rle
  segstream launch launch/dashcam.yaml --set 'sources[0].uri=test://' --set threads=1 \
      --set 'sources[1].uri=test://ball?width=1280&height=720' --check

--set KEY=VALUE changes one key of the file without copying it (repeatable; later ones
win): KEY is a key path as in the file (publish.encoding, sources[0].uri, threads; an
index one past the end adds a list entry), VALUE is read as YAML (2.0 a number,
[a, b] a list, nothing: null). --publish ENDPOINT (repeatable) replaces the file's
publish.endpoints.

The file is validated before anything starts, the same way with and without --check:
unknown or duplicate keys, bad values, sources that do not parse, files that do not
exist (a V4L2 device that does not exist is a warning: it is retried like an unplugged
camera), a missing or
inconsistent model. Every problem is reported, each with the file, the key path (e.g.
sources[1].stall_timeout) and the reason; exit 2 (exit 1 when the only problems are
addresses not on this machine yet). See launch/*.yaml for annotated examples. Exit status
as for `segstream run` (0 clean, 1 engine failed or not ready yet, 2 bad
file/source/model, 3 a working source was lost).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="run a pipeline from a YAML launch file",
                       description="Run the streaming pipeline described by a launch file.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="launch file (YAML)")
    p.add_argument("--check", action="store_true", help="validate the file and exit")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key of the file, e.g. publish.encoding=rle or "
                        "sources[0].uri=test:// (repeatable)")
    p.add_argument("--publish", action="append", default=[], metavar="ENDPOINT",
                   help="publish here instead of the file's publish.endpoints (repeatable)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.set_defaults(func=run)


@report_errors
def run(args: argparse.Namespace) -> int:
    from stream.launch_file import Override, parse_override
    from stream.sources import redact
    from stream.validate import check_launch

    setup_logging(args.verbose)
    overrides = [parse_override(text) for text in args.overrides]
    if args.publish:
        overrides.insert(0, Override("publish.endpoints", ("publish", "endpoints"),
                                     list(args.publish), f"--publish {' '.join(args.publish)}"))
    # One validation path: what `launch` refuses, --check refuses (it also loads the model);
    # overrides are applied to the document before it is checked.
    cfg = check_launch(args.file, load_model=args.check, overrides=overrides)
    if args.check:
        print(f"{args.file}: OK")
        for s in cfg.sources:
            print(f"  source {s.id}: {redact(s.uri)}")
        print(f"  model: {cfg.model or '(shipped default)'}  backend: {cfg.backend or 'auto'}")
        for line in check_summary(cfg):
            print(f"  {line}")
        return 0
    from stream.runner import run_pipeline

    code, _ = run_pipeline(cfg, where=args.file)
    return code


def check_summary(cfg: PipelineConfig) -> list[str]:
    """What the pipeline will do beyond its sources and model, for ``--check``: only the
    settings that differ from a plain run are named (so an override shows)."""
    pub = cfg.publish
    lines = [f"publish: {', '.join(pub.endpoints)} [{pub.encoding}]"
             + (", CURVE" if pub.curve_keys else "")
             + (f", camera frames {pub.publish_frames:g}/s at x{pub.frame_scale:g}"
                if pub.publish_frames else "")]
    engine = [f"{k} {v}" for k, v, default in (
        ("threads", cfg.threads, None), ("batch", cfg.batch, 1),
        ("overlap", cfg.overlap, "auto"), ("engine policy", cfg.engine_policy, "auto"),
        ("tta", cfg.tta, "none"))
        if v != default]
    if engine:
        lines.append("engine: " + ", ".join(engine))
    if cfg.preview.port is not None:
        lines.append(f"preview: {_url(cfg.preview.host, cfg.preview.port, '/')}")
    if cfg.metrics_port is not None:
        lines.append(f"metrics: {_url(cfg.metrics_bind, cfg.metrics_port, '/metrics')}")
    stop = [f"after {cfg.duration:g} s" if cfg.duration else "",
            f"after {cfg.max_frames} maps" if cfg.max_frames else ""]
    lines.append("runs: " + (" or ".join(t for t in stop if t) or "until stopped"))
    return lines


def _url(host: str, port: int, path: str) -> str:
    """http://HOST:PORT/PATH, IPv6 hosts in brackets; port 0 is chosen at start."""
    netloc = f"[{host}]" if ":" in host else host
    if port == 0:
        return f"http://{netloc}:<any free port, printed at start>{path}"
    return f"http://{netloc}:{port}{path}"
