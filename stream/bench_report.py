"""Rendering of ``segstream bench`` results: terminal table, Markdown and a PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _ms(stage: dict[str, Any] | None) -> str:
    if not stage or not stage.get("count"):
        return "-"
    return f"{stage['p50_ms']:.1f}/{stage['p99_ms']:.1f}"


def rows(report: dict[str, Any]) -> list[list[str]]:
    out = []
    for r in report["results"]:
        p, st = r["pipeline"], r["pipeline"]["stages"]
        cmp_ = r.get("compare")
        out.append([
            r["model"].rsplit("/", 1)[-1], r["backend"], r["precision"],
            "x".join(map(str, r["resolution"])), f"{r['engine']['fps']:.1f}",
            f"{p['fps']:.1f}", f"{r['pipeline_vs_engine']:.2f}",
            _ms(st.get("total")), _ms(st.get("capture")), _ms(st.get("pre")),
            _ms(st.get("infer")), _ms(st.get("post")), _ms(st.get("encode")),
            _ms(st.get("publish")), str(p["dropped"]), f"{p['cpu_percent']:.0f}",
            f"{p['peak_rss_mib']:.0f}",
            f"{cmp_['hand_loop']['fps']:.1f} / {cmp_['pipeline_fps']:.1f} "
            f"(x{cmp_['speedup']:.2f})" if cmp_ else "-",
        ])
    return out


HEADER = ["model", "backend", "prec", "camera", "engine fps", "pipeline fps", "pipe/eng",
          "e2e p50/p99 ms", "capture", "pre", "infer", "post", "encode", "publish",
          "dropped", "cpu %", "rss MiB", "hand loop / pipeline fps"]


def table(report: dict[str, Any]) -> str:
    """Fixed-width table for the terminal."""
    data = [HEADER, *rows(report)]
    widths = [max(len(r[i]) for r in data) for i in range(len(HEADER))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in data]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    data = rows(report)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in data]
    m = report["machine"]
    lines.append("")
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; GPUs: "
                 f"{', '.join(g['name'] for g in m['gpus']) or 'none'}; "
                 + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    """FPS (engine vs pipeline vs hand loop) and end-to-end latency per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    res = report["results"]
    labels = [r["label"] for r in res]
    x = np.arange(len(res))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 2.5 * len(res) + 4), 4.5))
    bars = [("bare engine", [r["engine"]["fps"] for r in res]),
            ("pipeline, live camera", [r["pipeline"]["fps"] for r in res])]
    if any("compare" in r for r in res):  # the same clip, every frame, both ways
        bars += [("pipeline, video clip", [r.get("compare", {}).get("pipeline_fps", 0)
                                           for r in res]),
                 ("hand-written loop, same clip",
                  [r.get("compare", {}).get("hand_loop", {}).get("fps", 0) for r in res])]
    width = 0.8 / len(bars)
    for i, (name, fps) in enumerate(bars):
        ax1.bar(x + (i - (len(bars) - 1) / 2) * width, fps, width, label=name)
    ax1.set_ylabel("frames per second")
    ax1.set_title("Throughput")
    totals = [r["pipeline"]["stages"]["total"] for r in res]
    ax2.bar(x - 0.2, [t["p50_ms"] for t in totals], 0.4, label="p50")
    ax2.bar(x + 0.2, [t["p99_ms"] for t in totals], 0.4, label="p99")
    ax2.set_ylabel("capture -> publish latency (ms)")
    ax2.set_title("End-to-end latency")
    for ax in (ax1, ax2):
        ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    m = report["machine"]
    fig.suptitle(f"segstream bench on {m['cpu']} ({m['cores']} cores)"
                 + (f", {m['gpus'][0]['name']}" if m["gpus"] else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
