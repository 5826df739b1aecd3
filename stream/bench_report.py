"""``segstream bench`` results: summaries of the raw runs, terminal tables (at most 120
columns), Markdown and a PNG plot.

Every figure is summarised over the repeated runs as median, min and max
(:func:`spread`); ratios are per round (pipeline run r / engine run r) before that.
Summaries are always derived from a report's raw ``runs``, so a saved ``--json`` report
renders again to the same tables (``segstream bench --from-json``; reports of format 2,
written before the pipeline settings were options, are read too: :func:`upgrade`).

Pipeline settings (:data:`SETTINGS`: overlap, engine policy, batch and its wait,
cameras) that differ between the configurations of a report are part of each row's label
(``ov-off``, ``ep-latency``, ``b4/5ms``, ``4cam``); those that are the same in all are
said once above the tables.
"""

from __future__ import annotations

import json
import math
import statistics
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.bench_cpu import GROUPS

MAX_WIDTH = 120
STAGE_NAMES = ("capture", "pre", "infer", "handoff", "post", "encode", "publish")
BENCH_FORMAT = 3  # the report's "segstream_bench" version
# 3: per-result pipeline settings (SETTINGS), per-camera figures ("cameras"), the engine's
#    mode ("engine") and per-thread-group CPU ("cpu_threads") in each pipeline run.
READABLE_FORMATS = (2, 3)
LOAD_KEYS = ("others_cpu_percent", "steal_percent")
BUSY_OTHERS, BUSY_STEAL = 50.0, 10.0  # % of one core: above this a run was disturbed
SETTINGS = ("overlap", "engine_policy", "batch", "batch_wait_ms", "cameras", "tta")


def upgrade(report: Any, where: str = "report") -> dict[str, Any]:
    """``report`` in the current format. A format-2 report gets each result's pipeline
    settings from its first pipeline run's recorded config (None where the run predates
    them) and one camera.

    Raises:
        ValueError: not a segstream bench report of a format this version reads.
    """
    fmt = report.get("segstream_bench") if isinstance(report, dict) else None
    if fmt not in READABLE_FORMATS:
        raise ValueError(f"{where} is not a segstream bench report of format "
                         f"{' or '.join(map(str, READABLE_FORMATS))} (written by "
                         f"`segstream bench --json` since --repeat; it says format {fmt!r})")
    if fmt == BENCH_FORMAT:
        return report
    results = []
    for entry in report["results"]:
        cfg = next((r["pipeline"].get("config", {}) for r in entry["runs"] if "pipeline" in r),
                   {})
        results.append({**{k: cfg.get(k) for k in SETTINGS if k != "cameras"}, "cameras": 1,
                        **entry})
    return {**report, "segstream_bench": BENCH_FORMAT, "upgraded_from": fmt,
            "results": results}


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


def _cpu_groups(run: dict[str, Any], prefix: str) -> dict[str, float | None]:
    groups = (run.get("cpu_threads") or {}).get("groups") or {}
    return {f"{prefix}{g}": groups.get(g) for g in GROUPS}


def _cameras(p: dict[str, Any]) -> dict[str, float | None]:
    """Per-camera figures of a pipeline run: fps min/max, worst p50/p99 of the cameras
    that published (one that published nothing has no latency, NaN in the JSON: it
    shows as 0 in the camera fps min, never as the worst latency or in place of it)."""
    cams = list((p.get("cameras") or {}).values())
    if not cams:
        return {}
    fps = [c["fps"] for c in cams]
    served = [c["total"] for c in cams if c["total"]["count"]]
    return {"camera_fps_min": min(fps), "camera_fps_max": max(fps),
            "worst_p50_ms": max((t["p50_ms"] for t in served), default=None),
            "worst_p99_ms": max((t["p99_ms"] for t in served), default=None)}


