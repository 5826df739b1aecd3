"""``segstream bench`` results: summaries of the raw runs, terminal tables (at most 120
columns), Markdown and a PNG plot.

Every figure is summarised over the repeated runs as median, min and max
(:func:`spread`); ratios are per round (pipeline run r / engine run r) before that.
Summaries are always derived from a report's raw ``runs``, so a saved ``--json`` report
renders again to the same tables (``segstream bench --from-json``).
"""

from __future__ import annotations

import math
import statistics
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_WIDTH = 120
STAGE_NAMES = ("capture", "pre", "infer", "post", "encode", "publish")
BENCH_FORMAT = 2  # the report's "segstream_bench" version
LOAD_KEYS = ("others_cpu_percent", "steal_percent")
BUSY_OTHERS, BUSY_STEAL = 50.0, 10.0  # % of one core: above this a run was disturbed


def spread(values: Iterable[float | None]) -> dict[str, float] | None:
    """Median, min, max and count of the finite values (None when there are none)."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if not a or not b or not b.get("fps"):
        return None
    return a["fps"] / b["fps"]


def _per_run(run: dict[str, Any]) -> dict[str, float | None]:
    """One round's figures, by summary key."""
    e, p = run.get("engine"), run.get("pipeline")
    h, c = run.get("hand_loop"), run.get("clip_pipeline")
    out: dict[str, float | None] = {}
    if e:
        out.update(engine_fps=e["fps"], engine_p50_ms=e["p50_ms"])
    if p:
        st = p["stages"]
        out.update(pipeline_fps=p["fps"], e2e_p50_ms=st["total"]["p50_ms"],
                   e2e_p99_ms=st["total"]["p99_ms"], cpu_percent=p["cpu_percent"],
                   rss_mib=p.get("rss_mib"), dropped=p["dropped"],
                   pipeline_vs_engine=_ratio(p, e))
        out.update({f"{s}_p50_ms": st.get(s, {}).get("p50_ms") for s in STAGE_NAMES})
    if h:
        out["hand_fps"] = h["fps"]
    if c:
        out.update(clip_fps=c["fps"], pipeline_vs_hand=_ratio(c, h))
    return out


def summarize_result(entry: dict[str, Any]) -> dict[str, Any]:
    """Per figure {median, min, max, n} over the rounds, plus ``source_limited_runs``."""
    per_run = [_per_run(r) for r in entry["runs"]]
    keys = dict.fromkeys(k for r in per_run for k in r)
    out: dict[str, Any] = {k: spread(r.get(k) for r in per_run) for k in keys}
    out["source_limited_runs"] = sum(bool(r.get("pipeline", {}).get("source_limited"))
                                     for r in entry["runs"])
    for key in LOAD_KEYS:  # over every run of every kind
        out[key] = spread(run.get(key) for r in entry["runs"] for run in r.values()
                          if isinstance(run, dict))
    return out


def num(x: float) -> str:
    """Rounded to what a noisy measurement supports, never an exponent: 1234, 143, 79.3,
    8.1, 0.42."""
    if not math.isfinite(x):
        return "-"
    a = abs(x)
    return f"{x:.0f}" if a >= 100 else f"{x:.1f}" if a >= 1 else f"{x:.2f}"


def ratio(x: float) -> str:
    """Two decimals: 0.56, 1.06."""
    return f"{x:.2f}" if math.isfinite(x) else "-"


def integer(x: float) -> str:
    return f"{x:.0f}" if math.isfinite(x) else "-"


def cell(s: dict[str, float] | None, fmt: Callable[[float], str] = num) -> str:
    """``median (min-max)``; the median alone for one run; ``-`` for none."""
    if not s:
        return "-"
    if s["n"] == 1:
        return fmt(s["median"])
    return f"{fmt(s['median'])} ({fmt(s['min'])}-{fmt(s['max'])})"


@dataclass(frozen=True)
class Column:
    header: str  # with its unit
    key: str  # summary key
    fmt: Callable[[float], str] = num


