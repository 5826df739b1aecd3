"""Tiny segmentation models for the calibration tests, built with onnx.helper.

``make_offset_model``: conv 3x3 stride 2 (3 -> 16) -> ReLU -> conv 3x3 (16 -> 16) -> ReLU ->
conv 1x1 (16 -> K) whose logits carry a large common offset. The differences between
classes are small next to the offset, so quantizing the logits tensor to int8 (one scale for
the whole tensor) flattens them: the last conv is the layer that INT8 breaks, and keeping
it in float restores the labels. Weights come from a fixed seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engines.spec import ClassInfo, ModelSpec


def make_offset_model(out_dir: Path, *, num_classes: int = 4, input_size=(48, 64),
                      offset: float = 0.0, seed: int = 3, name: str = "seg") -> Path:
    """Write ``name.onnx`` + ``name.json``; logits are (1, K, H/2, W/2)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = input_size
    k = num_classes
    arrays = {
        "w1": rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.4,
        "b1": rng.standard_normal(16).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.15,
        "b2": rng.standard_normal(16).astype(np.float32) * 0.1,
        "w3": _centred(rng.standard_normal((k, 16, 1, 1)).astype(np.float32)),
        "b3": np.full(k, offset, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", strides=[2, 2],
                         pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["logits"], name="classifier",
                         kernel_shape=[1, 1]),
    ]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, k, h // 2, w // 2])],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = out_dir / f"{name}.onnx"
    onnx.save(model, path)
    ModelSpec(
        name=name, architecture="test-conv",
        classes=tuple(ClassInfo(i, f"class{i}", (40 * i, 255 - 40 * i, 90)) for i in range(k)),
        input_size=(h, w), ignore_index=None, training_data="random weights (test model)",
        metrics={"val_miou": 0.5},
    ).save(path.with_suffix(".json"))
    return path


def _centred(w: np.ndarray) -> np.ndarray:
    """Classifier weights with zero mean over classes, so no class wins everywhere."""
    return w - w.mean(axis=0, keepdims=True)
