"""Post-training static INT8 quantization to a Q/DQ ONNX graph (ONNX Runtime's quantizer).

The output is explicit quantization: ``QuantizeLinear``/``DequantizeLinear`` pairs around
every quantized op, symmetric int8 activations and weights (zero point 0), per-output-channel
weight scales. ONNX Runtime runs it on the CPU with int8 kernels; TensorRT builds it as an
explicitly quantized network (the Q/DQ scales are used as given, no TensorRT calibrator).

The default profile, ``"tensorrt"``, is one layout for both runtimes:
    * biases stay float (no int32 ``DequantizeLinear``: TensorRT's ONNX parser accepts only
      8-bit/fp8/int4 inputs to ``DequantizeLinear``); ONNX Runtime quantizes them itself when
      it fuses DQ -> Conv -> Q into ``QLinearConv``;
    * a dedicated Q/DQ pair per consumer (TensorRT fuses each pair into the one layer after it);
    * weights stored as int8 initializers feeding ``DequantizeLinear`` (TensorRT 10+), or, with
      ``weight_qdq_pair=True``, as float with a Q/DQ pair (what TensorRT 8.x requires; the
      file is then as large as the FP32 one).

A second profile, ``"ort-cpu"``, is for ONNX Runtime on x86/ARM CPUs only: asymmetric uint8
activations (ReLU folded into the range, int32 biases) with symmetric int8 per-channel
weights, the layout ORT's CPU kernels are fastest with. Symmetric int8 activations leave every
ReLU as a float op between a DequantizeLinear and a QuantizeLinear, which on ORT's CPU
provider can make the ``"tensorrt"`` profile slower than FP32; TensorRT fuses them instead.
"""

from __future__ import annotations

import contextlib
import fnmatch
import inspect
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.registry import QDQRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process

from engines.atomic import staged
from engines.spec import ModelSpec, ModelSpecError, sidecar_path

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
PROFILES = ("tensorrt", "ort-cpu")
# Ops whose quantization is worth a sensitivity measurement: they carry weights or change
# values. Data-movement ops (Reshape, Transpose, ...) inherit their input's scale.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Concat", "Resize",
               "AveragePool", "GlobalAveragePool", "Softmax")
# Activations that follow a compute op and are fused into it by ORT and TensorRT: they are
# kept in float together with that op, never alone.
ACTIVATION_OPS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish")