COLUMNS = {
    "throughput": (Column("engine fps", "engine_fps"), Column("pipeline fps", "pipeline_fps"),
                   Column("pipeline/engine", "pipeline_vs_engine", ratio)),
    "latency": (Column("e2e p50 ms", "e2e_p50_ms"), Column("e2e p99 ms", "e2e_p99_ms"),
                Column("infer ms", "infer_p50_ms"), Column("post ms", "post_p50_ms")),
    "stages": (Column("capture ms", "capture_p50_ms"), Column("pre ms", "pre_p50_ms"),
               Column("encode ms", "encode_p50_ms"), Column("publish ms", "publish_p50_ms")),
    "resources": (Column("cpu %", "cpu_percent"), Column("rss MiB", "rss_mib"),
                  Column("dropped frames", "dropped", integer),
                  Column("others cpu %", "others_cpu_percent"),
                  Column("steal %", "steal_percent")),
    "compare": (Column("hand loop fps", "hand_fps"), Column("pipeline fps", "clip_fps"),
                Column("pipeline/hand", "pipeline_vs_hand", ratio)),
}
TITLES = {
    "throughput": "Throughput, live test camera at 'source fps': median (min-max) of {n} runs",
    "latency": "Latency, ms (p50 of each run unless p99; e2e: capture -> published)",
    "stages": "Other pipeline stages, ms (p50 of each run)",
    "resources": "Resources: pipeline cpu (100 % = one core), rss, frames the camera "
                 "replaced; all runs: other processes' cpu, VM steal",
    "compare": "--compare: the same {frames}-frame clip, every frame, hand-written loop vs "
               "pipeline",
}


def config_label(entry: dict[str, Any]) -> tuple[str, str]:
    """(model stem, ``backend precision HxW``), e.g. (camvid_fastscnn, ort fp32 360x480)."""
    backend = {"onnxruntime": "ort", "tensorrt": "trt"}.get(entry["backend"], entry["backend"])
    h, w = entry["resolution"]
    return Path(entry["model"]).stem, f"{backend} {entry['precision']} {h}x{w}"


def _label(entry: dict[str, Any], width: int = 1000) -> str:
    """The config label in ``width`` characters: the model stem is shortened first."""
    stem, rest = config_label(entry)
    room = width - len(rest) - 1
    if len(stem) > room:
        stem = stem[:max(1, room - 2)] + ".."
    return _fit(f"{stem} {rest}", width)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(1, width - 3)] + "..."


def _grid(header: list[str], rows: list[tuple[dict[str, Any], list[str]]]) -> list[str]:
    """Right-aligned figure columns after a left-aligned config column that takes what
    :data:`MAX_WIDTH` leaves (at most 44 characters)."""
    cells = [c for _, c in rows]
    widths = [max(len(r[i]) for r in [header[1:], *cells]) for i in range(len(header) - 1)]
    room = MAX_WIDTH - sum(widths) - 2 * len(widths)
    first = max(len(header[0]), min(44, room, max(len(_label(e)) for e, _ in rows)))
    lines = []
    for name, r in [(header[0], header[1:]), ("-" * first, ["-" * w for w in widths]),
                    *((_label(e, first), c) for e, c in rows)]:
        lines.append("  ".join([name.ljust(first),
                                *(c.rjust(w) for c, w in zip(r, widths, strict=True))]))
    return lines


def _source(entry: dict[str, Any]) -> str:
    star = "*" if summarize_result(entry)["source_limited_runs"] else ""
    return f"{entry['source_fps']}{star}"


def table(report: dict[str, Any]) -> str:
    """Terminal tables, every line at most :data:`MAX_WIDTH` characters."""
    lines: list[str] = []
    for name, cols in COLUMNS.items():
        rows = []
        for entry in report["results"]:
            if name == "compare" and not entry.get("compare"):
                continue
            s = summarize_result(entry)
            cells = [cell(s.get(c.key), c.fmt) for c in cols]
            rows.append((entry, [_source(entry), *cells] if name == "throughput" else cells))
        if not rows:
            continue
        header = ["config", *(["source fps"] if name == "throughput" else []),
                  *(c.header for c in cols)]
        title = TITLES[name].format(n=report["options"]["repeat"],
                                    frames=report["options"]["compare_frames"])
        lines += ["", _fit(title, MAX_WIDTH), *_grid(header, rows)]
    notes = _notes(report)
    return "\n".join(lines[1:] + (["", *notes] if notes else []))