def _per_run(run: dict[str, Any]) -> dict[str, float | None]:
    """One round's figures, by summary key."""
    e, p = run.get("engine"), run.get("pipeline")
    h, c = run.get("hand_loop"), run.get("clip_pipeline")
    out: dict[str, float | None] = {}
    if e:
        out.update(engine_fps=e["fps"], engine_p50_ms=e["p50_ms"])
        if e.get("in_flight"):
            out["engine_in_flight_fps"] = e["in_flight"]["fps"]
    if p:
        st = p["stages"]
        out.update(pipeline_fps=p["fps"], e2e_p50_ms=st["total"]["p50_ms"],
                   e2e_p99_ms=st["total"]["p99_ms"], e2e_count=st["total"].get("count"),
                   cpu_percent=p["cpu_percent"],
                   rss_mib=p.get("rss_mib"), dropped=p["dropped"],
                   handoff_dropped=p.get("post_dropped"), pipeline_vs_engine=_ratio(p, e),
                   pipeline_vs_in_flight=_ratio(p, (e or {}).get("in_flight")))
        out.update({f"{s}_p50_ms": st.get(s, {}).get("p50_ms") for s in STAGE_NAMES})
        mode = p.get("engine") or {}
        share = mode.get("latency_share")
        out.update(latency_mode_percent=None if share is None else 100 * share,
                   mode_switches=mode.get("switches"))
        out.update(_cameras(p))
        out.update(_cpu_groups(p, "cpu_"))
    if h:
        out["hand_fps"] = h["fps"]
    if c:
        out.update(clip_fps=c["fps"], pipeline_vs_hand=_ratio(c, h))
        out.update(_cpu_groups(c, "clip_cpu_"))
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


def _cpu_columns(prefix: str) -> tuple[Column, ...]:
    """% of one core per thread group, whole numbers (the kernel counts 1/100 s ticks)."""
    names = {"subscriber": "bench sub %"}
    return tuple(Column(names.get(g, f"{g} %"), f"{prefix}{g}", integer) for g in GROUPS)


COLUMNS = {
    "throughput": (Column("engine fps", "engine_fps"), Column("pipeline fps", "pipeline_fps"),
                   Column("pipeline/engine", "pipeline_vs_engine", ratio)),
    "two_calls": (Column("engine 2-call fps", "engine_in_flight_fps"),
                  Column("pipeline fps", "pipeline_fps"),
                  Column("pipeline/2-call", "pipeline_vs_in_flight", ratio)),
    "latency": (Column("e2e p50 ms", "e2e_p50_ms"), Column("e2e p99 ms", "e2e_p99_ms"),
                Column("e2e n", "e2e_count", integer),
                Column("infer ms", "infer_p50_ms"), Column("post ms", "post_p50_ms")),
    "stages": (Column("capture ms", "capture_p50_ms"), Column("pre ms", "pre_p50_ms"),
               Column("hand-off ms", "handoff_p50_ms"), Column("publish ms", "publish_p50_ms"),
               Column("encoder alone ms", "encode_p50_ms")),
    "resources": (Column("cpu %", "cpu_percent"), Column("rss MiB", "rss_mib"),
                  Column("dropped frames", "dropped", integer),
                  Column("others cpu %", "others_cpu_percent"),
                  Column("steal %", "steal_percent")),
    "cameras": (Column("total fps", "pipeline_fps"), Column("camera fps min", "camera_fps_min"),
                Column("camera fps max", "camera_fps_max"),
                Column("worst p50 ms", "worst_p50_ms"), Column("worst p99 ms", "worst_p99_ms")),
    "engine": (Column("hand-off dropped", "handoff_dropped", integer),
               Column("latency mode %", "latency_mode_percent", integer),
               Column("mode switches", "mode_switches", integer)),
    "cpu": _cpu_columns("cpu_"),
    "compare": (Column("hand loop fps", "hand_fps"), Column("pipeline fps", "clip_fps"),
                Column("pipeline/hand", "pipeline_vs_hand", ratio)),
    "cpu_clip": _cpu_columns("clip_cpu_"),
}
TITLES = {
    "throughput": "Throughput, live test camera at 'source fps': median (min-max) of {n} runs; "
                  "engine fps: the plain session, one call at a time",
    "two_calls": "The engine as the pipeline's throughput mode runs it (ONNX Runtime): two "
                 "calls side by side, the threads split between their sessions; "
                 "pipeline/2-call: the share of that rate the pipeline keeps",
    "latency": "Latency, ms (p50 of each run unless p99; e2e: capture -> published; n: "
               "e2e samples of the run: with under 100 a p99 is one of the largest few)",
    "stages": "Other pipeline stages, ms (p50 of each run; publish includes encoding; "
              "'encoder alone': the encoder timed apart on the last map, 50 calls)",
    "resources": "Resources: pipeline cpu (100 % = one core), rss, frames the camera "
                 "replaced; all runs: other processes' cpu, VM steal",
    "cameras": "Cameras: all cameras' fps together; the slowest and fastest camera's fps; "
               "the worst camera's capture -> publish",
    "engine": "Engine mode: results the post worker's slot replaced (hand-off), time in "
              "latency mode (--engine-policy), mode switches, in the measured window",
    "cpu": "Where the CPU goes, pipeline on the live camera(s): % of one core per thread "
           "group (stream/bench_cpu.py)",
    "compare": "--compare: the same {frames}-frame clip, every frame, hand-written loop vs "
               "pipeline",
    "cpu_clip": "Where the CPU goes, pipeline on the --compare clip (capture includes "
                "decoding): % of one core per thread group",
}
_ONLY = {"compare": lambda e: bool(e.get("compare")),
         "cpu_clip": lambda e: bool(e.get("compare"))}


