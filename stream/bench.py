"""``segstream bench``: bare-engine and end-to-end FPS with per-stage latency, repeated.

For each configuration (model x backend x camera resolution x the pipeline's settings:
overlap, engine policy, batch and batch wait, number of cameras, test-time augmentation;
:class:`BenchCase`)
every figure is measured ``repeat`` times (default 3) and reported as the median and the
range (min-max):

1. calibration (only when no ``--source-fps`` is given): a few short bare-engine runs
   per model and backend; the live test camera's rate is 1.5x the *fastest* of them
   (30..240 fps), so that the engine, not the camera, limits the pipeline. Load on a
   shared machine only ever slows a run down, so the fastest of several runs is the
   best estimate of what the engine does once the load lifts (their median follows a
   busy minute down, and the camera then limits the pipeline). A pipeline run within
   10 % of the camera's rate is flagged ``source_limited``.
2. rounds: round r runs, for every group of configurations that differ only in pipeline
   settings (:func:`schedule`), one engine run, one pipeline run per configuration, and
   with ``--compare`` one hand-loop run and one pipeline run per configuration on the
   same clip (:mod:`stream.bench_measure`, :mod:`stream.handloop`). The engine and the
   hand loop do not depend on the pipeline's settings, so the group's configurations
   share them (and their ratios use the same denominator). Even rounds run in that
   order, odd rounds in reverse, so slow drift (thermal, a neighbour's load) hits every
   kind and configuration alike instead of all runs of one kind.

With N cameras (:func:`camera_rate`) the calibrated rate is shared by the cameras, so
one and N cameras are offered the same frames per second; ``--source-fps`` is per camera.

Ratios (pipeline / engine, pipeline / hand loop) are taken within a round, then their
median and range across rounds. The report keeps every run's raw figures
(:func:`run_bench`); :mod:`stream.bench_report` derives the summaries from them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.segmenter import check_tta
from engines.spec import ModelSpec, sidecar_path
from stream.bench_measure import (
    MachineLoad,
    PipelineSettings,
    bench_clip_pipeline,
    bench_engine,
    bench_engine_in_flight,
    bench_pipeline,
    ipc_endpoint,
    make_video,
)
from stream.bench_report import BENCH_FORMAT, summarize_result

SOURCE_FPS_FACTOR = 1.5
SOURCE_FPS_RANGE = (30, 240)


@dataclass(frozen=True)
class BenchOptions:
    """How long, how often and how hard to measure."""

    warmup_s: float = 2.0  # per engine and live-pipeline run
    duration_s: float = 5.0  # measured per live-pipeline run (engine: up to half of it)
    engine_iters: int = 200
    repeat: int = 3
    source_fps: int = 0  # 0: 1.5x the fastest calibration run (30..240)
    encoding: str = "zstd"
    threads: int | None = None
    compare_frames: int = 600
    calibration_s: float = 1.0  # timed per calibration run, after half that of warm-up


@dataclass(frozen=True)
class BenchCase:
    """One configuration: model file, backend, camera resolution (H, W) and the
    pipeline's settings (overlap, engine policy, batch, cameras, tta)."""

    model: Path
    backend: str
    resolution: tuple[int, int]
    settings: PipelineSettings = field(default_factory=PipelineSettings)

    @property
    def group(self) -> tuple[Path, str, tuple[int, int]]:
        """Cases of one group differ only in pipeline settings: they share the engine
        and hand-loop runs of a round, which do not depend on them."""
        return self.model, self.backend, self.resolution

    @property
    def label(self) -> str:
        st = self.settings
        return (f"{self.model.stem}/{self.backend}/{precision_of(self.model)}/"
                f"{self.resolution[0]}x{self.resolution[1]} overlap={st.overlap} "
                f"policy={st.engine_policy} batch={st.batch}/{st.batch_wait_ms:g}ms "
                f"cameras={st.cameras}" + (f" tta={st.tta}" if st.tta != "none" else ""))


def precision_of(model: Path) -> str:
    """fp32 / fp16 / int8 as the model file itself says (Q/DQ nodes, fp16 weights, or
    a TensorRT engine's sidecar)."""
    if model.suffix == ".onnx":
        import onnx

        m = onnx.load(str(model), load_external_data=False)
        ops = {n.op_type for n in m.graph.node}
        if "QuantizeLinear" in ops or "DequantizeLinear" in ops:
            return "int8"
        if any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer):
            return "fp16"
        return "fp32"
    side = sidecar_path(model)
    if side.is_file():
        doc = json.loads(side.read_text())
        return str(doc.get("precision") or doc.get("metrics", {}).get("precision") or "?")
    return "?"