def _notes(report: dict[str, Any]) -> list[str]:
    """Warnings under the tables, wrapped to :data:`MAX_WIDTH`."""
    out = []
    sums = [summarize_result(e) for e in report["results"]]
    if any(s["source_limited_runs"] for s in sums):
        out.append("* pipeline fps within 10 % of the source rate in some run: the camera may "
                   "have been the limit (raise --source-fps).")
    worst = {k: max((s[k]["max"] for s in sums if s[k]), default=0.0) for k in LOAD_KEYS}
    busy = []
    if worst["others_cpu_percent"] > BUSY_OTHERS:
        busy.append(f"other processes used up to {worst['others_cpu_percent']:.0f} % of a core")
    if worst["steal_percent"] > BUSY_STEAL:
        busy.append(f"the hypervisor stole up to {worst['steal_percent']:.0f} % of a core")
    if busy:
        out.append(f"! The machine was not quiet: {' and '.join(busy)} during some runs; these "
                   "figures are less reliable (see 'others cpu %', 'steal %'): rerun on an idle "
                   "machine.")
    out += [f"{_label(e)}: no --compare: {e['compare_skipped']}." for e in report["results"]
            if e.get("compare_skipped")]
    return [line for note in out for line in textwrap.wrap(note, MAX_WIDTH,
                                                           subsequent_indent="  ")]


def markdown(report: dict[str, Any]) -> str:
    """One Markdown table with every figure, then the machine and the notes."""
    cols = [c for group in COLUMNS.values() for c in group]  # "-": not measured
    header = ["config", "source fps", *(c.header for c in cols)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for entry in report["results"]:
        s = summarize_result(entry)
        cells = [cell(s.get(c.key), c.fmt) for c in cols]
        lines.append("| " + " | ".join([_label(entry), _source(entry), *cells]) + " |")
    m = report["machine"]
    lines += ["", f"Median (min-max) of {report['options']['repeat']} interleaved runs. "
              f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; GPUs: "
              f"{', '.join(g['name'] for g in m['gpus']) or 'none'}; "
              + ", ".join(f"{k} {v}" for k, v in m["versions"].items())]
    notes = _notes(report)
    return "\n".join(lines + (["", *notes] if notes else []))


def plot(report: dict[str, Any], path: Path) -> Path:
    """FPS (engine, pipeline, hand loop) and end-to-end latency per configuration: bars at
    the median, whiskers from min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    res = report["results"]
    sums = [summarize_result(r) for r in res]
    x = np.arange(len(res))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 2.5 * len(res) + 4), 4.5))
    bars = [("bare engine", "engine_fps"), ("pipeline, live camera", "pipeline_fps")]
    if any(r.get("compare") for r in res):  # the same clip, every frame, both ways
        bars += [("pipeline, video clip", "clip_fps"),
                 ("hand-written loop, same clip", "hand_fps")]
    _bars(ax1, x, sums, bars)
    ax1.set_ylabel("frames per second")
    ax1.set_title("Throughput")
    _bars(ax2, x, sums, [("p50", "e2e_p50_ms"), ("p99", "e2e_p99_ms")])
    ax2.set_ylabel("capture -> publish latency (ms)")
    ax2.set_title("End-to-end latency")
    for ax in (ax1, ax2):
        ax.set_xticks(x, [_label(r) for r in res], rotation=20, ha="right", fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    m = report["machine"]
    fig.suptitle(f"segstream bench on {m['cpu']} ({m['cores']} cores)"
                 + (f", {m['gpus'][0]['name']}" if m["gpus"] else "")
                 + f": median and range of {report['options']['repeat']} runs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(ax: Any, x: Any, sums: list[dict[str, Any]], bars: list[tuple[str, str]]) -> None:
    width = 0.8 / len(bars)
    for i, (name, key) in enumerate(bars):
        s = [d.get(key) or {"median": 0.0, "min": 0.0, "max": 0.0} for d in sums]
        med = [v["median"] for v in s]
        err = [[v["median"] - v["min"] for v in s], [v["max"] - v["median"] for v in s]]
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, med, width, yerr=err, capsize=3,
               label=name)