def varying(results: list[dict[str, Any]]) -> list[str]:
    """The :data:`SETTINGS` whose values differ between ``results``."""
    return [k for k in SETTINGS if len({json.dumps(e.get(k)) for e in results}) > 1]


def _tokens(entry: dict[str, Any], keys: Iterable[str]) -> str:
    """The settings ``keys`` of ``entry`` as short label words (``ov-off b4/5ms 4cam``)."""
    keys = set(keys)
    out = []
    if "overlap" in keys:
        out.append(f"ov-{entry.get('overlap')}")
    if "engine_policy" in keys:
        out.append(f"ep-{entry.get('engine_policy')}")
    if keys & {"batch", "batch_wait_ms"}:
        wait = entry.get("batch_wait_ms")
        out.append(f"b{entry.get('batch')}" + (f"/{wait:g}ms" if wait else ""))
    if "cameras" in keys:
        out.append(f"{entry.get('cameras')}cam")
    if "tta" in keys:
        out.append(f"tta-{entry.get('tta')}")
    return " ".join(out)


def common_settings(results: list[dict[str, Any]]) -> str:
    """The settings every result shares, in words, and the legend of the label words."""
    if not results:
        return ""
    e, vary = results[0], varying(results)
    said = {"overlap": f"overlap {e.get('overlap')}",
            "engine_policy": f"engine policy {e.get('engine_policy')}",
            "batch": f"batch {e.get('batch')}", "batch_wait_ms":
            f"batch wait {e.get('batch_wait_ms'):g} ms" if e.get("batch_wait_ms") else "",
            "cameras": f"{e.get('cameras')} camera{'s' if e.get('cameras') != 1 else ''}",
            "tta": f"tta {e.get('tta')}" if e.get("tta") not in (None, "none") else ""}
    same = [said[k] for k in SETTINGS if k not in vary and e.get(k) is not None and said[k]]
    text = f"Pipeline settings in every row: {', '.join(same)}." if same else ""
    if vary:
        text += (" Labels: ov = --overlap, ep = --engine-policy, b = --batch[/--batch-wait-ms],"
                 " cam = --cameras, tta = --tta.")
    return text.strip()


def config_label(entry: dict[str, Any], settings: Iterable[str] = ()) -> tuple[str, str]:
    """(model stem, ``backend precision HxW [settings]``), e.g. (camvid_fastscnn,
    ort fp32 360x480 ov-off) with the ``settings`` keys that vary in the report."""
    backend = {"onnxruntime": "ort", "tensorrt": "trt"}.get(entry["backend"], entry["backend"])
    h, w = entry["resolution"]
    extra = _tokens(entry, settings)
    return Path(entry["model"]).stem, f"{backend} {entry['precision']} {h}x{w}" + (
        f" {extra}" if extra else "")


def _label(entry: dict[str, Any], width: int = 1000, settings: Iterable[str] = ()) -> str:
    """The config label in ``width`` characters: the model stem is shortened first."""
    stem, rest = config_label(entry, settings)
    room = width - len(rest) - 1
    if len(stem) > room:
        stem = stem[:max(1, room - 2)] + ".."
    return _fit(f"{stem} {rest}", width)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(1, width - 3)] + "..."


