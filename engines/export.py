"""Export a trained network to ONNX for ONNX Runtime and TensorRT, checked against torch.

:func:`export_onnx` writes ``model.onnx`` and its sidecar ``model.json``:

* input ``input``: (N, 3, H, W) float32, NCHW, RGB normalised as the sidecar says.
  N is always symbolic (``batch``), so one engine call can take several cameras' frames
  (``segstream run --batch``); static export fixes (H, W) = ``spec.input_size``,
  ``dynamic=True`` makes them symbolic too (``height``, ``width``).
* output ``logits``: (N, K, ceil(H/s), ceil(W/s)) float32 at the model's output stride
  ``s`` (the client's post-processor upsamples and takes the argmax), or with
  ``argmax=True`` output ``labels``: (N, H, W) uint8 class ids. In-graph that is a
  bilinear Resize (``half_pixel``, i.e. ``align_corners=False``) to the input size, ArgMax
  over the classes (int64, first maximum on ties, like torch) and a Cast to uint8. ORT
  runs all three on CPU. The onnx-tensorrt operator table for TensorRT 10 lists ArgMax
  (FP32/FP16 input), Cast to/from INT64 and UINT8, and UINT8 as a network input/output
  type only, which is how it is used here (the Cast is the last node), so the same file
  builds an engine with a uint8 output binding. TensorRT 8.x has no UINT8 and needs the
  logits export. K must be <= 256. (Checked against the documentation, not on a GPU.)
* ``fp16=True``: weights and activations in float16 with float32 I/O through Cast nodes
  (see :mod:`engines.onnx_fp16`), for TensorRT strongly typed networks.

BatchNorm is folded into the convolutions by the exporter's constant folding; nothing
else is simplified. ``check=True`` (default) runs the file in ONNX Runtime on seeded
random inputs (and on ``check_inputs``, e.g. pre-processed real frames) and compares with
torch; a mismatch raises :class:`ExportCheckError` naming the max error or the label
agreement, and leaves any existing file at ``path`` untouched.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from engines.atomic import staged
from engines.onnx_check import (
    FP16_MIN_AGREEMENT,
    FP16_RTOL,
    FP32_ATOL,
    FP32_MIN_AGREEMENT,
    FP32_RTOL,
    CheckReport,
    OnnxCheckError,
    check_inputs,
    compare,
    ort_runner,
    require,
)
from engines.spec import ModelSpec, sidecar_path

INPUT_NAME = "input"



class ExportError(RuntimeError):
    """The model cannot be exported as asked; the message says why and what to change."""


class ExportInputError(ExportError):
    """The arguments cannot work (output name, opset, classes); raised before any work."""


class ExportCheckError(ExportError, OnnxCheckError):
    """The exported graph does not reproduce torch within tolerance."""


class DeployWrapper(nn.Module):
    """What gets exported: the network in eval mode, with optional upsample + argmax.

    (N, 3, H, W) float32 -> (N, K, h, w) float32 logits, or (N, H, W) uint8 labels.
    """

    def __init__(self, model: nn.Module, argmax: bool) -> None:
        super().__init__()
        self.model = model
        self.argmax = argmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, (tuple, list)):  # a model left in training mode with aux heads
            out = out[0]
        if not self.argmax:
            return out
        if getattr(self.model, "output_stride", None) != 1:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out.argmax(dim=1).to(torch.uint8)  # (N, H, W)


def export_onnx(
    model: nn.Module,
    spec: ModelSpec,
    path: str | Path,
    *,
    dynamic: bool = False,
    argmax: bool = False,
    opset: int = 17,
    check: bool = True,
    fp16: bool = False,
    check_inputs: Sequence[np.ndarray] = (),
    on_check: Callable[[str, CheckReport], None] | None = None,
) -> Path:
    """Export ``model`` to ``path`` (ONNX) and write the sidecar beside it.

    Args:
        model: a registry network; put in eval mode for the export (its mode is restored).
        spec: the sidecar to write; ``output`` is set to ``"labels"`` / ``"logits"`` from
            ``argmax``, ``input_size`` is the static export size (and the default size of
            a dynamic model).
        path: output ``.onnx`` file (parent directories are created).
        dynamic: symbolic height and width too, instead of ``spec.input_size``.
        argmax: upsample + argmax + Cast uint8 in the graph (output ``labels``).
        opset: ONNX opset (13..20; 17 is what TensorRT 8.6+ and ORT 1.14+ both take).
        check: compare ONNX Runtime with torch and raise :class:`ExportCheckError` if off.
        fp16: convert weights and activations to float16, keeping float32 I/O.
        check_inputs: extra (N, 3, H, W) float32 inputs for the check (real frames).
        on_check: called with ("fp32" | "fp16", report) after each passed check.

    Returns:
        ``path``.
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise ExportInputError(f"output path {path} must end in .onnx (the sidecar takes .json)")
    k = getattr(model, "num_classes", spec.num_classes)
    if k != spec.num_classes:
        raise ExportInputError(f"model has {k} classes but the spec lists {spec.num_classes}; "
                          "export with the spec saved in the training checkpoint")
    if argmax and spec.num_classes > 256:
        raise ExportInputError(f"argmax output is uint8: {spec.num_classes} classes do not fit; "
                          "export logits (drop --argmax)")
    if not 13 <= opset <= 20:
        raise ExportInputError(f"opset {opset} not supported; use 13..20 (17 recommended)")
    out_name = "labels" if argmax else "logits"
    spec = dataclasses.replace(spec, output=out_name)
    was_training = model.training
    wrapper = DeployWrapper(model, argmax).eval()
    try:
        proto = _trace_to_onnx(wrapper, spec, out_name, dynamic=dynamic, opset=opset)
        if check:
            report = check_onnx(proto, wrapper, spec, dynamic=dynamic, extra=check_inputs)
            _require(report, FP32_ATOL, FP32_RTOL, FP32_MIN_AGREEMENT, "fp32")
            if on_check:
                on_check("fp32", report)
        if fp16:
            from engines.onnx_fp16 import convert_to_fp16

            proto = convert_to_fp16(proto)
            if check:
                report = check_onnx(proto, wrapper, spec, dynamic=dynamic, extra=check_inputs)
                _require(report, 0.0, FP16_RTOL, FP16_MIN_AGREEMENT, "fp16")
                if on_check:
                    on_check("fp16", report)
    finally:
        model.train(was_training)
    # both written in full first, then renamed in place one after the other
    with staged(path, sidecar_path(path), mkdir=True) as (tmp, side_tmp):
        onnx.save(proto, tmp)
        side_tmp.write_text(spec.to_text())
    return path


