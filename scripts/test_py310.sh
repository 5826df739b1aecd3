#!/usr/bin/env bash
# Second CI leg: JetPack 6's Python (3.10) with the runtime install only: no torch, no
# `train` extra, onnxruntime as resolved for 3.10 (1.23.2). Proves that the streaming,
# build, bench, probe, subscribe and calibrate commands work there, that the package (with
# its precompiled CUDA kernels) installs from a wheel, and that the non-training tests pass.
#
#   scripts/test_py310.sh            (scripts/test.sh runs it after the main suite)
#   PYTHON310=/path/to/python3.10    which interpreter (default: python3.10, else pyenv's)
#   SEGSTREAM_PY310=0                skip this leg (prints that it was skipped)
#
# The venv lives in build/py310 and is rebuilt only when pyproject.toml, this script or
# the interpreter change (idempotent; a first install takes ~4 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${SEGSTREAM_PY310:-1}" == 0 ]]; then
  echo "py310: skipped (SEGSTREAM_PY310=0)"
  exit 0
fi
is310() { [[ -n "$1" && -x "$1" ]] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; }
find310() {
  for cand in $(ls -d "$(pyenv root 2>/dev/null || echo ~/.pyenv)"/versions/3.10.*/bin/python3.10 \
                  2>/dev/null | sort -V -r) "$(command -v python3.10 || true)"; do
    if is310 "$cand"; then PY=$cand; return; fi
  done
}
PY=${PYTHON310:-}
[[ -n "$PY" ]] || find310
if [[ -z "${PYTHON310:-}" ]] && ! is310 "$PY"; then
  # A fresh machine without 3.10: the distribution's (Ubuntu 22.04 ships it), else pyenv's.
  sudo=$([[ $(id -u) == 0 ]] && echo "" || echo sudo)
  if command -v apt-get >/dev/null && apt-cache show python3.10-venv >/dev/null 2>&1; then
    echo "py310: installing python3.10 with apt"
    $sudo apt-get install -y -q python3.10 python3.10-venv >/dev/null || true
  elif command -v pyenv >/dev/null; then
    echo "py310: installing Python 3.10 with pyenv (a few minutes)"
    pyenv install -s 3.10 || true
  fi
  find310
fi
if ! is310 "$PY"; then
  echo "py310: no Python 3.10 found or installable here: install it (pyenv install 3.10) or set PYTHON310;" \
       "SEGSTREAM_PY310=0 skips this leg" >&2
  exit 1
fi

VENV=build/py310
VPY=$PWD/$VENV/bin/python
stamp=$VENV/.segstream-py310
want="$(cat pyproject.toml "$0" | sha256sum | cut -c1-16) $("$PY" -V 2>&1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "py310: creating $VENV with $("$PY" -V 2>&1) (runtime + dev tools, no torch)"
  rm -rf "$VENV"
  mkdir -p build
  log=build/py310-install.log
  { "$PY" -m venv "$VENV" &&
    "$VPY" -m pip install -q --upgrade pip wheel &&
    "$VPY" -m pip install -q '.[dev]' &&        # dependencies, from the project's metadata
    "$VPY" -m pip install -q --no-deps -e .     # then the sources themselves, editable
  } >"$log" 2>&1 || { cat "$log" >&2; echo "py310: install failed (log: $log)" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
"$VPY" - <<'PY'
import importlib.util, sys
import onnxruntime
assert sys.version_info[:2] == (3, 10), sys.version
assert importlib.util.find_spec("torch") is None, "torch is installed in the runtime-only venv"
print(f"py310: Python {sys.version.split()[0]}, onnxruntime {onnxruntime.__version__}, no torch")
PY

tmp=$(mktemp -d)
run_pid=""
cleanup() { [[ -n "$run_pid" ]] && kill "$run_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

# 1. The wheel carries the kernels' sources and precompiled images, and the same loader
#    the GPU path uses accepts them from the installed package (not the work tree).
"$VPY" -m pip wheel -q --no-deps -w "$tmp/wheel" . >"$tmp/wheel.log" 2>&1 \
  || { cat "$tmp/wheel.log" >&2; exit 1; }
"$VPY" -m pip install -q --no-deps --no-index --target "$tmp/site" "$tmp"/wheel/segstream-*.whl
(cd "$tmp" && PYTHONPATH="$tmp/site" "$VPY" - <<'PY'
from pathlib import Path
import engines.cuda_kernels as ck
assert Path(ck.__file__).is_relative_to(Path.cwd() / "site"), ck.__file__
m = ck.read_manifest()  # digest of the installed .cu files == the images' source digest
for arch in (*ck.PREBUILT_ARCHS, ck.PREBUILT_PTX):
    assert ck.select_images(m, ck._arch_cc(arch)), arch
print(f"py310: wheel ships {len(m['images'])} precompiled kernel images (nvcc {m['nvcc']})")
PY
)

# 2. The commands, as a Jetson user runs them.
SEG=$VENV/bin/segstream
"$SEG" --help >/dev/null
"$SEG" build --help >/dev/null
if "$SEG" train --epochs 1 >"$tmp/train.out" 2>&1; then
  echo "py310: segstream train without torch should exit 2" >&2; exit 1
fi
grep -q "needs torch, which is not installed" "$tmp/train.out"
"$VPY" -c "from tests.tinymodel import make_tiny_model; make_tiny_model('$tmp/m')"
"$VPY" - "$tmp/frames" <<'PY'
import sys, cv2, numpy as np
from pathlib import Path
out = Path(sys.argv[1]); out.mkdir()
rng = np.random.default_rng(0)
for i in range(6):
    img = cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), np.uint8), (7, 7), 0)
    cv2.imwrite(str(out / f"f{i}.png"), img)
PY
model=$(ls "$tmp"/m/*.onnx | head -1)
"$SEG" build "$model" --dry-run >/dev/null
"$SEG" probe 'test://smpte?width=160&height=120&fps=30' --seconds 1 >"$tmp/probe.log" 2>&1 \
  || { cat "$tmp/probe.log" >&2; exit 1; }
"$SEG" bench --model "$model" --resolution 120x160 --duration 1 --warmup 0.5 --threads 1 \
  >"$tmp/bench.log" 2>&1 || { cat "$tmp/bench.log" >&2; exit 1; }
endpoint="ipc://$tmp/seg.sock"
"$SEG" run --source 'test://smpte?width=160&height=120&fps=30' --model "$model" \
  --publish "$endpoint" --duration 60 --stats-interval 0 --threads 1 >"$tmp/run.log" 2>&1 &
run_pid=$!
"$SEG" subscribe "$endpoint" --count 3 --timeout 30 >"$tmp/sub.log" 2>&1 \
  || { cat "$tmp/sub.log" "$tmp/run.log" >&2; exit 1; }
kill -INT "$run_pid"; wait "$run_pid" || { cat "$tmp/run.log" >&2; exit 1; }
run_pid=""
"$SEG" calibrate "$model" --data "$tmp/frames" --samples 6 --profile ort-cpu --no-fallback \
  --speed-runs 2 --no-progress --out "$tmp/m/int8.onnx" >"$tmp/calib.log" 2>&1 \
  || { cat "$tmp/calib.log" >&2; exit 1; }
test -s "$tmp/m/int8.onnx"
echo "py310: run, subscribe, bench, probe, build --help/--dry-run, calibrate (ORT) all work"

# 3. The non-training tests: without torch, tests/conftest.py leaves out the modules that
#    import it at the top; the others that need it skip themselves (pytest.importorskip).
exec "$VPY" -m pytest -q -ra -p no:cacheprovider "$@"
