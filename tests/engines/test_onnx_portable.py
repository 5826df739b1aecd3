"""ceil_mode AveragePool: the same numbers on every ONNX Runtime (3.10's 1.23 included).

The reference is PyTorch's ``avg_pool2d(ceil_mode=True, count_include_pad=True)`` with no
padding, written out in NumPy: a window that hangs over the input edge is divided by the
number of inputs it covers. ONNX Runtime <= 1.23 divides it by the kernel size instead,
so on the Python 3.10 leg the backend test fails without the rewrite.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from engines.onnx_portable import exclusive_ceil_avgpools, portable_model_bytes


def pool_model(pads: tuple[int, ...] = (0, 0, 0, 0), ceil: int = 1) -> onnx.ModelProto:
    node = helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[2, 2],
                            strides=[2, 2], ceil_mode=ceil, count_include_pad=1, pads=list(pads))
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def torch_ceil_avgpool(x: np.ndarray, k: int = 2) -> np.ndarray:
    """(1, 1, H, W) -> (1, 1, ceil(H/k), ceil(W/k)): mean over each window's valid part."""
    h, w = x.shape[2:]
    out = np.empty((1, 1, -(-h // k), -(-w // k)), np.float32)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[0, 0, i, j] = x[0, 0, i * k:i * k + k, j * k:j * k + k].mean()
    return out


def test_rewrite_targets_only_unpadded_ceil_pools() -> None:
    m = pool_model()
    assert exclusive_ceil_avgpools(m) == ["pool"]
    attrs = {a.name: helper.get_attribute_value(a) for a in m.graph.node[0].attribute}
    assert attrs["count_include_pad"] == 0 and attrs["ceil_mode"] == 1
    assert attrs["kernel_shape"] == [2, 2] and attrs["strides"] == [2, 2]
    assert exclusive_ceil_avgpools(m) == []  # idempotent
    assert exclusive_ceil_avgpools(pool_model(pads=(1, 1, 1, 1))) == []  # padding counts
    assert exclusive_ceil_avgpools(pool_model(ceil=0)) == []


def test_onnx_runtime_matches_torch_semantics(tmp_path: Path, tiny_model: Path) -> None:
    """What OrtBackend loads (portable_model_bytes) pools like PyTorch on this ORT."""
    import onnxruntime as ort

    path = tmp_path / "pool.onnx"
    onnx.save(pool_model(), path)
    x = np.arange(15, dtype=np.float32).reshape(1, 1, 3, 5) + 1
    sess = ort.InferenceSession(portable_model_bytes(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], torch_ceil_avgpool(x), rtol=1e-6)
    assert portable_model_bytes(tiny_model) is None  # nothing to rewrite: loaded from path


def test_shipped_model_uses_the_rewrite() -> None:
    shipped = Path(__file__).resolve().parents[2] / "engines" / "models" / "camvid_fastscnn.onnx"
    model = onnx.load(str(shipped))
    assert len(exclusive_ceil_avgpools(model)) >= 2  # Fast-SCNN's pyramid pooling
