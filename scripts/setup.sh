#!/usr/bin/env bash
# Idempotent setup for a fresh Debian machine: system GStreamer, a virtualenv in
# .venv with the project installed editable, torch (CPU) and the dev tools.
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-libav gstreamer1.0-rtsp gir1.2-gstreamer-1.0
  gir1.2-gst-plugins-base-1.0 gir1.2-gst-rtsp-server-1.0 libgirepository1.0-dev
  libcairo2-dev pkg-config libzmq3-dev libzstd-dev python3-gst-1.0
  chromium)  # chromium: the preview's browser test (tests/stream/test_preview.py)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "setup: installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
stamp=.venv/.segstream-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
"$VPY" -m pip install -q --upgrade pip wheel
# The CPU build of torch that lies on this disk; a bare `torch` would pull CUDA wheels.
"$VPY" -c "import torch" 2>/dev/null || "$VPY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
"$VPY" -m pip install -q -e ".[train,dev,pretrained,preview]"
echo "$want" > "$stamp"
echo "setup: ready ($(.venv/bin/segstream --version 2>/dev/null || echo segstream))"
