"""The calibration report: FP32 vs INT8 accuracy, agreement, speed, layers kept in float.

Written as JSON (for tools and the INT8 sidecar) and as a Markdown table (for people; the
same text is printed to stdout).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from calibrate.evaluate import SegScores, Speed
from calibrate.quantize import QdqSummary
from calibrate.sensitivity import FallbackResult
from engines.evaluate import VAL_FIGURE_KEYS

# What `segstream eval --record` writes into a sidecar about the weights it scored.
# (and scripts/record_protocol.py's ``seen_split_fit``, the same figures moved aside)
FP32_EVAL_KEYS = (*VAL_FIGURE_KEYS, "seen_split_fit")


@dataclass(frozen=True)
class CalibrationReport:
    """Everything measured for one calibration run.

    Scores are percentages; drops are in points (FP32 - INT8).
    """

    model: str
    int8_model: str
    method: str
    per_channel: bool
    profile: str
    calibration_source: str
    calibration_frames: int
    eval_source: str | None = None
    eval_frames: int = 0
    eval_split: str | None = None  # "camvid:ROOT SPLIT (N)", as segstream eval names data
    fp32: SegScores | None = None
    int8_first: SegScores | None = None  # before any fallback
    int8: SegScores | None = None  # the written model
    agreement_eval: float | None = None  # % pixels, on the labelled frames
    agreement_data: float | None = None  # % pixels, on unlabelled frames
    agreement_frames: int = 0
    agreement_source: str | None = None
    speed_fp32: Speed | None = None
    speed_int8: Speed | None = None
    fallback: FallbackResult | None = None
    kept_float_requested: tuple[str, ...] = ()  # --keep-float, before any fallback
    max_drop: float | None = None
    qdq: QdqSummary | None = None
    tensorrt_issues: tuple[str, ...] = ()  # static rule check, see calibrate.checks
    method_trials: dict[str, dict[str, float | None]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    reference_model: str | None = None  # FP32 baseline when not ``model`` (QAT fine-tunes)

    @property
    def miou_drop(self) -> float | None:
        if self.fp32 is None or self.int8 is None:
            return None
        return round(self.fp32.miou - self.int8.miou, 3)

    @property
    def speedup(self) -> float | None:
        if self.speed_fp32 is None or self.speed_int8 is None:
            return None
        return round(self.speed_fp32.median_ms / max(self.speed_int8.median_ms, 1e-9), 3)

    @property
    def layout(self) -> str:
        acts = ("symmetric int8 activations (zero point 0)" if self.profile == "tensorrt"
                else "asymmetric uint8 activations")
        weights = "per-channel" if self.per_channel else "per-tensor"
        return f"{acts}, symmetric int8 {weights} weights"

    @property
    def kept_float(self) -> tuple[str, ...]:
        """Every node of the written model kept in float: requested, then the fallback's."""
        return self.kept_float_requested + (self.fallback.kept_float if self.fallback else ())

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["qdq"] = self.qdq.to_json() if self.qdq else None
        d["miou_drop"] = self.miou_drop
        d["speedup"] = self.speedup
        d["kept_float"] = list(self.kept_float)
        return d

    def sidecar_metrics(self, previous: dict[str, Any],
                        training_data: str = "") -> dict[str, Any]:
        """Metrics for the INT8 sidecar: the FP32 model's, less its own evaluation figures
        (they describe the FP32 weights), with the INT8 figures measured here; under
        ``seen_split_fit`` when ``training_data`` (the FP32 sidecar's) holds the scored
        frames, as ``segstream eval --record`` files them."""
        from engines.evaluate import file_figures

        m = {k: v for k, v in previous.items() if k not in FP32_EVAL_KEYS}
        if self.int8 is not None:
            scored = {
                "val_miou": round(self.int8.miou / 100.0, 5),
                "val_pixel_acc": round(self.int8.pixel_accuracy / 100.0, 5),
                "per_class_iou": {k: (None if v is None else round(v / 100.0, 5))
                                  for k, v in self.int8.per_class.items()},
                # where these figures come from, as `segstream eval --record` says
                "eval_split": self.eval_split or self.eval_source,
                "eval_images": self.eval_frames,
                "eval_backend": "onnxruntime",
            }
            m = file_figures(m, scored, self.eval_split, training_data)
        m["quantization"] = {
            "precision": "int8",
            "profile": self.profile,
            "format": f"onnx-qdq, {self.layout}",
            "method": self.method,
            "calibration_frames": self.calibration_frames,
            "calibration_source": self.calibration_source,
            "eval_source": self.eval_source,
            "fp32_val_miou": None if self.fp32 is None else round(self.fp32.miou / 100.0, 5),
            "fp32_reference": self.reference_model,
            "miou_drop_points": self.miou_drop,
            "agreement_pct": self.agreement_eval if self.agreement_eval is not None
            else self.agreement_data,
            "cpu_ms_fp32": self.speed_fp32.median_ms if self.speed_fp32 else None,
            "cpu_ms_int8": self.speed_int8.median_ms if self.speed_int8 else None,
            "cpu_threads": self.speed_int8.threads if self.speed_int8 else None,
            "nodes_kept_float": list(self.kept_float),
            "tensorrt_rules_ok": not self.tensorrt_issues,
        }
        return m

    def to_markdown(self) -> str:
        lines = [
            f"# INT8 calibration report: {Path(self.model).name}",
            "",
            f"- INT8 model: `{self.int8_model}`",
            f"- profile: {self.profile} ({self.layout}); calibration method: {self.method}",
            f"- calibration: {self.calibration_frames} frames from `{self.calibration_source}`",
        ]
        if self.reference_model:
            lines.append(f"- FP32 column: the reference `{self.reference_model}` (the model "
                         "this one was fine-tuned from)")
        if self.kept_float_requested:
            kept = ", ".join(f"`{n}`" for n in self.kept_float_requested)
            lines.append(f"- kept in float on request (--keep-float): {kept}")
        if self.eval_source:
            lines.append(f"- evaluation: {self.eval_frames} labelled frames from "
                         f"`{self.eval_source}` (void ignored)")
        lines += ["", "| figure | FP32 | INT8 | change |", "|---|---:|---:|---:|"]
        if self.fp32 and self.int8:
            lines.append(f"| mIoU % | {self.fp32.miou:.2f} | {self.int8.miou:.2f} | "
                         f"{self.int8.miou - self.fp32.miou:+.2f} |")
            lines.append(f"| pixel accuracy % | {self.fp32.pixel_accuracy:.2f} | "
                         f"{self.int8.pixel_accuracy:.2f} | "
                         f"{self.int8.pixel_accuracy - self.fp32.pixel_accuracy:+.2f} |")
        if self.int8_first and self.int8 and self.fallback and self.fallback.kept_float:
            lines.append(f"| mIoU % before fallback | | {self.int8_first.miou:.2f} | |")
        if self.agreement_eval is not None:
            lines.append(f"| label agreement % (labelled frames) | 100 | "
                         f"{self.agreement_eval:.2f} | |")
        if self.agreement_data is not None:
            lines.append(f"| label agreement % ({self.agreement_frames} frames of "
                         f"`{self.agreement_source}`) | 100 | {self.agreement_data:.2f} | |")
        if self.speed_fp32 and self.speed_int8:
            lines.append(f"| CPU ms/frame, median ({self.speed_int8.threads} threads, "
                         f"{self.speed_int8.runs} runs) | {self.speed_fp32.median_ms:.2f} | "
                         f"{self.speed_int8.median_ms:.2f} | x{self.speedup:.2f} |")
        if self.fp32 and self.int8:
            lines += ["", "| class | FP32 IoU % | INT8 IoU % | change |", "|---|---:|---:|---:|"]
            for name, a in self.fp32.per_class.items():
                b = self.int8.per_class.get(name)
                if a is None or b is None:
                    lines.append(f"| {name} | {_fmt(a)} | {_fmt(b)} | |")
                else:
                    lines.append(f"| {name} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
        if len(self.method_trials) > 1:
            lines += ["", f"Calibration methods tried (kept: {self.method}):", "",
                      "| method | INT8 mIoU % | agreement % |", "|---|---:|---:|"]
            for m, t in self.method_trials.items():
                agree = t["agreement_eval"] if t["agreement_eval"] is not None \
                    else t["agreement_data"]
                lines.append(f"| {m} | {_fmt(t['miou'])} | {_fmt(agree)} |")
        lines += self._fallback_lines()
        if self.qdq:
            q = self.qdq
            lines += ["", f"Q/DQ graph: {q.quantize_nodes} QuantizeLinear, "
                      f"{q.dequantize_nodes} DequantizeLinear, {q.per_channel_weights} "
                      f"per-channel / {q.per_tensor_weights} per-tensor weights, "
                      f"non-zero zero points: {q.nonzero_zero_points}."]
        if self.tensorrt_issues:
            shown = "; ".join(self.tensorrt_issues[:3])
            more = len(self.tensorrt_issues) - 3
            lines.append(f"Not for TensorRT ({len(self.tensorrt_issues)} rule violations: "
                         f"{shown}{f'; {more} more' if more > 0 else ''}).")
        else:
            lines.append("TensorRT explicit-quantization rules: all followed (static check of "
                         "the file; no TensorRT engine was built here).")
        return "\n".join(lines) + "\n"

    def _fallback_lines(self) -> list[str]:
        fb = self.fallback
        if fb is None:
            return []
        lines = ["", f"## Sensitivity (max drop {self.max_drop} points)", ""]
        beyond = " beyond those kept on request (--keep-float)" \
            if self.kept_float_requested else ""
        if not fb.kept_float and fb.met and not fb.candidates:
            return [*lines, f"Drop within the maximum: no layer{beyond} needed to stay in float."]
        kept = ", ".join(f"`{n}`" for n in fb.kept_float) or "none"
        by = " by the fallback" if self.kept_float_requested else ""
        lines.append(f"Nodes kept in float{by}: {kept}" + ("" if fb.met else " (target NOT met)"))
        measured = [c for c in fb.candidates if c.recovered is not None]
        if measured:
            lines += ["", "| layer | ops | noise added dB | score with layer in float | "
                      "recovered points |", "|---|---|---:|---:|---:|"]
            for c in measured:
                ops = c.op_type + (f" + {len(c.members) - 1} fused" if len(c.members) > 1 else "")
                lines.append(f"| `{c.name}` | {ops} | {c.noise_db:.1f} | "
                             f"{c.score_in_float:.2f} | {c.recovered:+.2f} |")
        return lines

    def save(self, json_path: Path, md_path: Path) -> None:
        json_path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        md_path.write_text(self.to_markdown())


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"
