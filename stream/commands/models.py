"""``segstream models``: the architectures in the registry, with size and output stride."""

from __future__ import annotations

import argparse
import json
import sys

from stream.commands._common import positive

EPILOG = """examples:
  segstream models
  segstream models --family realtime
  segstream models --json > models.json

Columns: registry name (use it with `segstream train --model NAME`), family, parameters
(millions, at default options and the given --classes), output stride s (logits are
(N, K, H/s, W/s); 1 = the model upsamples itself), description. --json adds each
model's constructor options and defaults (e.g. encoder, width, aux, upsample).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models", help="list the registered network architectures",
        description="List the network architectures that can be trained and exported.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=("realtime", "classic"), default=None,
                   help="only this family")
    p.add_argument("--classes", type=positive(int, most=256), default=11,
                   help="classes to size the heads (default 11; label maps are uint8: <= 256)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def describe(name: str, num_classes: int) -> dict:
    """Registry entry + parameter count and output stride of a default-built model, and
    the constructor options with their defaults (``segstream train --arch-options``)."""
    import inspect

    from engines.registry import build_model, get_entry

    entry = get_entry(name)
    options = {k: p.default for k, p in inspect.signature(entry.factory).parameters.items()
               if k != "num_classes" and p.default is not inspect.Parameter.empty}
    model = build_model(name, num_classes)
    params = sum(p.numel() for p in model.parameters())
    return {"name": name, "family": entry.family, "params": params,
            "output_stride": int(getattr(model, "output_stride", 1)),
            "options": options, "description": entry.description}


def run(args: argparse.Namespace) -> int:
    from stream.commands._common import is_missing_torch, torch_missing_message

    try:
        return _list_models(args)
    except ModuleNotFoundError as e:
        if not is_missing_torch(e):
            raise
        print(torch_missing_message("models"), file=sys.stderr)
        return 2


def _list_models(args: argparse.Namespace) -> int:
    from engines.registry import available_models, get_entry

    if args.classes < 1:
        print(f"segstream models: error: --classes must be >= 1, got {args.classes}")
        return 2
    names = [n for n in available_models()
             if args.family is None or get_entry(n).family == args.family]
    rows = [describe(n, args.classes) for n in names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<16} {'family':<9} {'params':>8} {'stride':>6}  description")
    for r in rows:
        print(f"{r['name']:<16} {r['family']:<9} {r['params'] / 1e6:>7.2f}M {r['output_stride']:>6}"
              f"  {r['description']}")
    return 0