def _trace_to_onnx(wrapper: DeployWrapper, spec: ModelSpec, out_name: str, *, dynamic: bool,
                   opset: int) -> onnx.ModelProto:
    """Trace with the TorchScript exporter (no onnxscript dependency), then check."""
    h, w = spec.input_size
    dummy = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    axes = {INPUT_NAME: {0: "batch"}, out_name: {0: "batch"}}
    if dynamic:
        out_axes = {0: "batch", 1: "height", 2: "width"} if out_name == "labels" else {
            0: "batch", 2: "out_height", 3: "out_width"}
        axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, out_name: out_axes}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer notes
        try:
            torch.onnx.export(
                wrapper, (dummy,), buf, dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[out_name], dynamic_axes=axes,
                do_constant_folding=True,
            )
        except Exception as e:  # the exporter raises many types (SymbolicValueError, ...)
            raise ExportError(f"torch.onnx.export failed for {spec.architecture!r}: {e}") from e
    proto = onnx.load_from_string(buf.getvalue())
    proto.doc_string = f"segstream {spec.name} ({spec.architecture}), output {out_name}"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"exported graph fails onnx.checker: {e}") from e
    return proto


def check_onnx(proto: onnx.ModelProto, wrapper: nn.Module, spec: ModelSpec, *,
               dynamic: bool = False, extra: Sequence[np.ndarray] = (), seed: int = 0
               ) -> CheckReport:
    """Run ``proto`` in ONNX Runtime and ``wrapper`` in torch on the same inputs
    (:func:`engines.onnx_check.check_inputs`)."""
    wrapper.eval()

    def reference(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return wrapper(torch.from_numpy(x)).numpy()

    inputs = check_inputs(spec.input_size, dynamic=dynamic, extra=extra, seed=seed)
    try:
        return compare(ort_runner(proto), reference, inputs)
    except OnnxCheckError as e:
        raise ExportCheckError(str(e)) from None


def _require(report: CheckReport, atol: float, rtol: float, min_agreement: float,
             what: str) -> None:
    require(report, atol, rtol, min_agreement, what, against="torch", error=ExportCheckError,
            hint="The graph uses an op that exports differently; file an issue with the "
            "architecture name")
