"""What the browser preview costs the pipeline: fps with the preview off and on.

    .venv/bin/python scripts/bench_preview.py                 # 2 rounds x 4 conditions x 10 s
    .venv/bin/python scripts/bench_preview.py --rounds 3 --duration 15 --uri 'test://ball?...'

One ``segstream run`` pipeline per condition (shipped FP32 model unless ``--model``,
ONNX Runtime with 2 threads, a live 480x360 ``videotestsrc`` camera at ``--fps`` so the
camera never limits it, zstd over ipc with a real subscriber reading), run in interleaved
rounds so slow minutes of a shared VM hit every condition alike:

- ``off``: no preview;
- ``on-idle``: the preview listening, nobody watching (the tap's cost alone);
- ``on-ws``: one WebSocket client reading every preview frame (the server's cost:
  scaling, JPEG, zlib, sending);
- ``on-chromium``: one headless Chromium (``/usr/bin/chromium`` via playwright) showing
  the camera page: the server's cost plus a browser decoding and drawing on the same two
  cores, the worst case (a browser normally runs on another machine).

Prints, per condition, the median fps over the rounds, each round's fps, the ratio to
``off``, the process CPU (all threads of the pipeline process, not the browser's) and the
CPU of the preview's own threads (server and encoder, as /api/status reports them) and of
the browser's processes: on a shared VM the fps ratio is noisy, CPU seconds much less so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stream.config import PipelineConfig, PreviewConfig, PublishConfig, SourceConfig  # noqa: E402
from stream.runner import run_pipeline  # noqa: E402
from stream.subscribe import Subscriber  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
CONDITIONS = ("off", "on-idle", "on-ws", "on-chromium")


def _ws_client(url: str, stop: threading.Event) -> Callable[[], None]:
    """Read every message of the camera page's WebSocket until ``stop``."""
    def main() -> None:
        from tornado.websocket import websocket_connect

        async def read() -> None:
            conn = await websocket_connect(url)
            while not stop.is_set():
                try:
                    await asyncio.wait_for(conn.read_message(), 0.5)
                except asyncio.TimeoutError:
                    continue
            conn.close()

        asyncio.run(read())
    return main


