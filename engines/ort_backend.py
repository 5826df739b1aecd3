"""ONNX Runtime backend: the embedded default, tuned for few CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engines.backend import BackendError
from engines.spec import ModelSpec, ModelSpecError, sidecar_path


def default_threads() -> int:
    """All available cores, capped at 4 (more rarely helps a single small graph)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 4))


class OrtBackend:
    """ONNX Runtime on the CPU (or another execution provider when asked).

    Session options for small edge CPUs: explicit intra-op thread count, sequential
    execution, full graph optimisation, and no spin-waiting between runs (spinning
    burns the cores that capture and post-processing need).
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | Path,
        spec: ModelSpec,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        spin: bool = False,
    ) -> None:
        import onnxruntime as ort

        self.spec = spec
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or default_threads()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        # x86 CPUs without VNNI run ORT's fast u8s8 int8 GEMM with VPMADDUBSW, whose int16
        # pair sums can saturate: the test suite's tiny models then agree with FP32 on ~92 %
        # of pixels instead of > 95 % (the shipped CamVid INT8 models lose < 0.1 mIoU).
        # SEGSTREAM_INT8_PRECISE=1 keeps 32-bit accumulation there, at about FP32 speed
        # (measured: Fast-SCNN INT8 71.5 fps vs FP32 77.8 on an AVX2 VM); it does nothing
        # on VNNI/ARM CPUs or float models. Off by default: INT8 is chosen for speed.
        if os.environ.get("SEGSTREAM_INT8_PRECISE", "") not in ("", "0"):
            so.add_session_config_entry("session.x64quantprecision", "1")
        so.log_severity_level = 3
        try:
            from engines.onnx_portable import portable_model_bytes

            # ceil_mode AveragePools rewritten to mean the same on every ORT version
            source = portable_model_bytes(model_path) or str(model_path)
            self._sess = ort.InferenceSession(
                source, so, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise BackendError(f"ONNX Runtime could not load {model_path}: {e}") from e
        inp, out = self._sess.get_inputs()[0], self._sess.get_outputs()[0]
        self._input_name = inp.name
        self._output_name = out.name
        shape = _static(inp.shape) or [None] * 4
        check_graph_against_spec(model_path, spec, shape, _static(out.shape))
        h, w = spec.input_size
        self._input_shape = (shape[0] or 1, shape[1] or 3, shape[2] or h, shape[3] or w)
        self._dtype = np.dtype(np.float16) if "float16" in inp.type else np.dtype(np.float32)
        self.threads = so.intra_op_num_threads
        if spec.output == "logits" and _static(out.shape)[1:2] in ([None], []):
            # The class count is not in the graph's metadata: one inference tells it.
            got = self.infer(np.zeros(self._input_shape, self._dtype)).shape
            check_graph_against_spec(model_path, spec, list(self._input_shape), list(got))

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return self._input_shape

    @property
    def input_dtype(self) -> np.dtype:
        return self._dtype

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float -> (N, K, h, w) logits or (N, H, W) labels."""
        if batch.dtype != self._dtype:
            batch = batch.astype(self._dtype)
        return self._sess.run([self._output_name], {self._input_name: batch})[0]

    def close(self) -> None:
        self._sess = None


def _static(shape: list[object] | None) -> list[int | None]:
    """An ONNX Runtime shape with symbolic / unknown dimensions as None ([]: unknown rank)."""
    return [d if isinstance(d, int) and d > 0 else None for d in shape or []]


def check_graph_against_spec(model_path: str | Path, spec: ModelSpec,
                             inp: list[int | None], out: list[int | None]) -> None:
    """Refuse a graph whose (static) input/output shapes disagree with its sidecar, so that
    a mismatch fails when the model loads, not at the first frame. Unknown dimensions
    (None) and an unknown rank ([]) are not checked.

    Raises:
        ModelSpecError: naming the model, the sidecar, both values and the fix.
    """
    where = f"{model_path} and its sidecar {sidecar_path(model_path)}"
    fix = "fix the sidecar or re-export the model (`segstream export`)"
    inp = inp or [None] * 4
    if len(inp) != 4:
        raise ModelSpecError(f"{where}: the graph's input has shape {inp}; expected "
                             "(N, 3, H, W)")
    if inp[1] not in (None, 3):
        raise ModelSpecError(f"{where}: the graph's input has {inp[1]} channels; expected 3 "
                             "(RGB)")
    h, w = spec.input_size
    if (inp[2] not in (None, h)) or (inp[3] not in (None, w)):
        raise ModelSpecError(f"{where} disagree: the sidecar's input_size is {h}x{w} (HxW) "
                             f"but the graph takes {inp[2] or '?'}x{inp[3] or '?'}; {fix}")
    k = spec.num_classes
    if not out:
        return
    if spec.output == "logits":
        if len(out) != 4:
            raise ModelSpecError(f"{where} disagree: the sidecar says output 'logits' "
                                 f"(N, K, h, w) but the graph outputs shape {out}; {fix}")
        if out[1] not in (None, k):
            raise ModelSpecError(f"{where} disagree: the sidecar lists {k} classes but the "
                                 f"graph outputs {out[1]}; {fix}")
    elif len(out) != 3:
        raise ModelSpecError(f"{where} disagree: the sidecar says output 'labels' (N, H, W) "
                             f"but the graph outputs shape {out}; {fix}")
