"""ONNX graph rewrites that make a model mean the same thing on every runtime version.

``AveragePool`` with ``ceil_mode=1`` and ``count_include_pad=1`` (what ``torch.onnx``
exports for PyTorch's default ``avg_pool2d(ceil_mode=True)``, e.g. Fast-SCNN's pyramid
pooling) is read differently by runtimes: PyTorch, and ONNX Runtime >= 1.24, divide a window
that hangs over the input edge by the part of it inside the input (plus padding); ONNX
Runtime <= 1.23 (the newest for Python 3.10) divides by the full kernel size, which moves the
shipped model's logits by up to 2.2 and flips 0.5 % of its labels. With no padding
(``pads`` all 0) the PyTorch divisor is exactly the count of valid inputs, i.e.
``count_include_pad=0``, which every version implements the same way. Rewriting those nodes
is therefore exact, and is done before a model is handed to ONNX Runtime or TensorRT.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def exclusive_ceil_avgpools(model: onnx.ModelProto) -> list[str]:
    """Set ``count_include_pad=0`` on unpadded ``ceil_mode`` AveragePools, in place.

    Returns:
        Names of the rewritten nodes (empty: the model was left unchanged).
    """
    changed = []
    for i, node in enumerate(model.graph.node):
        if node.op_type != "AveragePool" or node.domain not in ("", "ai.onnx"):
            continue
        pads = list(_attr(node, "pads", []))  # type: ignore[call-overload]
        auto_pad = _attr(node, "auto_pad", b"NOTSET")
        if (_attr(node, "ceil_mode", 0) != 1 or _attr(node, "count_include_pad", 0) != 1
                or any(pads) or auto_pad not in (b"NOTSET", b"VALID", "NOTSET", "VALID")):
            continue
        kept = [a for a in node.attribute if a.name != "count_include_pad"]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("count_include_pad", 0)])
        changed.append(node.name or f"AveragePool#{i}")
    return changed


def portable_model_bytes(path: str | Path) -> bytes | None:
    """The model at ``path`` with :func:`exclusive_ceil_avgpools` applied, serialised, or
    None when nothing needed rewriting (or the weights live in external data files, which
    only load from the path)."""
    model = onnx.load(str(path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return None
    if not exclusive_ceil_avgpools(model):
        return None
    return model.SerializeToString()
