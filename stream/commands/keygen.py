"""``segstream keygen DIR``: create CURVE key pairs for the publisher and its clients."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = """Create a CURVE key pair (ZeroMQ certificate files) in DIR.

  --name server          DIR/server.key (public: give to clients) and
                         DIR/server.key_secret (secret: stays with the publisher)
  --name client-NAME     DIR/client-NAME.key + .key_secret (hand both to that client);
                         the public key is also copied to DIR/allowed_clients/, the
                         list of clients the publisher admits.

Run the publisher with `segstream run --curve-keys DIR` (or `publish: curve_keys: DIR` in
a launch file); only clients whose public key is in DIR/allowed_clients/ receive
anything. Secret files are written with mode 0600. Existing keys are never overwritten
unless --force is given. See docs/security.md."""

EPILOG = """examples:
  segstream keygen /etc/segstream/keys                      # server pair
  segstream keygen /etc/segstream/keys --name client-laptop
  segstream subscribe tcp://vehicle:5555 --curve-server-key keys/server.key \\
                      --curve-client-key keys/client-laptop.key_secret
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keygen", help="create CURVE keys for encrypted, authenticated streams",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", type=Path, help="key folder (created if missing)")
    p.add_argument("--name", default="server",
                   help="'server' (default) or 'client-NAME'")
    p.add_argument("--force", action="store_true", help="replace existing keys of that name")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stream.security import ALLOWED_DIR, SecurityError, generate_keys

    try:
        public, secret = generate_keys(args.dir, args.name, force=args.force)
    except (SecurityError, OSError) as e:
        print(f"segstream: error: {e}", file=sys.stderr)
        return 2
    print(f"public key  {public}")
    print(f"secret key  {secret}  (mode 0600: keep it private)")
    if args.name == "server":
        print(f"next: give {public} to each client; run the publisher with "
              f"--curve-keys {args.dir}")
    else:
        print(f"allowed     {args.dir / ALLOWED_DIR / public.name}  (publishers using "
              f"--curve-keys {args.dir} admit this client)")
        print(f"next: give {public} and {secret} to the client")
    return 0
