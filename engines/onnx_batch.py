"""Run a fixed-batch-1 ONNX graph on batches: the rewrite behind ``--batch N``.

Models exported before dynamic batches (the shipped ones among them) declare their input
as (1, 3, H, W). Convolutions, pools and element-wise ops do not care about N; what bakes
the 1 in is:

* the declared shapes: the input's and outputs' N becomes the symbol ``batch`` and
  ``value_info`` (optional shape annotations, e.g. left by INT8 calibration) is dropped;
* a ``Resize`` whose ``sizes`` is a constant ``[1, C, H, W]`` (what constant folding makes
  of ``Concat(Shape(x)[:2], [H, W])``): ``sizes`` becomes ``Concat(Shape(x)[:1],
  [C, H, W])``, the same value at N = 1 and the input's N otherwise.

Anything else that fixes N (a ``Reshape`` to a constant (1, -1), a batch-mixing op) is not
rewritten: :func:`batch_mismatch` runs different frames as one batch and one by one on
the rewritten graph and reports any difference, so such a model fails at load with the
advice to re-export it, never with wrong labels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

BATCH_DIM = "batch"
_PREFIX = "segstream_batch"


class BatchRewriteError(ValueError):
    """The graph's batch dimension cannot be made dynamic; the message says why."""


def input_batch(model: onnx.ModelProto) -> int | None:
    """The first graph input's declared N: an int, or None when symbolic or unknown."""
    inputs = _graph_inputs(model)
    if not inputs:
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else None


def make_batch_dynamic(model: onnx.ModelProto) -> list[str]:
    """Rewrite ``model`` (in place) so that its input and outputs take any N.

    Returns:
        What was changed, one short line each (for the log).
    Raises:
        BatchRewriteError: the input is not 4-D, or declares an N other than 1.
    """
    graph = model.graph
    inputs = _graph_inputs(model)
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        raise BatchRewriteError(f"expected one (N, 3, H, W) input, the graph has "
                                f"{[i.name for i in inputs]}")
    n = input_batch(model)
    if n not in (None, 1):
        raise BatchRewriteError(f"the input's batch is fixed at {n}, not 1")
    changed = []
    for value in (inputs[0], *graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_param:
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIM
            changed.append(f"{value.name}: N -> {BATCH_DIM}")
    if graph.value_info:
        changed.append(f"{len(graph.value_info)} value_info shapes dropped")
        del graph.value_info[:]
    constants = _constants(graph)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        sizes = constants.get(node.input[3]) if (
            node.op_type == "Resize" and len(node.input) == 4) else None
        if sizes is not None and sizes.shape == (4,) and sizes[0] == 1:
            k = len(changed)
            names = {s: f"{_PREFIX}_{s}{k}" for s in ("shape", "n", "chw", "zero", "one",
                                                      "sizes")}
            graph.initializer.extend([
                numpy_helper.from_array(sizes[1:].astype(np.int64), names["chw"]),
                numpy_helper.from_array(np.array([0], np.int64), names["zero"]),
                numpy_helper.from_array(np.array([1], np.int64), names["one"])])
            nodes += [helper.make_node("Shape", [node.input[0]], [names["shape"]]),
                      helper.make_node("Slice", [names["shape"], names["zero"], names["one"]],
                                       [names["n"]]),
                      helper.make_node("Concat", [names["n"], names["chw"]], [names["sizes"]],
                                       axis=0)]
            node.input[3] = names["sizes"]
            changed.append(f"{node.name or 'Resize'}: constant sizes {sizes.tolist()} -> "
                           "input's N")
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return changed


def dynamic_batch_bytes(source: str | Path | bytes) -> tuple[bytes, list[str]]:
    """The serialised model at ``source`` (a path or model bytes) with
    :func:`make_batch_dynamic` applied, and what was changed."""
    if isinstance(source, bytes):
        model = onnx.load_from_string(source)
    else:
        model = onnx.load(str(source))
    changed = make_batch_dynamic(model)
    return model.SerializeToString(), changed


def batch_mismatch(run: Callable[[np.ndarray], np.ndarray], shape: tuple[int, int, int, int],
                   dtype: np.dtype, n: int = 2, seed: int = 0) -> str:
    """Why ``run`` does not treat the frames of a batch independently, or "" if it does.

    ``run`` maps an (N, 3, H, W) batch to (N, ...) outputs. ``n`` different seeded
    N(0, 1) frames go in as one batch and one at a time; the outputs must agree to float
    rounding (1e-4 of the largest magnitude) and, for logits, in every argmax.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape[1:]), dtype=np.float32).astype(dtype)
    together = np.asarray(run(x))
    alone = np.concatenate([np.asarray(run(x[i:i + 1])) for i in range(n)])
    if together.shape != alone.shape:
        return (f"a batch of {n} gave outputs {together.shape}, {n} frames one by one "
                f"{alone.shape}")
    if together.dtype.kind in "iu":
        diff = int((together != alone).sum())
        return f"{diff} labels differ between a batch of {n} and one by one" if diff else ""
    a, b = together.astype(np.float32), alone.astype(np.float32)
    err, scale = float(np.abs(a - b).max()), float(np.abs(b).max())
    if err > 1e-4 * max(scale, 1.0):
        return f"outputs of a batch of {n} differ from one by one by up to {err:.3g}"
    if a.ndim == 4 and (a.argmax(1) != b.argmax(1)).any():
        return f"labels of a batch of {n} differ from one by one"
    return ""


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (old exporters list weights as inputs)."""
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Small integer constants (initializers and Constant nodes) by output name."""
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer
           if t.data_type == onnx.TensorProto.INT64 and len(t.dims) == 1 and t.dims[0] <= 8}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            arr = numpy_helper.to_array(node.attribute[0].t)
            if arr.dtype == np.int64 and arr.ndim == 1 and arr.size <= 8:
                out[node.output[0]] = arr
    return out
