"""Compare an ONNX graph's outputs with a reference on the same inputs (torch-free).

Used by :mod:`engines.export` (reference: the torch network) and by
:func:`engines.onnx_fp16.convert_file` (reference: the FP32 ONNX in ONNX Runtime).
Inputs are (N, 3, H, W) float32 NCHW; outputs (N, K, h, w) float32 logits or
(N, H, W) uint8 labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# fp32: ORT and torch differ by summation order and BN folding only.
FP32_ATOL, FP32_RTOL, FP32_MIN_AGREEMENT = 1e-4, 1e-4, 0.999
# fp16: 11-bit mantissa on every weight and activation.
FP16_RTOL, FP16_MIN_AGREEMENT = 1e-2, 0.99

Runner = Callable[[np.ndarray], np.ndarray]  # (N, 3, H, W) float32 -> the model's output


class OnnxCheckError(RuntimeError):
    """The graph does not reproduce its reference within tolerance."""


@dataclass(frozen=True)
class CheckReport:
    """Outcome of comparing an ONNX graph with its reference.

    Attributes:
        shapes: input shapes (N, 3, H, W) that were compared.
        max_abs_error: max |onnx - reference| over all logits (0.0 for label outputs).
        max_abs_logit: max |reference logit|, the scale the relative tolerance refers to.
        label_agreement: fraction of pixels with the same argmax label.
    """

    shapes: tuple[tuple[int, int, int, int], ...]
    max_abs_error: float
    max_abs_logit: float
    label_agreement: float

    def summary(self) -> str:
        return (f"max |error| {self.max_abs_error:.3g} (max |logit| {self.max_abs_logit:.3g}), "
                f"label agreement {100 * self.label_agreement:.3f}% on inputs {self.shapes}")


def check_inputs(size: tuple[int, int], *, dynamic: bool = False, batch: bool = True,
                 extra: Sequence[np.ndarray] = (), seed: int = 0) -> list[np.ndarray]:
    """Two seeded N(0, 1) frames at ``size`` (normalised pixels are roughly N(0, 1)), with
    ``batch`` (a symbolic N) a batch of 3, for a ``dynamic`` model a batch of 2 (1) at an odd
    smaller size, then every array in ``extra``; all (N, 3, H, W) float32."""
    rng = np.random.default_rng(seed)
    h, w = size
    inputs = [rng.standard_normal((1, 3, h, w), dtype=np.float32) for _ in range(2)]
    if batch:
        inputs.append(rng.standard_normal((3, 3, h, w), dtype=np.float32))
    if dynamic:
        inputs.append(rng.standard_normal((2 if batch else 1, 3, h * 3 // 4 + 1, w * 3 // 4 + 3),
                                          dtype=np.float32))
    return inputs + [np.ascontiguousarray(a, dtype=np.float32) for a in extra]


def ort_runner(model: Any, threads: int = 2) -> Runner:
    """A CPU ONNX Runtime session of ``model`` (ModelProto, bytes or path) as a runner of
    its one input."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    try:
        sess = ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own types (Fail, InvalidGraph, ...) for a bad graph
        raise OnnxCheckError(f"ONNX Runtime cannot load the graph: {e}") from None
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def compare(run: Runner, reference: Runner, inputs: Sequence[np.ndarray]) -> CheckReport:
    """Run both on every input; logits are compared value by value and by argmax."""
    max_err = max_ref = 0.0
    same = total = 0
    for x in inputs:
        ref = reference(x)
        got = run(x)
        if got.shape != ref.shape:
            raise OnnxCheckError(f"ONNX output shape {got.shape} != reference {ref.shape} "
                                 f"for input {x.shape}")
        if ref.dtype == np.uint8:
            ref_labels, got_labels = ref, got
        else:
            max_err = max(max_err, float(np.abs(got.astype(np.float32) - ref).max()))
            max_ref = max(max_ref, float(np.abs(ref).max()))
            ref_labels, got_labels = ref.argmax(1), got.argmax(1)
        same += int((ref_labels == got_labels).sum())
        total += ref_labels.size
    return CheckReport(tuple(tuple(x.shape) for x in inputs), max_err, max_ref, same / total)


def require(report: CheckReport, atol: float, rtol: float, min_agreement: float, what: str,
            *, against: str = "its reference", error: type[Exception] = OnnxCheckError,
            hint: str = "") -> None:
    """Raise ``error`` when the report is outside ``atol + rtol * max |logit|`` or below
    ``min_agreement``."""
    tol = atol + rtol * report.max_abs_logit
    if report.max_abs_error > tol or report.label_agreement < min_agreement:
        raise error(f"{what} ONNX output does not match {against}: {report.summary()}; "
                    f"allowed max error {tol:.3g} and agreement >= {100 * min_agreement:.1f}%"
                    + (f". {hint}" if hint else ""))
