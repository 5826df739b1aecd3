"""``segstream`` command line: one subcommand per module in ``stream/commands``.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func`` (``args -> int`` exit code) as the parser default.

Registering every command must not import torch: a runtime install (Jetson, the ``gpu``
extra) has none. Only train, export, models and QAT need it; without it they still appear
in ``--help`` and exit 2 with the install command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from stream import __version__

# Order here is the order in `segstream --help`.
COMMANDS: tuple[str, ...] = (
    "run",
    "launch",
    "subscribe",
    "view",
    "keygen",
    "bench",
    "probe",
    "calibrate",
    "train",
    "eval",
    "predict",
    "export",
    "build",
    "models",
)

EPILOG = """examples:
  segstream run --source test:// --publish tcp://*:5555
  segstream subscribe tcp://localhost:5555
  segstream launch launch/dashcam.yaml
  segstream <command> --help     details and examples for one command
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segstream",
        description="Real-time streaming semantic segmentation: cameras in, label maps out.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"segstream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"stream.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "accepts_unknown_args", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