def source_rate(engine_fps: Sequence[float]) -> int:
    """The live test camera's rate from several bare-engine fps figures: 1.5x the
    fastest, within :data:`SOURCE_FPS_RANGE` (noise only slows runs: see the module doc)."""
    lo, hi = SOURCE_FPS_RANGE
    return int(min(hi, max(lo, SOURCE_FPS_FACTOR * max(engine_fps))))


def groups_of(cases: Sequence[BenchCase]) -> list[list[int]]:
    """Indices of the cases that share a group (:attr:`BenchCase.group`), in order."""
    out: dict[tuple[Path, str, tuple[int, int]], list[int]] = {}
    for i, c in enumerate(cases):
        out.setdefault(c.group, []).append(i)
    return list(out.values())


def schedule(groups: Sequence[Sequence[int]], repeat: int,
             compare: Sequence[bool]) -> list[tuple[int, int, str]]:
    """Execution order: (round, case index, kind), rounds outermost. Per group in a round:
    one engine run, each case's pipeline run, one hand-loop run (when a case of the
    group compares) and each comparing case's clip run, forwards in even rounds and
    backwards in odd ones. The shared runs carry the group's first (comparing) case."""
    out = []
    for r in range(repeat):
        for group in groups:
            cmp = [i for i in group if compare[i]]
            runs = ([(group[0], "engine")] + [(i, "pipeline") for i in group]
                    + ([(cmp[0], "hand_loop")] if cmp else [])
                    + [(i, "clip_pipeline") for i in cmp])
            out += [(r, i, k) for i, k in (runs if r % 2 == 0 else runs[::-1])]
    return out


def expand(models: Sequence[Path], backends: Sequence[str], resolutions: Sequence[tuple[int, int]],
           *, overlaps: Sequence[str] = ("auto",), policies: Sequence[str] = ("auto",),
           batches: Sequence[int] = (1,), waits: Sequence[float] = (0.0,),
           cameras: Sequence[int] = (1,), ttas: Sequence[str] = ("none",)) -> list[BenchCase]:
    """Every combination (model x resolution x backend x settings), in that order, without
    duplicates; a batch of 1 never waits (``batch_wait_ms`` only applies to batches)."""
    out: dict[BenchCase, None] = {}
    for model, res, backend in itertools.product(models, resolutions, backends):
        for ov, pol, b, w, n, t in itertools.product(overlaps, policies, batches, waits,
                                                     cameras, ttas):
            st = PipelineSettings(ov, pol, b, w if b > 1 else 0.0, n, t)
            out[BenchCase(model, backend, res, st)] = None
    return list(out)


def compare_skip_reason(case: BenchCase) -> str:
    """Why ``--compare`` cannot run for ``case`` ("" when it can)."""
    if case.backend != "onnxruntime" or case.model.suffix != ".onnx":
        return "the hand-written loop runs ONNX Runtime on .onnx models only"
    if case.settings.cameras > 1:
        return "the hand-written loop and the clip serve one camera"
    if case.settings.tta != "none":
        return "the hand-written loop runs the network once a frame (no --tta)"
    return ""


