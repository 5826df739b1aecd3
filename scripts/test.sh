#!/usr/bin/env bash
# Run the lint and the test suite in the project's virtualenv (set up by scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -ra --durations=15 "$@"
