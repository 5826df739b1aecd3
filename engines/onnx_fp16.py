"""Float32 -> float16 conversion of an exported ONNX graph, keeping float32 I/O.

For TensorRT *strongly typed* networks, where the ONNX tensor types decide the layer
precisions (no builder-side FP16 flag), and for GPUs' half-precision ORT providers.
``onnxconverter_common`` is not a dependency, so this is a small converter for the graphs
:mod:`engines.export` produces (it raises on anything it does not understand):

* The *data path* is every tensor computed from the graph input through ops other than
  ``Shape`` / ``Size`` (shape arithmetic stays int64 / float32 and untouched).
* Float32 initializers and ``Constant`` values that feed the data path become float16;
  ``Cast(to=FLOAT)`` nodes on the data path cast to FLOAT16 instead.
* Non-data operands of data-path ops stay float32: Resize ``roi`` / ``scales``, Pad
  ``pads``, Reshape / Expand / Slice / Tile / Unsqueeze / Squeeze / ReduceMean shapes
  and axes.
* The input gets a ``Cast`` float32 -> float16 right after it and a float output a
  ``Cast`` float16 -> float32 right before it, so callers keep feeding float32.

:func:`convert_file` does it to an exported FP32 ONNX file (``segstream export
model.onnx --fp16``), checked against it in ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engines import onnx_check
from engines.atomic import staged
from engines.onnx_check import CheckReport
from engines.ort_backend import check_graph_against_spec, graph_io_dims
from engines.spec import ModelSpec, sidecar_path

# Input positions that carry data (tensor values); others are shapes, axes, roi, scales.
_DATA_INPUTS: dict[str, tuple[int, ...]] = {
    "Resize": (0,), "Upsample": (0,), "Reshape": (0,), "Expand": (0,), "Slice": (0,),
    "Tile": (0,), "Pad": (0, 2), "Gather": (0,), "Unsqueeze": (0,), "Squeeze": (0,),
    "ReduceMean": (0,), "ReduceMax": (0,), "ReduceSum": (0,), "TopK": (0,),
    "Split": (0,), "Clip": (0, 1, 2),
}
_SHAPE_OPS = {"Shape", "Size"}
_FP32_OUTPUT_OPS = {"ArgMax", "ArgMin"}  # integer outputs: the data path ends there


class Fp16ConversionError(ValueError):
    """The graph has a construct this converter does not handle."""


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a float16 copy of ``model`` with float32 graph inputs and outputs.

    Raises:
        Fp16ConversionError: more than one graph input, subgraphs, or float32 values
            outside the float16 range in the weights.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise Fp16ConversionError(f"expected one graph input, got {[i.name for i in inputs]}")
    if any(a.type == onnx.AttributeProto.GRAPH for n in graph.node for a in n.attribute):
        raise Fp16ConversionError("graphs with subgraphs (If/Loop) are not supported")
    src = inputs[0].name
    half_in = f"{src}_fp16"
    data = {half_in}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    initializers = {i.name: i for i in graph.initializer}
    # The exporter shares equal weights through Identity(initializer) nodes: follow them.
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and (n.input[0] in initializers or n.input[0] in constants)}
    converted: dict[str, str] = {}  # fp32 initializer/constant name -> fp16 copy name
    new_inits: list[TensorProto] = []

    def half_copy(name: str) -> str:
        name = alias.get(name, name)
        if name in converted:
            return converted[name]
        if name in initializers:
            arr = numpy_helper.to_array(initializers[name])
        else:
            arr = numpy_helper.to_array(helper.get_attribute_value(constants[name].attribute[0]))
        if arr.dtype != np.float32:
            return name
        if np.abs(arr).max(initial=0.0) > np.finfo(np.float16).max:
            raise Fp16ConversionError(f"{name}: weights exceed the float16 range")
        new = f"{name}_fp16"
        new_inits.append(numpy_helper.from_array(arr.astype(np.float16), new))
        converted[name] = new
        return new

    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == src:
                node.input[i] = half_in
        if node.op_type in _SHAPE_OPS or node.op_type == "Constant" or node.output[0] in alias:
            continue
        positions = _DATA_INPUTS.get(node.op_type, tuple(range(len(node.input))))
        if not any(node.input[p] in data for p in positions if p < len(node.input)):
            continue
        for p in positions:
            name = node.input[p] if p < len(node.input) else ""
            if name and name not in data and (
                    name in initializers or name in constants or name in alias):
                node.input[p] = half_copy(node.input[p])
        if node.op_type == "Cast":
            to = helper.get_attribute_value(next(a for a in node.attribute if a.name == "to"))
            if to == TensorProto.FLOAT:
                for a in node.attribute:
                    if a.name == "to":
                        a.i = TensorProto.FLOAT16
        if node.op_type not in _FP32_OUTPUT_OPS and not _casts_to_int(node):
            data.update(o for o in node.output if o)

    graph.initializer.extend(new_inits)
    graph.node.insert(0, helper.make_node("Cast", [src], [half_in], to=TensorProto.FLOAT16,
                                          name="input_to_fp16"))
    for out in graph.output:
        if out.type.tensor_type.elem_type == TensorProto.FLOAT and out.name in data:
            half_out = f"{out.name}_fp16"
            for node in graph.node:
                node.output[:] = [half_out if o == out.name else o for o in node.output]
                node.input[:] = [half_out if o == out.name else o for o in node.input]
            graph.node.append(helper.make_node("Cast", [half_out], [out.name],
                                               to=TensorProto.FLOAT, name=f"{out.name}_to_fp32"))
    _drop_unused(graph)
    del graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise Fp16ConversionError(f"float16 graph is inconsistent: {e}") from e
    return model


def _casts_to_int(node: onnx.NodeProto) -> bool:
    if node.op_type != "Cast":
        return False
    to = next(a.i for a in node.attribute if a.name == "to")
    return to not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove initializers and Constant / Identity nodes that nothing reads any more."""
    nodes = list(graph.node)
    while True:
        used = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
        keep_nodes = [n for n in nodes
                      if n.op_type not in ("Constant", "Identity") or n.output[0] in used]
        if len(keep_nodes) == len(nodes):
            break
        nodes = keep_nodes
    del graph.node[:]
    graph.node.extend(nodes)
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def convert_file(src: str | Path, out: str | Path, *, check: bool = True,
                 check_inputs: Sequence[np.ndarray] = (),
                 on_check: Callable[[CheckReport], None] | None = None) -> Path:
    """An exported FP32 ONNX + sidecar -> a float16 ONNX (float32 I/O) + sidecar at ``out``,
    for TensorRT strongly typed FP16 engines, without the training checkpoint.

    ``check`` runs both files in ONNX Runtime on seeded inputs and ``check_inputs``
    ((N, 3, H, W) float32, e.g. pre-processed real frames) and requires the FP16 export's
    tolerances against the FP32 file. Nothing is written unless the check passes.

    Raises:
        FileNotFoundError: ``src`` or its sidecar missing.
        Fp16ConversionError: ``src`` is not an FP32 graph this converter handles (already
            float16, INT8 Q/DQ, several inputs), or ``out`` is not a new ``.onnx`` path.
        OnnxCheckError: the FP16 graph is off.
    """
    src, out = Path(src), Path(out)
    if out.suffix != ".onnx" or out.resolve() == src.resolve():
        raise Fp16ConversionError(f"output {out} must be a new .onnx path (the sidecar "
                                  f"takes .json), e.g. {src.with_suffix('.fp16.onnx')}")
    if not src.is_file():
        raise FileNotFoundError(f"ONNX model {src} not found")
    spec = ModelSpec.load(sidecar_path(src))
    try:
        model = onnx.load(str(src))
    except Exception as e:  # protobuf DecodeError, an LFS pointer, a truncated file, ...
        raise Fp16ConversionError(f"{src} is not a readable ONNX model ({type(e).__name__}: "
                                  f"{e}); a Git LFS pointer needs `git lfs pull`") from None
    if len(model.graph.node) == 0:
        raise Fp16ConversionError(f"{src} holds no graph: not an exported model")
    inp, out_dims = graph_io_dims(model)
    check_graph_against_spec(src, spec, inp, out_dims)  # ModelSpecError: a wrong sidecar
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise Fp16ConversionError(f"{src} is an INT8 (Q/DQ) model; convert its FP32 model")
    if any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer):
        raise Fp16ConversionError(f"{src} already holds float16 weights")
    half = convert_to_fp16(model)
    if check:
        symbolic = [d is None for d in inp]
        inputs = onnx_check.check_inputs(spec.input_size, dynamic=any(symbolic[2:]),
                                         batch=symbolic[0], extra=check_inputs)
        try:
            reference = onnx_check.ort_runner(model)
        except onnx_check.OnnxCheckError as e:  # the input, not the conversion, is at fault
            raise Fp16ConversionError(f"{src}: {e}") from None
        report = onnx_check.compare(onnx_check.ort_runner(half), reference, inputs)
        onnx_check.require(report, 0.0, onnx_check.FP16_RTOL, onnx_check.FP16_MIN_AGREEMENT,
                           "fp16", against=f"the FP32 model {src.name}")
        if on_check:
            on_check(report)
    with staged(out, sidecar_path(out), mkdir=True) as (tmp, side_tmp):
        onnx.save(half, tmp)
        side_tmp.write_text(spec.to_text())
    return out