def _grid(header: list[str], rows: list[tuple[dict[str, Any], list[str]]],
          settings: list[str]) -> list[str]:
    """Right-aligned figure columns after a left-aligned config column that takes what
    :data:`MAX_WIDTH` leaves (at most 44 characters)."""
    cells = [c for _, c in rows]
    widths = [max(len(r[i]) for r in [header[1:], *cells]) for i in range(len(header) - 1)]
    room = MAX_WIDTH - sum(widths) - 2 * len(widths)
    first = max(len(header[0]), min(44, room, max(len(_label(e, settings=settings))
                                                  for e, _ in rows)))
    lines = []
    for name, r in [(header[0], header[1:]), ("-" * first, ["-" * w for w in widths]),
                    *((_label(e, first, settings), c) for e, c in rows)]:
        lines.append("  ".join([name.ljust(first),
                                *(c.rjust(w) for c, w in zip(r, widths, strict=True))]))
    return lines


def _source(entry: dict[str, Any]) -> str:
    """The test cameras' rate, ``N x rate`` for several, ``*`` when one limited a run."""
    star = "*" if summarize_result(entry)["source_limited_runs"] else ""
    n = entry.get("cameras") or 1
    return f"{n}x{entry['source_fps']}{star}" if n > 1 else f"{entry['source_fps']}{star}"


def table(report: dict[str, Any]) -> str:
    """Terminal tables, every line at most :data:`MAX_WIDTH` characters. A table shows
    the configurations it has figures for (the cameras table: when one has several
    cameras), and none when no configuration has any."""
    results = report["results"]
    settings = varying(results)
    lines: list[str] = []
    many = any((e.get("cameras") or 1) > 1 for e in results)
    for name, cols in COLUMNS.items():
        if name == "cameras" and not many:
            continue
        rows = []
        for entry in results:
            if not _ONLY.get(name, bool)(entry):
                continue
            s = summarize_result(entry)
            cells = [cell(s.get(c.key), c.fmt) for c in cols]
            if all(c == "-" for c in cells):
                continue
            rows.append((entry, [_source(entry), *cells] if name == "throughput" else cells))
        if not rows:
            continue
        header = ["config", *(["source fps"] if name == "throughput" else []),
                  *(c.header for c in cols)]
        title = TITLES[name].format(n=report["options"]["repeat"],
                                    frames=report["options"]["compare_frames"])
        lines += ["", *textwrap.wrap(title, MAX_WIDTH), *_grid(header, rows, settings)]
    head = textwrap.wrap(common_settings(results), MAX_WIDTH, subsequent_indent="  ")
    notes = _notes(report)
    return "\n".join(head + lines[0 if head else 1:] + (["", *notes] if notes else []))


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
    settings = varying(report["results"])
    out += [f"{_label(e, settings=settings)}: no --compare: {e['compare_skipped']}."
            for e in report["results"] if e.get("compare_skipped")]
    return [line for note in out for line in textwrap.wrap(note, MAX_WIDTH,
                                                           subsequent_indent="  ")]


def markdown(report: dict[str, Any]) -> str:
    """One Markdown table with every figure, then the settings, the machine and the notes."""
    cols: dict[str, Column] = {}  # by summary key, once each; "-": not measured
    for name, group in COLUMNS.items():
        for c in group:
            cols.setdefault(c.key, Column("clip " + c.header, c.key, c.fmt)
                            if name == "cpu_clip" else c)
    header = ["config", "source fps", *(c.header for c in cols.values())]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    settings = varying(report["results"])
    for entry in report["results"]:
        s = summarize_result(entry)
        cells = [cell(s.get(c.key), c.fmt) for c in cols.values()]
        lines.append("| " + " | ".join([_label(entry, settings=settings), _source(entry),
                                        *cells]) + " |")
    m = report["machine"]
    common = common_settings(report["results"])
    lines += ["", (common + " " if common else "")
              + f"Median (min-max) of {report['options']['repeat']} interleaved runs. "
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
        ax.set_xticks(x, [_label(r, settings=varying(res)) for r in res], rotation=20,
                      ha="right", fontsize=8)
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
