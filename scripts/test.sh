#!/usr/bin/env bash
# Run the lint and the test suite in the project's virtualenv (set up by scripts/setup.sh),
# then, for a full run, the Python 3.10 runtime-only leg (scripts/test_py310.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
status=0
.venv/bin/python -m pytest -q -ra --durations=15 "$@" || status=$?
# The whole suite (no arguments, as in CI): also the Python 3.10 runtime-only leg.
if [[ $# -eq 0 ]]; then
  bash scripts/test_py310.sh || status=$?
fi
exit $status
