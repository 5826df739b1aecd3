"""Tiny random segmentation models built with onnx.helper, for fast tests.

``make_tiny_model(dir, ...)`` writes ``tiny.onnx`` + ``tiny.json``: a strided 3x3 conv
(3 -> K channels, stride 4) then ReLU and a 1x1 conv, so logits are (1, K, H/4, W/4).
Weights come from a fixed seed, so label maps are reproducible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engines.spec import ClassInfo, ModelSpec


def make_tiny_model(out_dir: str | Path, *, num_classes: int = 5, input_size=(64, 96),
                    seed: int = 0, name: str = "tiny", argmax: bool = False) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = input_size
    k = num_classes
    w1 = rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.5
    b1 = rng.standard_normal(16).astype(np.float32) * 0.1
    w2 = rng.standard_normal((k, 16, 1, 1)).astype(np.float32) * 0.5
    b2 = rng.standard_normal(k).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], strides=[4, 4], pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["logits"], kernel_shape=[1, 1]),
    ]
    out_name, out_shape, out_type = "logits", [1, k, (h + 3) // 4, (w + 3) // 4], TensorProto.FLOAT
    if argmax:
        nodes += [
            helper.make_node("Resize", ["logits", "", "scales"], ["up"], mode="linear",
                             coordinate_transformation_mode="half_pixel"),
            helper.make_node("ArgMax", ["up"], ["am"], axis=1, keepdims=0),
            helper.make_node("Cast", ["am"], ["labels"], to=TensorProto.UINT8),
        ]
        out_name, out_shape, out_type = "labels", [1, h, w], TensorProto.UINT8
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"),
                                                        (b2, "b2"))]
    if argmax:
        inits.append(numpy_helper.from_array(
            np.array([1, 1, h / ((h + 3) // 4), w / ((w + 3) // 4)], np.float32), "scales"))
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info(out_name, out_type, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = out_dir / f"{name}.onnx"
    onnx.save(model, path)
    palette = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(k)]
    ModelSpec(
        name=name, architecture="tiny-conv",
        classes=tuple(ClassInfo(i, f"class{i}", palette[i]) for i in range(k)),
        input_size=(h, w), output="labels" if argmax else "logits",
        training_data="random weights (test model)",
    ).save(path.with_suffix(".json"))
    return path
