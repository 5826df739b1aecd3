"""Which layers lose the most accuracy in INT8, and keeping the worst of them in float.

Three steps, cheapest first:

1. **Rank** every quantizable compute node by the quantization noise it adds: run the FP32
   and the Q/DQ model side by side on a few frames and measure, for every tensor, the
   relative noise power ``r = |int8 - fp32|^2 / |fp32|^2`` of every tensor (both centred over
   channels, see :func:`_centre`). A node's cost is the relative noise it adds,
   ``r(output) - max r(inputs)``, reported in dB (``10 log10``; -20 dB = 1 % noise power):
   the rounding of its own quantized inputs, weights and output.
2. **Measure** the top ``budget`` candidates exactly: re-quantize with only that node kept
   in float (calibration ranges are cached, so no re-calibration) and score the model on a
   small subset; ``recovered`` = score with the node in float - score of the full INT8 model.
3. **Fall back** greedily: keep nodes in float in order of measured recovery, re-scoring on
   the full evaluation set after each, until the drop is within the allowed maximum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from calibrate.data import NamedFrame
from calibrate.quantize import Layer
from engines.preprocess import Preprocessor
from engines.spec import ModelSpec

# quantize(nodes_to_keep_float) -> path of a Q/DQ model; score(model, subset) -> score.
NOISE_FLOOR = 1e-12  # relative noise power reported for noise-free tensors (-120 dB)
QuantizeFn = Callable[[Sequence[str]], Path]
ScoreFn = Callable[[Path, bool], float]


@dataclass(frozen=True)
class Objective:
    """The figure the fallback protects.

    ``name`` is ``"miou"`` (mIoU % on labelled frames) or ``"agreement"`` (% of pixels
    where INT8 and FP32 labels agree). ``drop(score) = reference - score`` in points.
    """

    name: str
    reference: float  # FP32 mIoU, or 100 for agreement
    max_drop: float

    def drop(self, score: float) -> float:
        return self.reference - score

    def met(self, score: float) -> bool:
        return self.drop(score) <= self.max_drop


@dataclass(frozen=True)
class NodeCost:
    """One candidate layer: the quantization noise it adds and, when measured, the score it
    recovers when kept in float."""

    name: str  # the compute node
    op_type: str
    noise_db: float  # relative noise power this layer adds, dB (higher = worse)
    score_in_float: float | None = None  # objective score with only this layer in float
    recovered: float | None = None  # score_in_float - full INT8 score, in points
    nodes: tuple[str, ...] = ()  # node names kept in float together (default: name)

    @property
    def members(self) -> tuple[str, ...]:
        return self.nodes or (self.name,)


@dataclass(frozen=True)
class FallbackResult:
    """Outcome of the search: nodes kept in float (in the order added) and the final score."""

    candidates: tuple[NodeCost, ...]
    kept_float: tuple[str, ...]  # node names passed to nodes_to_exclude
    score: float
    met: bool
    steps: tuple[tuple[str, float, bool], ...]  # (node tried, full-set score, kept?)


def rank_by_sqnr(fp32_model: Path, int8_model: Path, layers: Sequence[Layer],
                 frames: Sequence[NamedFrame], spec: ModelSpec,
                 input_name: str, *, progress: bool = True) -> list[NodeCost]:
    """Relative quantization noise each layer (of the FP32 graph) adds, worst first.

    Both graphs run unoptimised (ORT_DISABLE_ALL) so that the Q/DQ model computes exactly
    the simulated quantization its Q/DQ nodes describe.
    """
    fp32 = onnx.load(str(fp32_model))
    float_tensors = [o for n in fp32.graph.node for o in n.output if o]
    int8 = onnx.load(str(int8_model))
    int8_names = {o for n in int8.graph.node for o in n.output}
    wanted = [t for t in float_tensors if t in int8_names]
    sess_a = _session_with_outputs(fp32, wanted)
    sess_b = _session_with_outputs(int8, wanted)
    pre = Preprocessor(spec)
    signal = dict.fromkeys(wanted, 0.0)
    noise = dict.fromkeys(wanted, 0.0)
    for f in tqdm(frames, desc="rank layers (SQNR)", unit="frame", leave=False,
                  disable=not progress):
        x = {input_name: pre(f.image)}  # (1, 3, H, W) float32
        for name, a, b in zip(wanted, sess_a.run(wanted, x), sess_b.run(wanted, x), strict=True):
            if a.dtype.kind != "f" or a.shape != b.shape:
                continue
            sig, err = _centre(a.astype(np.float64)), _centre(a.astype(np.float64) - b)
            signal[name] += float(np.sum(sig * sig))
            noise[name] += float(np.sum(err * err))

    def rel_noise(t: str) -> float:
        """Relative noise power of tensor ``t``; 0 for the graph input and constants."""
        if t not in signal or signal[t] <= 0.0:
            return 0.0
        return noise[t] / signal[t]

    costs = []
    for layer in layers:
        added = rel_noise(layer.output) - max([rel_noise(t) for t in layer.inputs] or [0.0])
        costs.append(NodeCost(layer.name, layer.op_type,
                              round(10.0 * math.log10(max(added, NOISE_FLOOR)), 3),
                              nodes=layer.nodes))
    return sorted(costs, key=lambda c: -c.noise_db)


def _centre(x: np.ndarray) -> np.ndarray:
    """Remove the per-position mean over channels (axis 1) of an (N, C, ...) tensor.

    An offset shared by all channels carries nothing an argmax (or a following
    normalisation) sees, yet dominates a plain SQNR: a logits tensor with a large common
    offset would look noise-free while int8 rounding has flattened its class differences.
    """
    if x.ndim >= 2 and x.shape[1] > 1:
        return x - x.mean(axis=1, keepdims=True)
    return x


def _session_with_outputs(model: onnx.ModelProto, tensors: Sequence[str]) -> ort.InferenceSession:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    for t in tensors:
        if t not in present:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def measure_candidates(candidates: Sequence[NodeCost], full_int8_score: float,
                       quantize: QuantizeFn, score_fn: ScoreFn, *,
                       progress: bool = True) -> list[NodeCost]:
    """Score the subset with each candidate alone kept in float; best recovery first."""
    measured = []
    for c in tqdm(candidates, desc="measure layers", unit="layer", leave=False,
                  disable=not progress):
        s = score_fn(quantize(c.members), True)
        measured.append(replace(c, score_in_float=round(s, 3),
                                recovered=round(s - full_int8_score, 3)))
    return sorted(measured, key=lambda c: -(c.recovered or 0.0))


def greedy_fallback(measured: Sequence[NodeCost], objective: Objective, int8_score: float,
                    quantize: QuantizeFn, score_fn: ScoreFn,
                    min_recovery: float = 0.0, progress: bool = True) -> FallbackResult:
    """Keep nodes in float, best measured recovery first, until ``objective`` is met.

    Nodes whose measured recovery is <= ``min_recovery`` points are not tried.
    A node whose addition does not raise the full-set score (its subset gain did not
    carry over, or it interacts with nodes already in float) is put back to INT8.
    """
    kept: list[str] = []
    steps: list[tuple[str, float, bool]] = []
    score = int8_score
    useful = [c for c in measured if (c.recovered or 0.0) > min_recovery]
    bar = tqdm(useful, desc="fallback to float", unit="layer", leave=False,
               disable=not progress)
    for c in bar:
        if objective.met(score):
            break
        trial = score_fn(quantize([*kept, *c.members]), False)
        accepted = trial > score
        steps.append((c.name, round(trial, 3), accepted))
        if accepted:
            kept.extend(c.members)
            score = trial
        bar.set_postfix(drop=f"{objective.drop(score):.2f}")
    bar.close()
    return FallbackResult(tuple(measured), tuple(kept), round(score, 3), objective.met(score),
                          tuple(steps))