def _tree_cpu_s(marker: str) -> float:
    """CPU seconds of the processes whose command line holds ``marker`` (the browser's
    user-data folder) and of all their descendants (its renderer and GPU processes)."""
    procs: dict[int, tuple[int, float, bool]] = {}  # pid -> (parent, cpu s, has marker)
    ticks = os.sysconf("SC_CLK_TCK")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        procs[int(d.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks,
                              marker.encode() in cmd)

    def inside(pid: int) -> bool:
        seen = set()
        while pid in procs and pid not in seen:
            if procs[pid][2]:
                return True
            seen.add(pid)
            pid = procs[pid][0]
        return False

    return sum(cpu for pid, (_, cpu, _) in procs.items() if inside(pid))


BROWSER: dict[str, str] = {}  # "marker": the running browser's user-data folder


def _chromium(url: str, stop: threading.Event, ready: threading.Event) -> Callable[[], None]:
    def main() -> None:
        from playwright.sync_api import sync_playwright

        with tempfile.TemporaryDirectory(prefix="segstream-bench-") as data, \
                sync_playwright() as p:
            BROWSER["marker"] = data
            ctx = p.chromium.launch_persistent_context(
                data, executable_path=os.environ.get("SEGSTREAM_CHROMIUM", "/usr/bin/chromium"),
                args=CHROMIUM_FLAGS, headless=True, viewport={"width": 1280, "height": 820})
            page = ctx.new_page()
            page.goto(url)
            page.wait_for_selector("#legend")
            ready.set()
            while not stop.wait(0.2):
                pass
            ctx.close()
            BROWSER.clear()
    return main


def measure(cfg: PipelineConfig, condition: str, warmup: float, duration: float) -> dict:
    stop, out, box = threading.Event(), _Lines(), {}
    got: dict = {}

    def on_ready(pipeline: object) -> None:
        got["pipeline"] = pipeline

    def target() -> None:
        box["code"], box["result"] = run_pipeline(cfg, stop=stop, out=out, on_ready=on_ready)

    endpoint = cfg.publish.endpoints[0]
    sub_stop = threading.Event()
    runner = threading.Thread(target=target, daemon=True)
    runner.start()
    viewer_stop, viewer_ready = threading.Event(), threading.Event()
    threads = []
    try:
        while "pipeline" not in got or (cfg.preview.port is not None and not out.url()):
            if not runner.is_alive():
                raise RuntimeError("the pipeline ended:\n" + out.text())
            time.sleep(0.05)
        threads.append(threading.Thread(target=_subscribe, args=(endpoint, sub_stop),
                                        daemon=True))
        if condition == "on-ws":
            ws = out.url().replace("http", "ws") + "camera/cam0/ws"
            threads.append(threading.Thread(target=_ws_client(ws, viewer_stop), daemon=True))
            viewer_ready.set()
        elif condition == "on-chromium":
            threads.append(threading.Thread(
                target=_chromium(out.url() + "camera/cam0", viewer_stop, viewer_ready),
                daemon=True))
        else:
            viewer_ready.set()
        for t in threads:
            t.start()
        viewer_ready.wait(60)
        time.sleep(warmup)
        cam = got["pipeline"].stats["cam0"]
        marker = BROWSER.get("marker", "")
        n0, t0, cpu0, pv0 = (cam.published, time.monotonic(), time.process_time(),
                             _preview_cpu_s(out.url()))
        br0 = _tree_cpu_s(marker) if marker else 0.0
        time.sleep(duration)
        n1, t1, cpu1, pv1 = (cam.published, time.monotonic(), time.process_time(),
                             _preview_cpu_s(out.url()))
        br1 = _tree_cpu_s(marker) if marker else 0.0
    finally:
        viewer_stop.set()
        sub_stop.set()
        for t in threads:
            t.join(30)
        stop.set()
        runner.join(30)
    return {"fps": (n1 - n0) / (t1 - t0), "cpu": 100 * (cpu1 - cpu0) / (t1 - t0),
            "preview_cpu": 100 * (pv1 - pv0) / (t1 - t0),
            "browser_cpu": 100 * (br1 - br0) / (t1 - t0)}


def _preview_cpu_s(url: str) -> float:
    """CPU seconds used so far by the preview's threads (its server and encoder), as its
    /api/status reports them; 0 without a preview."""
    if not url:
        return 0.0
    with urllib.request.urlopen(url + "api/status", timeout=10) as r:
        return json.load(r)["cameras"][0]["preview"]["cpu_s"]


def _subscribe(endpoint: str, stop: threading.Event) -> None:
    with Subscriber(endpoint, timeout=0.2) as sub:
        while not stop.is_set():
            sub.receive(0.2)


class _Lines:
    """The runner's output, kept for the preview URL and for errors."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def text(self) -> str:
        return "".join(self._parts)

    def url(self) -> str:
        m = re.search(r"preview on (http://\S+/)", self.text())
        return m.group(1) if m else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model (default: the shipped FP32 one)")
    ap.add_argument("--uri", default="test://ball?width=480&height=360&fps={fps}",
                    help="camera ({fps} is replaced by --fps)")
    ap.add_argument("--fps", type=int, default=240, help="camera rate (default 240)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--preview-fps", type=float, default=PreviewConfig.fps)
    ap.add_argument("--conditions", default=",".join(CONDITIONS),
                    help="comma-separated subset of: " + ", ".join(CONDITIONS))
    args = ap.parse_args()
    conditions = [c.strip() for c in args.conditions.split(",")]
    results: dict[str, list[dict]] = {c: [] for c in conditions}
    uri = args.uri.format(fps=args.fps)
    for r in range(args.rounds):
        for c in conditions:
            preview = PreviewConfig(port=0 if c != "off" else None, fps=args.preview_fps)
            cfg = PipelineConfig(
                sources=(SourceConfig(uri, "cam0"),), model=args.model, threads=2,
                publish=PublishConfig((f"ipc:///tmp/segstream-bench-preview-{os.getpid()}",)),
                stats_interval=0, preview=preview)
            got = measure(cfg, c, args.warmup, args.duration)
            results[c].append(got)
            print(f"round {r + 1} {c:>11}: {got['fps']:6.1f} fps, cpu {got['cpu']:5.1f} % "
                  f"(preview threads {got['preview_cpu']:.1f} %, browser "
                  f"{got['browser_cpu']:.1f} %)", flush=True)
    base = statistics.median(x["fps"] for x in results[conditions[0]])
    print(f"\ncamera {uri}, model {args.model or 'shipped FP32'}, preview "
          f"{args.preview_fps:g} fps, {args.rounds} rounds x {args.duration:g} s")
    print("| condition | pipeline fps (median) | rounds | vs off | process cpu % | "
          "preview threads cpu % | browser cpu % |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for c in conditions:
        fps = [x["fps"] for x in results[c]]
        med = statistics.median(fps)
        cpu = statistics.median(x["cpu"] for x in results[c])
        pv = statistics.median(x["preview_cpu"] for x in results[c])
        br = statistics.median(x["browser_cpu"] for x in results[c])
        print(f"| {c} | {med:.1f} | {' / '.join(f'{f:.1f}' for f in fps)} | "
              f"{100 * (med / base - 1):+.1f} % | {cpu:.0f} | {pv:.1f} | {br:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
