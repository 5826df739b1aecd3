#!/usr/bin/env bash
# GPU checks for segstream, on a CUDA machine (x86 + NVIDIA GPU, or Jetson with JetPack 6).
#
#   tests/gpu/run_gpu_checks.sh              install what is missing, run all checks + bench
#   tests/gpu/run_gpu_checks.sh --no-install fail instead of installing
#   tests/gpu/run_gpu_checks.sh --no-bench   skip the benchmark
#
# 1. CPU shim + nvcc kernel tests, precompiled images (tests/engines/test_cuda_kernels.py,
#    test_prebuilt_kernels.py), build/guard robustness, torch-free commands
# 2. real kernel parity through pycuda vs NumPy, on the shipped precompiled image
#    (tests/gpu/test_gpu_kernels.py)
# 3. TensorRT engines built from ONNX vs ONNX Runtime, >= 99.5 % identical labels at FP16,
#    the all-GPU pipeline, double buffering, CUDA graphs, dynamic profiles
#    (tests/gpu/test_trt_parity.py; SEGSTREAM_GPU_MODEL=path.onnx adds your model)
# 4. `segstream bench` of the FP16 engine against ONNX Runtime, when bench exists.
# Outputs go to ${OUT:-build/gpu-checks}: junit XML, pytest log, bench JSON/Markdown.
set -euo pipefail

cd "$(dirname "$0")/../.."
INSTALL=1
BENCH=1
for arg in "$@"; do
    case "$arg" in
        --no-install) INSTALL=0 ;;
        --no-bench) BENCH=0 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

OUT_DIR=${OUT:-build/gpu-checks}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi

if ! command -v nvidia-smi >/dev/null 2>&1 && [[ ! -e /etc/nv_tegra_release ]]; then
    echo "no NVIDIA driver found (nvidia-smi / Jetson release file): run this on a CUDA machine" >&2
    exit 2
fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv || cat /etc/nv_tegra_release

have() { "$PY" -c "import $1" >/dev/null 2>&1; }
if ! have tensorrt || ! have pycuda; then
    if [[ $INSTALL -eq 0 ]]; then
        echo "tensorrt/pycuda missing and --no-install given" >&2
        exit 2
    fi
    if [[ -e /etc/nv_tegra_release ]]; then
        # JetPack ships TensorRT as a system package; pip wheels are for x86/SBSA only.
        have tensorrt || { echo "install TensorRT from JetPack: sudo apt install python3-libnvinfer" \
            "(and create the venv with --system-site-packages)" >&2; exit 2; }
        "$PY" -m pip install "pycuda>=2024.1"
    else
        "$PY" -m pip install "tensorrt>=10,<12" "pycuda>=2024.1"
    fi
fi
"$PY" - <<'PY'
import pycuda.autoprimaryctx  # noqa: F401
import pycuda.driver as cuda
import tensorrt as trt
dev = cuda.Context.get_device()
print(f"TensorRT {trt.__version__}, pycuda on {dev.name()} (sm_{''.join(map(str, dev.compute_capability()))})")
PY

status=0
"$PY" -m pytest tests/engines/test_cuda_kernels.py tests/engines/test_prebuilt_kernels.py \
    tests/engines/test_trt.py tests/engines/test_trt_guard.py tests/stream/test_torchless.py tests/gpu \
    tests/stream/test_pipeline_concurrency.py \
    -m "gpu or not gpu" -v -s -rs --junitxml "$OUT_DIR/junit.xml" 2>&1 | tee "$OUT_DIR/pytest.log" \
    || status=$?
# A skip in the GPU tests here means the machine is not set up: treat it as a failure.
if grep -E "^SKIPPED .*tests/gpu" "$OUT_DIR/pytest.log" >/dev/null; then
    echo "GPU tests were skipped on a GPU machine; see $OUT_DIR/pytest.log" >&2
    status=1
fi

if [[ $BENCH -eq 1 && -f stream/commands/bench.py ]]; then
    MODEL=${SEGSTREAM_GPU_MODEL:-engines/models/camvid_fastscnn.onnx}
    if [[ ! -f "$MODEL" ]]; then
        MODEL="$OUT_DIR/tiny/tiny.onnx"
        "$PY" -c "from tests.tinymodel import make_tiny_model; make_tiny_model('$OUT_DIR/tiny', input_size=(360, 480), num_classes=11)"
    fi
    STEM="$OUT_DIR/$(basename "${MODEL%.onnx}")"
    "$PY" - "$MODEL" "$STEM.fp16.onnx" <<'PY'
import sys
import onnx
from engines.onnx_fp16 import convert_to_fp16
from engines.spec import ModelSpec, sidecar_path
src, dst = sys.argv[1], sys.argv[2]
onnx.save(convert_to_fp16(onnx.load(src)), dst)
ModelSpec.load(sidecar_path(src)).save(sidecar_path(dst))
PY
    "$PY" -m stream.cli build "$STEM.fp16.onnx" --precision fp16 \
        --timing-cache "$OUT_DIR/timing.cache" --out "$STEM.fp16.trt.engine"
    # backends from the suffixes: .engine -> tensorrt, .onnx -> onnxruntime
    "$PY" -m stream.cli bench --model "$STEM.fp16.trt.engine" --model "$MODEL" --duration 10 \
        --json "$OUT_DIR/bench.json" --markdown "$OUT_DIR/bench.md" || status=$?
fi
exit $status