def camera_rate(calibrated: int, given: int, cameras: int) -> int:
    """Each test camera's rate: ``given`` (``--source-fps``, per camera), else the
    calibrated rate shared by the cameras (the same frames per second offered in all)."""
    return given or max(1, calibrated // cameras)


def calibrate(cases: Sequence[BenchCase], opts: BenchOptions) -> list[dict[str, Any]]:
    """Per model and backend: ``max(3, repeat)`` short engine runs and the source rate."""
    out = []
    for model, backend in dict.fromkeys((c.model, c.backend) for c in cases):
        runs = [bench_engine(model, backend, threads=opts.threads,
                             warmup_s=opts.calibration_s / 2, max_s=opts.calibration_s,
                             iters=opts.engine_iters)["fps"]
                for _ in range(max(3, opts.repeat))]
        out.append({"model": str(model), "backend": backend, "engine_fps": runs,
                    "source_fps": source_rate(runs)})
    return out


def _run_one(kind: str, case: BenchCase, opts: BenchOptions, source_fps: int,
             video: Path | None) -> dict[str, Any]:
    t0, load = time.time(), MachineLoad()
    load.start()
    if kind == "engine":
        kw = {"threads": opts.threads, "warmup_s": opts.warmup_s,
              "max_s": max(opts.duration_s / 2, 1.0), "iters": opts.engine_iters}
        out = bench_engine(case.model, case.backend, **kw)
        # what the pipeline's throughput mode runs: the pipeline/engine ratio's other base
        out["in_flight"] = bench_engine_in_flight(case.model, case.backend, **kw)
    elif kind == "pipeline":
        out = bench_pipeline(case.model, case.backend, case.resolution, source_fps=source_fps,
                             threads=opts.threads, encoding=opts.encoding,
                             warmup_s=opts.warmup_s, duration_s=opts.duration_s,
                             settings=case.settings)
    elif video is None:
        raise ValueError(f"{kind} runs need the --compare clip")
    elif kind == "hand_loop":
        from stream.handloop import run_hand_loop

        out = run_hand_loop(case.model, video, opts.compare_frames, ipc_endpoint(),
                            threads=opts.threads)
    else:
        out = bench_clip_pipeline(case.model, case.backend, video, opts.compare_frames,
                                  threads=opts.threads, encoding=opts.encoding,
                                  settings=case.settings)
    return {"started": round(t0, 3), **out, **load.stop()}


def run_bench(cases: list[BenchCase], opts: BenchOptions, *, compare: bool = False,
              workdir: Path | None = None,
              progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Measure every case ``opts.repeat`` times, interleaved; returns the JSON-able report:
    machine, options, calibration, the run order, and per case its settings, its raw
    ``runs`` (one dict per round, one entry per kind; the engine and hand-loop runs a
    group shares appear in each of its cases) and their ``summary``
    (:func:`summarize_result`).

    ``progress(done, total, text)`` is called before each run and at the end.
    """
    from stream.machine import machine_info

    workdir = workdir or Path("/tmp")
    for case in cases:  # before anything runs: a setting the model cannot take
        check_tta(case.settings.tta, ModelSpec.load(sidecar_path(case.model)))
    calibration = [] if opts.source_fps else calibrate(cases, opts)
    rate = {(c["model"], c["backend"]): c["source_fps"] for c in calibration}
    skip = [compare_skip_reason(c) if compare else "" for c in cases]
    results, videos = [], {}
    for case, why in zip(cases, skip, strict=True):
        spec = ModelSpec.load(sidecar_path(case.model))
        st = case.settings
        results.append({
            "label": case.label, "model": str(case.model), "backend": case.backend,
            "precision": precision_of(case.model), "resolution": list(case.resolution),
            **dataclasses.asdict(st),
            "model_input": list(spec.input_size), "model_output": spec.output,
            "source_fps": camera_rate(rate.get((str(case.model), case.backend), 0),
                                      opts.source_fps, st.cameras),
            "compare": compare and not why, "compare_skipped": why,
            "runs": [{"round": r} for r in range(opts.repeat)]})
        if compare and not why and case.resolution not in videos:
            h, w = case.resolution
            videos[case.resolution] = make_video(workdir / f"compare_{h}x{w}.avi",
                                                 opts.compare_frames, case.resolution)
    groups = groups_of(cases)
    group_of = {i: g for g in groups for i in g}
    order = schedule(groups, opts.repeat, [r["compare"] for r in results])
    for done, (r, i, kind) in enumerate(order):
        case, entry = cases[i], results[i]
        if progress is not None:
            progress(done, len(order), f"round {r + 1}/{opts.repeat} {case.label}: {kind}")
        out = _run_one(kind, case, opts, entry["source_fps"], videos.get(case.resolution))
        shared = {"engine": group_of[i],
                  "hand_loop": [j for j in group_of[i] if results[j]["compare"]]}
        for j in shared.get(kind, [i]):  # the group's shared runs go to each of its cases
            results[j]["runs"][r][kind] = out
    if progress is not None:
        progress(len(order), len(order), "done")
    for entry in results:
        entry["summary"] = summarize_result(entry)
    return {"segstream_bench": BENCH_FORMAT,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_info(), "options": dataclasses.asdict(opts),
            "calibration": calibration, "order": [list(o) for o in order],
            "results": results}
