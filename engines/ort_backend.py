"""ONNX Runtime backend: the embedded default, tuned for few CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engines.backend import BackendError
from engines.spec import ModelSpec


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
        so.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(
                str(model_path), so, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise BackendError(f"ONNX Runtime could not load {model_path}: {e}") from e
        inp = self._sess.get_inputs()[0]
        self._input_name = inp.name
        self._output_name = self._sess.get_outputs()[0].name
        shape = [d if isinstance(d, int) else None for d in inp.shape]
        h, w = spec.input_size
        self._input_shape = (shape[0] or 1, shape[1] or 3, shape[2] or h, shape[3] or w)
        self._dtype = np.dtype(np.float16) if "float16" in inp.type else np.dtype(np.float32)
        self.threads = so.intra_op_num_threads

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
