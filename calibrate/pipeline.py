"""One calibration run: check inputs, calibrate, quantize, evaluate, fall back, write.

Outputs (written only once everything succeeded; nothing partial is left on failure):
    ``out``            the Q/DQ INT8 ONNX model
    ``out`` .json      its sidecar (the FP32 spec, metrics replaced by the INT8 figures)
    ``report`` .json   the :class:`~calibrate.report.CalibrationReport`
    ``report`` .md     the same as a readable table
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx
import onnxruntime as ort
from tqdm import tqdm

from calibrate.checks import tensorrt_issues
from calibrate.data import (
    CalibrationDataError,
    FrameReader,
    LabelledFrame,
    NamedFrame,
    camvid_split,
    check_label_ids,
    evenly_spaced,
    read_frames,
    read_labelled,
)
from calibrate.evaluate import (
    SegScores,
    agreement,
    compare_speed,
    has_labels,
    predict,
    score,
)
from calibrate.quantize import (
    FloatModel,
    QuantConfig,
    candidate_layers,
    load_float_model,
    preprocess_graph,
    quantize_to,
    resolve_keep_float,
    summarize_qdq,
)
from calibrate.report import CalibrationReport
from calibrate.sensitivity import (
    FallbackResult,
    Objective,
    greedy_fallback,
    measure_candidates,
    rank_by_sqnr,
)
from engines.atomic import staged
from engines.spec import sidecar_path


@dataclass(frozen=True)
class CalibrateJob:
    """All inputs of ``segstream calibrate`` (see ``stream/commands/calibrate.py``).

    Attributes:
        model: FP32 ONNX model with its sidecar.
        data: calibration frames: image folder or video file.
        samples: calibration frames used (evenly spaced over ``data``).
        quant: method, weight granularity, layout.
        methods: calibration methods to try (each calibrated and scored in full; the best
            is kept); empty: just ``quant.method``.
        eval_images, eval_labels: a labelled split (CamVid ``val`` + ``valannot``), or the
            ``data`` folder and its label maps (see :func:`resolve_eval`).
        eval_samples: labelled frames used (None: all).
        agreement_data: unlabelled frames (folder or video) for FP32/INT8 label agreement;
            None: the calibration frames. agreement_samples: how many, evenly spaced.
        max_drop: allowed mIoU drop in points; larger drops trigger the float fallback.
        min_agreement: without labels, the fallback keeps INT8/FP32 agreement above this %.
        keep_float: node names or globs kept in float from the start (``--keep-float``; see
            :func:`calibrate.quantize.resolve_keep_float`); the fallback may add more.
        sensitivity_budget: candidates measured exactly in the sensitivity search.
        sensitivity_samples: frames each candidate is scored on.
        out: INT8 model path; report: report path stem (``.json`` and ``.md`` are added).
        threads: ONNX Runtime threads for evaluation and timing.
        speed_runs: timed runs per model.
        reference: the FP32 model the INT8 one is scored against (mIoU drop, agreement,
            speed); None: ``model`` itself. Give the original model when ``model`` is a
            quantization-aware fine-tune of it, so the drop is the deployed one.
    """

    model: Path
    data: Path
    samples: int = 100
    quant: QuantConfig = field(default_factory=QuantConfig)
    methods: tuple[str, ...] = ()
    agreement_data: Path | None = None
    agreement_samples: int = 50
    eval_images: Path | None = None
    eval_labels: Path | None = None
    eval_samples: int | None = None
    max_drop: float | None = 0.5
    min_agreement: float | None = None
    keep_float: tuple[str, ...] = ()
    sensitivity_budget: int = 12
    sensitivity_samples: int = 24
    out: Path | None = None
    report: Path | None = None
    threads: int | None = None
    speed_runs: int = 30
    progress: bool = True
    reference: Path | None = None

    @property
    def out_path(self) -> Path:
        return self.out or self.model.with_name(f"{self.model.stem}.int8.onnx")

    @property
    def report_stem(self) -> Path:
        return self.report or self.out_path.with_name(f"{self.out_path.stem}.report")


def resolve_eval(labels: Path | None, eval_data: Path | None, split: str,
                 data: Path) -> tuple[Path | None, Path | None]:
    """(frames folder, labels folder) from ``--labels`` or ``--eval-data``/``--split``."""
    if labels is not None and eval_data is not None:
        raise CalibrationDataError("give either --labels (for the --data frames) or "
                                   "--eval-data CAMVID_DIR, not both")
    if labels is not None:
        if not data.is_dir():
            raise CalibrationDataError(f"--labels needs --data to be a folder of frames, "
                                       f"got {data}; use --eval-data for a separate split")
        return data, labels
    if eval_data is not None:
        return camvid_split(eval_data, split)
    return None, None


def run_calibration(job: CalibrateJob) -> CalibrationReport:
    """Do the whole run; see the module docstring for what is written."""
    fm = load_float_model(job.model)
    ref = _reference_model(fm, job.reference)
    out = job.out_path
    if out.resolve() in (fm.path.resolve(), ref.path.resolve()):
        raise CalibrationDataError(f"--out {out} would overwrite an FP32 model")
    fp32_files = {p.resolve() for m in (fm, ref) for p in (m.path, sidecar_path(m.path))}
    for written in (sidecar_path(out), report_json_path(job.report_stem),
                    report_md_path(job.report_stem)):
        if written.resolve() in fp32_files:
            raise CalibrationDataError(
                f"--out {out} / --report {job.report_stem} would write {written}, a file of "
                "the FP32 model; give an --out ending in .int8.onnx or another --report")
    # Read every input before the slow work so that bad data fails in seconds.
    calib = read_frames(job.data, job.samples)
    labelled: list[LabelledFrame] = []
    if job.eval_images is not None and job.eval_labels is not None:
        labelled = read_labelled(job.eval_images, job.eval_labels, job.eval_samples)
        check_label_ids(labelled, fm.spec.num_classes, fm.spec.ignore_index)
    agree = (read_frames(job.agreement_data, job.agreement_samples) if job.agreement_data
             else [calib[i] for i in evenly_spaced(len(calib), job.agreement_samples)])
    with tempfile.TemporaryDirectory(prefix="segstream-calib-") as tmp_name:
        tmp = Path(tmp_name)
        prepped = preprocess_graph(fm.path, tmp / "prepped.onnx")
        requested = resolve_keep_float(prepped, job.keep_float)
        base = job.quant.with_excluded(requested)
        ev = _Evaluator(ref, labelled, agree, job)
        trials: dict[str, tuple[QuantConfig, Path, Path, Scores]] = {}
        for method in job.methods or (job.quant.method,):
            quant = replace(base, method=method)
            cache = tmp / f"ranges_{method}.json"
            bar = tqdm(total=len(calib), desc=f"calibrate ({method})", unit="frame",
                       disable=not job.progress)
            model = quantize_to(prepped, tmp / f"int8_{method}.onnx", quant, cache=cache,
                                reader=FrameReader(calib, fm.spec, fm.input_name, bar))
            bar.close()
            trials[method] = (quant, cache, model, ev.scores(model))
        best = max(trials, key=lambda m: ev.primary(trials[m][3]))
        quant, cache, first, int8_first = trials[best]
        fallback, final = None, first
        objective = ev.objective(job)
        if objective is not None and not objective.met(ev.objective_score(first)):
            fallback = _fallback(fm, prepped, first, cache, tmp, ev, objective, job, quant)
            if fallback.kept_float:
                final = quantize_to(prepped, tmp / "int8_final.onnx",
                                    quant.with_excluded(fallback.kept_float),
                                    reader=None, cache=cache)
        elif objective is not None:
            fallback = FallbackResult((), (), round(ev.objective_score(first), 3), True, ())
        int8_final = int8_first if final is first else ev.scores(final)
        speed_fp32, speed_int8 = compare_speed([ref.path, final], fm.spec, calib[0].image,
                                               threads=job.threads, runs=job.speed_runs,
                                               progress=job.progress)
        report = CalibrationReport(
            model=str(fm.path), int8_model=str(out), method=best,
            reference_model=str(ref.path) if ref is not fm else None,
            method_trials={m: _trial_json(t[3]) for m, t in trials.items()},
            per_channel=job.quant.per_channel, profile=job.quant.profile,
            calibration_source=str(job.data),
            calibration_frames=len(calib),
            eval_source=str(job.eval_images) if labelled else None, eval_frames=len(labelled),
            eval_split=describe_eval(job.eval_images, job.eval_labels, len(labelled))
            if labelled else None,
            fp32=ev.fp32_scores, int8_first=int8_first[0], int8=int8_final[0],
            agreement_eval=int8_final[1], agreement_data=int8_final[2],
            agreement_frames=len(ev.agree_frames),
            agreement_source=str(job.agreement_data or job.data),
            speed_fp32=speed_fp32, speed_int8=speed_int8, fallback=fallback,
            kept_float_requested=requested,
            max_drop=objective.max_drop if objective else None, qdq=summarize_qdq(final),
            tensorrt_issues=tuple(tensorrt_issues(final)),
            versions={"onnxruntime": ort.__version__, "onnx": onnx.__version__},
        )
        _write_outputs(fm, final, out, report, job.report_stem)
    return report


def describe_eval(images: Path | None, labels: Path | None, n: int) -> str | None:
    """The labelled frames as ``segstream eval`` names data: ``camvid:ROOT SPLIT (N)`` for
    a CamVid split (``ROOT/SPLIT`` with ``ROOT/SPLITannot``), else ``folder:IMAGES (N)``."""
    if images is None:
        return None
    if labels is not None and labels.parent == images.parent \
            and labels.name == f"{images.name}annot":
        return f"camvid:{images.parent} {images.name} ({n})"
    return f"folder:{images} ({n})"


def _reference_model(fm: FloatModel, reference: Path | None) -> FloatModel:
    """The FP32 baseline: ``fm`` itself, or another model with the same interface."""
    if reference is None or reference.resolve() == fm.path.resolve():
        return fm
    ref = load_float_model(reference)
    same = ("num_classes", "input_size", "mean", "std")
    diff = [k for k in same if getattr(ref.spec, k) != getattr(fm.spec, k)]
    if diff or ref.input_name != fm.input_name:
        raise CalibrationDataError(
            f"--reference {reference} does not match {fm.path} "
            f"({', '.join(diff) or 'input name'} differ); the reference must be the FP32 "
            "model this one was fine-tuned from")
    return ref


# (mIoU scores on the labelled split, agreement there %, agreement on calibration frames %)
Scores = tuple[SegScores | None, float | None, float]


class _Evaluator:
    """Caches FP32 predictions and scores INT8 candidates against them."""

    def __init__(self, fm: FloatModel, labelled: list[LabelledFrame],
                 agree_frames: list[NamedFrame], job: CalibrateJob) -> None:
        self.fm, self.labelled, self.job = fm, labelled, job
        self.agree_frames = agree_frames  # unlabelled: FP32/INT8 label agreement
        if labelled:  # the sensitivity subset: frames with labelled pixels to score
            scorable = [i for i, f in enumerate(labelled)
                        if (has_labels(f.label, fm.spec)).any()]
            self.subset = [scorable[i] for i in evenly_spaced(len(scorable),
                                                               job.sensitivity_samples)]
        else:
            self.subset = evenly_spaced(len(self.agree_frames), job.sensitivity_samples)
        self.fp32_eval = self._predict(fm.path, labelled, "FP32 eval")
        self.fp32_agree = self._predict(fm.path, self.agree_frames, "FP32 frames")
        self.fp32_scores: SegScores | None = (
            score(self.fp32_eval, labelled, fm.spec) if labelled else None)

    def _predict(self, model: Path, frames: list, desc: str) -> list:
        return predict(model, self.fm.spec, frames, threads=self.job.threads, desc=desc,
                       progress=self.job.progress) if frames else []

    def primary(self, scores: Scores) -> float:
        """The figure methods are compared by: mIoU when labelled, else agreement."""
        return scores[0].miou if scores[0] is not None else scores[2]

    def scores(self, int8: Path) -> Scores:
        """(mIoU scores on the labelled split, agreement there %, agreement on frames %)."""
        preds = self._predict(int8, self.labelled, "INT8 eval")
        agree = self._predict(int8, self.agree_frames, "INT8 frames")
        return (score(preds, self.labelled, self.fm.spec) if self.labelled else None,
                round(agreement(preds, self.fp32_eval), 3) if preds else None,
                round(agreement(agree, self.fp32_agree), 3))

    def objective(self, job: CalibrateJob) -> Objective | None:
        if self.labelled and job.max_drop is not None:
            return Objective("miou", self.fp32_scores.miou, job.max_drop)
        if job.min_agreement is not None:
            return Objective("agreement", 100.0, 100.0 - job.min_agreement)
        return None

    def objective_score(self, int8: Path, subset: bool = False) -> float:
        """mIoU % (labelled) or agreement % of ``int8``, on the subset or all frames."""
        if self.labelled:
            idx = self.subset if subset else range(len(self.labelled))
            frames = [self.labelled[i] for i in idx]
            preds = self._predict(int8, frames, "score")
            return score(preds, frames, self.fm.spec).miou
        idx = self.subset if subset else range(len(self.agree_frames))
        preds = self._predict(int8, [self.agree_frames[i] for i in idx], "score")
        return agreement(preds, [self.fp32_agree[i] for i in idx])


def _trial_json(scores: Scores) -> dict[str, float | None]:
    return {"miou": scores[0].miou if scores[0] else None, "agreement_eval": scores[1],
            "agreement_data": scores[2]}


def _fallback(fm: FloatModel, prepped: Path, first: Path, cache: Path, tmp: Path,
              ev: _Evaluator, objective: Objective, job: CalibrateJob,
              quant: QuantConfig) -> FallbackResult:
    counter = iter(range(1_000_000))

    def quantize(nodes: list[str] | tuple[str, ...]) -> Path:
        path = tmp / f"trial_{next(counter)}.onnx"
        quantize_to(prepped, path, quant.with_excluded(nodes), reader=None, cache=cache)
        return path

    def score_fn(model: Path, subset: bool) -> float:
        try:
            return ev.objective_score(model, subset)
        finally:
            model.unlink(missing_ok=True)

    rank_frames = [ev.labelled[i] for i in ev.subset[:4]] if ev.labelled else \
        ev.agree_frames[:4]
    in_float = set(quant.nodes_to_exclude)  # --keep-float: not candidates
    layers = [c for c in candidate_layers(prepped) if not in_float.intersection(c.nodes)]
    ranked = rank_by_sqnr(prepped, first, layers, rank_frames, fm.spec,
                          fm.input_name, progress=job.progress)
    base_subset = ev.objective_score(first, subset=True)
    measured = measure_candidates(ranked[:job.sensitivity_budget], base_subset, quantize,
                                  score_fn, progress=job.progress)
    result = greedy_fallback(measured, objective, ev.objective_score(first), quantize,
                             score_fn, progress=job.progress)
    unmeasured = tuple(ranked[job.sensitivity_budget:])
    return replace(result, candidates=result.candidates + unmeasured)


def _write_outputs(fm: FloatModel, int8: Path, out: Path, report: CalibrationReport,
                   report_stem: Path) -> None:
    """Stage model, sidecar and report next to their targets, then rename them into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    report_stem.parent.mkdir(parents=True, exist_ok=True)
    spec = replace(fm.spec, name=f"{fm.spec.name}-int8",
                   metrics=report.sidecar_metrics(dict(fm.spec.metrics),
                                                  fm.spec.training_data))
    targets = {
        out: lambda p: shutil.copyfile(int8, p),
        sidecar_path(out): lambda p: p.write_text(spec.to_text()),
        report_json_path(report_stem): lambda p: p.write_text(
            json.dumps(report.to_json(), indent=2) + "\n"),
        report_md_path(report_stem): lambda p: p.write_text(report.to_markdown()),
    }
    with staged(*targets) as tmps:
        for write, tmp in zip(targets.values(), tmps, strict=True):
            write(tmp)


def report_json_path(stem: Path) -> Path:
    return stem.with_name(stem.name + ".json")


def report_md_path(stem: Path) -> Path:
    return stem.with_name(stem.name + ".md")