class QuantizeError(ValueError):
    """The model cannot be quantized as asked; the message names the input and the fix."""


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize.

    Attributes:
        method: activation range calibration, one of :data:`METHODS`.
        per_channel: one weight scale per output channel (axis 0 of Conv weights).
        percentile: kept fraction of |activation| mass for ``method="percentile"``, in %.
        profile: ``"tensorrt"`` (symmetric int8 everywhere, zero point 0: explicit
            quantization for TensorRT, also runs in ONNX Runtime) or ``"ort-cpu"`` (uint8
            asymmetric activations for ONNX Runtime's CPU kernels; not for TensorRT).
        weight_qdq_pair: store float weights with a Q/DQ pair instead of int8 weights.
        nodes_to_exclude: node names kept in float (``--keep-float`` and the sensitivity
            fallback).
    """

    method: str = "minmax"
    per_channel: bool = True
    percentile: float = 99.999
    profile: str = "tensorrt"
    weight_qdq_pair: bool = False
    nodes_to_exclude: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QuantizeError(f"--method {self.method!r} unknown; use one of {list(METHODS)}")
        if self.profile not in PROFILES:
            raise QuantizeError(f"--profile {self.profile!r} unknown; use one of {PROFILES}")
        if not 50.0 < self.percentile <= 100.0:
            raise QuantizeError(f"--percentile must be in (50, 100], got {self.percentile}")

    def with_excluded(self, nodes: Sequence[str]) -> QuantConfig:
        """This config with ``nodes`` kept in float as well as those it already keeps."""
        return replace(self, nodes_to_exclude=tuple(dict.fromkeys((*self.nodes_to_exclude,
                                                                   *nodes))))

    @property
    def symmetric(self) -> bool:
        return self.profile == "tensorrt"

    @property
    def activation_type(self) -> QuantType:
        return QuantType.QInt8 if self.symmetric else QuantType.QUInt8

    def extra_options(self) -> dict[str, object]:
        """ONNX Runtime ``quantize_static`` ``extra_options`` for this config."""
        opts: dict[str, object] = {
            "ActivationSymmetric": self.symmetric,  # int8 activations, zero point 0
            "WeightSymmetric": True,
            # Float bias: TensorRT rejects int32 DequantizeLinear; ORT quantizes it itself.
            "QuantizeBias": not self.symmetric,
            "DedicatedQDQPair": self.symmetric,
            "AddQDQPairToWeight": self.weight_qdq_pair,
        }
        if self.method == "percentile":
            opts["CalibPercentile"] = self.percentile
        if self.symmetric and self.method in ("percentile", "entropy"):
            # Histograms of |x| so the chosen range is symmetric, matching ActivationSymmetric.
            opts["CalibTensorRangeSymmetric"] = True
        return opts


@dataclass(frozen=True)
class FloatModel:
    """A checked FP32 ONNX model: its path, sidecar, graph input name and the node list."""

    path: Path
    spec: ModelSpec
    input_name: str


def load_float_model(path: str | Path) -> FloatModel:
    """Open and check an FP32 ONNX model and its sidecar before any work is done.

    Raises:
        QuantizeError: missing file, not ONNX, already quantized, no sidecar, or an input
            whose shape disagrees with the sidecar's ``input_size``.
    """
    path = Path(path)
    if not path.is_file():
        raise QuantizeError(f"model {path} not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError / various on garbage bytes
        raise QuantizeError(f"{path} is not an ONNX model ({type(e).__name__}: {e}); pass the "
                            "FP32 .onnx exported by `segstream train` / `segstream export`") from e
    if not model.graph.node:
        raise QuantizeError(f"{path} is not an ONNX model (no graph nodes)")
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv")
           for n in model.graph.node):
        raise QuantizeError(f"{path} is already quantized; calibrate the FP32 model instead")
    try:
        spec = ModelSpec.load(sidecar_path(path))
    except ModelSpecError as e:
        raise QuantizeError(str(e)) from e
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise QuantizeError(f"{path}: expected one image input, found {[i.name for i in inputs]}")
    inp = inputs[0]
    if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise QuantizeError(f"{path}: input {inp.name!r} must be float32 for INT8 calibration")
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4 or (None not in dims[2:] and tuple(dims[2:]) != tuple(spec.input_size)):
        raise QuantizeError(
            f"{path}: input {inp.name!r} has shape {dims} but the sidecar "
            f"{sidecar_path(path)} says input_size {list(spec.input_size)}; fix the sidecar"
        )
    return FloatModel(path, spec, inp.name)


def preprocess_graph(src: Path, dst: Path) -> Path:
    """Shape inference + graph cleanup that ORT's quantizer expects (``quant_pre_process``),
    and a unique name for every node (``nodes_to_exclude`` works by name; exporters may
    leave names empty). Writes ``dst``; ``src`` is not modified."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    except Exception as e:  # shape inference failures surface as many exception types
        logging.getLogger(__name__).warning(
            "symbolic shape inference failed on %s (%s); retrying with ONNX shape inference",
            src, e)
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    model = onnx.load(str(dst))
    names = {n.name for n in model.graph.node if n.name}
    if len(names) < len(model.graph.node):
        seen: set[str] = set()
        for i, n in enumerate(model.graph.node):
            if not n.name or n.name in seen:
                n.name = f"{n.op_type}_{i}"
                while n.name in names or n.name in seen:
                    n.name += "_"
            seen.add(n.name)
        onnx.save(model, str(dst))
    return dst


# ``quantize_static(calibration_cache_path=...)`` is new in ONNX Runtime 1.24; the newest
# release for Python 3.10 (JetPack 6) is 1.23.2, which cannot store calibration ranges.
CAN_CACHE_RANGES = "calibration_cache_path" in inspect.signature(quantize_static).parameters
# Without it, the reader of the first call per cache path is kept and rewound for the later
# calls: the same frames and method give the same ranges, only the time is spent again.
_READERS: dict[Path, CalibrationDataReader] = {}


def quantize_to(prepped: Path, out: Path, config: QuantConfig, *,
                reader: CalibrationDataReader | None, cache: Path) -> Path:
    """Quantize the pre-processed FP32 graph ``prepped`` to a Q/DQ INT8 model at ``out``.

    Calibration ranges are stored in ``cache``; a later call with the same cache and method
    reuses them (the sensitivity search re-quantizes many times without re-calibrating).
    On ONNX Runtime < 1.24 (:data:`CAN_CACHE_RANGES` False) a later call calibrates again
    on the first call's frames instead, with the same result.
    The file is written atomically: ``out`` is either complete or untouched.
    """
    cache_args: dict[str, object] = {}
    if CAN_CACHE_RANGES:
        cache_args["calibration_cache_path"] = str(cache)
    elif reader is not None:
        for old in [p for p in _READERS if not p.parent.is_dir()]:  # finished jobs' temp dirs
            del _READERS[old]
        _READERS[Path(cache)] = reader
    else:
        reader = _READERS.get(Path(cache))
        if reader is None:
            raise QuantizeError(f"no calibration ranges for {cache}: this ONNX Runtime cannot "
                                "cache them, so the first quantize_to() per cache needs a reader")
        reader.rewind()
    with staged(out, mkdir=True) as (tmp,):
        extra = config.extra_options()
        chunk = getattr(reader, "chunk", None)
        if chunk:  # feed calibration in chunks; see FrameReader.chunk
            extra["CalibStridedMinMax"] = chunk
        with _quiet_ort_logging():
            quantize_static(
                str(prepped), str(tmp), calibration_data_reader=reader,
                quant_format=QuantFormat.QDQ,
                activation_type=config.activation_type, weight_type=QuantType.QInt8,
                per_channel=config.per_channel, reduce_range=False,
                calibrate_method=METHODS[config.method],
                nodes_to_exclude=list(config.nodes_to_exclude) or None,
                extra_options=extra,
                **cache_args,  # type: ignore[arg-type]
            )
    return out


@contextlib.contextmanager
def _quiet_ort_logging() -> Iterator[None]:
    """ORT's quantizer logs a warning per run and prints histogram progress to stdout; keep
    the command's stdout for the report."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


@dataclass(frozen=True)
class Layer:
    """A candidate for float fallback: a compute node plus the activation fused after it.

    Attributes:
        name: the compute node's name; op_type: its op.
        nodes: node names kept in float together (compute node first).
        inputs: activation inputs of the compute node; output: the last node's output.
    """

    name: str
    op_type: str
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]
    output: str


def candidate_layers(prepped: Path) -> list[Layer]:
    """Layers of the pre-processed graph that ORT's Q/DQ quantizer quantizes and that compute
    values, each with the activation that follows it when that is its only consumer."""
    model = onnx.load(str(prepped))
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    inits = {i.name for i in model.graph.initializer}
    layers = []
    for n in model.graph.node:
        if n.op_type not in COMPUTE_OPS or n.op_type not in QDQRegistry:
            continue
        nodes, out = [n.name], n.output[0]
        after = consumers.get(out, [])
        if len(after) == 1 and after[0].op_type in ACTIVATION_OPS:
            nodes.append(after[0].name)
            out = after[0].output[0]
        layers.append(Layer(n.name, n.op_type, tuple(nodes),
                            tuple(t for t in n.input if t and t not in inits), out))
    return layers


def resolve_keep_float(prepped: Path, patterns: Sequence[str]) -> tuple[str, ...]:
    """Node names of the pre-processed graph that ``--keep-float`` patterns name.

    Each pattern is a node name or an ``fnmatch`` glob (``'/model/encoder/stem/*'``; ``*``
    also matches ``/``) and must match at least one node; a matched compute node or fused
    activation brings the rest of its layer (a convolution and its activation stay in float
    together, as the sensitivity fallback keeps them, see :func:`candidate_layers`).
    Returns the names in graph order. Raises QuantizeError naming the pattern and listing
    the first compute nodes of the graph when a pattern matches nothing.
    """
    if not patterns:
        return ()
    model = onnx.load(str(prepped))
    names = [n.name for n in model.graph.node]
    fused = {node: layer.nodes for layer in candidate_layers(prepped) for node in layer.nodes}
    wanted: set[str] = set()
    for pattern in patterns:  # an exact name first: names may hold glob characters ([0])
        hits = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            first = [f"{n.name} ({n.op_type})" for n in model.graph.node
                     if n.op_type in COMPUTE_OPS][:6]
            raise QuantizeError(
                f"--keep-float {pattern!r} matches no node of {prepped.name}; give a node name "
                "(as the report's 'Nodes kept in float' lists them) or a glob such as "
                f"'/model/encoder/stem/*'; the first compute nodes: {', '.join(first)}")
        for n in hits:
            wanted.update(fused.get(n, (n,)))
    return tuple(n for n in names if n in wanted)


@dataclass(frozen=True)
class QdqSummary:
    """What a Q/DQ model contains (checked by tests, printed in the report)."""

    quantize_nodes: int
    dequantize_nodes: int
    int8_tensors: int  # int8 zero points
    nonzero_zero_points: int
    per_channel_weights: int  # DequantizeLinear on a weight with a scale vector
    per_tensor_weights: int
    float_compute_nodes: tuple[str, ...]  # Conv/Gemm/MatMul with a float input or weight

    def to_json(self) -> dict[str, object]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def summarize_qdq(model_path: str | Path) -> QdqSummary:
    """Count Q/DQ nodes, zero-point types/values and weight scale granularity."""
    model = onnx.load(str(model_path))
    inits = {i.name: i for i in model.graph.initializer}
    q_src = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    produced_by_dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    nq = nd = n_int8 = nonzero = per_ch = per_t = 0
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        nq += n.op_type == "QuantizeLinear"
        nd += n.op_type == "DequantizeLinear"
        if len(n.input) > 2 and n.input[2] in inits:
            zp = numpy_helper.to_array(inits[n.input[2]])
            n_int8 += zp.dtype == np.int8
            nonzero += bool(np.any(zp != 0))
        if n.op_type == "DequantizeLinear":
            # A weight: an int8 initializer, or a float initializer through QuantizeLinear.
            src = inits.get(n.input[0]) or inits.get(q_src.get(n.input[0], ""))
            if src is not None and len(src.dims) >= 2:
                if numpy_helper.to_array(inits[n.input[1]]).size > 1:
                    per_ch += 1
                else:
                    per_t += 1
    float_nodes = tuple(
        n.name for n in model.graph.node
        if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
        and not {n.input[0], n.input[1]} <= produced_by_dq
    )
    return QdqSummary(nq, nd, n_int8, nonzero, per_ch, per_t, float_nodes)
