"""Static check of a Q/DQ model against TensorRT's explicit-quantization rules.

TensorRT cannot run on this machine, so the rules its ONNX parser enforces for Q/DQ graphs
are checked on the file instead (TensorRT developer guide, "Explicit Quantization"):

* QuantizeLinear/DequantizeLinear carry int8 data (fp8/int4 also exist; we emit int8):
  no uint8 activations, no int32 (bias) DequantizeLinear;
* zero points are all 0 (TensorRT quantization is symmetric);
* a per-channel scale quantizes a weight along its output-channel axis (0 for Conv/Gemm
  weights, 1 for ConvTranspose);
* opset >= 13 (per-axis Q/DQ).

An empty list means the model follows all of them; it is not a substitute for building an
engine with TensorRT, which the report says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def tensorrt_issues(model_path: str | Path) -> list[str]:
    """Human-readable rule violations of the Q/DQ model at ``model_path`` (empty: none)."""
    model = onnx.load(str(model_path))
    issues: list[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        issues.append(f"opset {opset} < 13: per-channel Q/DQ needs opset 13")
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if n.domain not in ("", "ai.onnx"):
            issues.append(f"{n.name}: {n.domain} {n.op_type} (contrib op) is not ONNX standard")
        if len(n.input) > 2 and n.input[2] in inits:
            zp = numpy_helper.to_array(inits[n.input[2]])
            if zp.dtype != np.int8:
                issues.append(f"{n.name}: {zp.dtype} zero point (TensorRT takes int8 only)")
            elif np.any(zp):
                issues.append(f"{n.name}: non-zero zero point (TensorRT is symmetric)")
        elif n.op_type == "QuantizeLinear":
            issues.append(f"{n.name}: no zero point, so uint8 output (TensorRT takes int8)")
        src = inits.get(n.input[0])
        if n.op_type == "DequantizeLinear" and src is not None and src.data_type not in (
                onnx.TensorProto.INT8, onnx.TensorProto.FLOAT):
            issues.append(f"{n.name}: dequantizes a "
                          f"{onnx.TensorProto.DataType.Name(src.data_type)} initializer "
                          "(e.g. an int32 bias); TensorRT takes int8 only")
        scale = numpy_helper.to_array(inits[n.input[1]]) if n.input[1] in inits else None
        if n.op_type == "DequantizeLinear" and scale is not None and scale.size > 1:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            for c in consumers.get(n.output[0], []):
                want = 1 if c.op_type == "ConvTranspose" else 0
                if c.op_type in ("Conv", "ConvTranspose", "Gemm") and c.input[1] == n.output[0] \
                        and axis != want:
                    issues.append(f"{n.name}: per-channel axis {axis} on {c.op_type} weight, "
                                  f"TensorRT needs axis {want}")
    return issues
