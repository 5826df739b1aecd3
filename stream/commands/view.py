"""``segstream view ENDPOINT``: show or record received label maps in class colours, over
their camera frames when the publisher sends them (wire 1.2 ``img/`` topic)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engines.postprocess import colorize, overlay
from stream.commands._common import output_problem, positive, report_errors
from stream.commands.subscribe import add_connection_args, connection_errors, open_subscriber
from stream.mp4 import Mp4Writer
from stream.wire import ClassTable, terminal_safe

DESCRIPTION = """Colour received label maps with the class table's colours and draw a
legend of class names and colours beside them.

When the publisher also sends camera frames (`segstream run --publish-frames`), each map
is blended over the frame it was made from (same camera and seq; --alpha sets the mask's
opacity). Frames are sampled (--publish-frames RATE), so then only the maps that have a
frame are drawn: a recording still plays at the stream's real speed, each overlay held
until the next. A camera whose frames stop for a few seconds falls back to flat colours;
--no-frames never asks for them.

With a display (DISPLAY or WAYLAND_DISPLAY set and an OpenCV build with GUI support) a
window per camera opens; press q or Esc to quit. Without one, record instead:
--save FILE.mp4 writes an MPEG-4 video (one camera; put {camera} in the name to get a
file per camera), --save-dir DIR writes DIR/<camera>/<seq>.png frames. A video's
frame size is set by its first frame, so --save skips the maps that arrive before the
class table they name (at most 2.5 s; publishers repeat their tables every 2 s).

Exit status: 0 when done, 1 when nothing arrived within --timeout, 2 for bad arguments
or when there is neither a display nor --save/--save-dir."""

EPILOG = """examples:
  segstream view tcp://vehicle:5555
  segstream view tcp://vehicle:5555 --camera front --save front.mp4 --count 300
  segstream view ipc:///tmp/seg --save 'run-{camera}.mp4' --fps 25
  segstream view tcp://localhost:5555 --save-dir frames/ --count 20
  segstream view tcp://vehicle:5555 --save overlay.mp4 --alpha 0.4 --count 100
"""

LEGEND_W = 150
WINDOW_POLL_S = 0.05  # how often an idle window redraws and reads keys
ROW_H = 18
TABLE_WAIT_S = 2.5  # publishers repeat their class tables every 2 s (docs/wire-format.md)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "view", help="show or record colourised label maps", description=DESCRIPTION,
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_connection_args(p)
    p.add_argument("--save", metavar="FILE.mp4",
                   help="write an mp4v video ({camera} in the name: one file per camera)")
    p.add_argument("--save-dir", type=Path, metavar="DIR",
                   help="write DIR/<camera>/<seq>.png")
    p.add_argument("--fps", type=positive(float, "a number of frames per second"), default=30.0,
                   help="frame rate of --save videos (default 30); maps are placed on the "
                        "video's timeline by their capture time, so the video plays at the "
                        "stream's real speed whatever its rate (repeating maps of a slower "
                        "stream, skipping some of a faster one)")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="opacity of the mask over camera frames, 0..1 (default 0.5)")
    p.add_argument("--no-frames", action="store_true",
                   help="flat label colours only: do not ask the publisher for camera frames")
    p.add_argument("--no-legend", action="store_true", help="colours only, no legend")
    p.add_argument("--no-window", action="store_true", help="never open a window")
    p.set_defaults(func=run)


def fallback_palette() -> np.ndarray:
    """(256, 3) uint8 RGB: distinct fixed colours for ids before a class table arrives."""
    rng = np.random.default_rng(12345)
    return rng.integers(40, 256, (256, 3), dtype=np.uint8)


def render(labels: np.ndarray, table: ClassTable | None, legend: bool = True,
           frame: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
    """(H, W) uint8 labels -> (H', W', 3) uint8 BGR image, legend panel on the right.

    ``frame``: the (h, w, 3) uint8 BGR camera frame of the map (any size: it is scaled to
    (H, W)); the class colours are blended over it with opacity ``alpha``."""
    palette = table.palette() if table else fallback_palette()
    h, w = labels.shape
    if frame is None:
        img = colorize(labels, palette)  # (H, W, 3) BGR
    else:
        if frame.shape[:2] != (h, w):
            frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)  # (H, W, 3)
        img = overlay(frame, labels, palette, alpha)
    if not legend:
        return np.ascontiguousarray(img)
    names = table.names if table else [f"class {i}" for i in np.unique(labels)]
    ids = range(len(names)) if table else [int(i) for i in np.unique(labels)]
    out_h = max(h, ROW_H * len(names) + 8)
    canvas = np.zeros((out_h, w + LEGEND_W, 3), np.uint8)  # (H', W + legend, 3)
    canvas[:h, :w] = img
    for row, (cid, name) in enumerate(zip(ids, names, strict=True)):
        y = 4 + row * ROW_H
        color = tuple(int(v) for v in palette[cid][::-1])  # RGB -> BGR
        cv2.rectangle(canvas, (w + 6, y), (w + 18, y + 12), color, thickness=-1)
        cv2.putText(canvas, name[:18], (w + 24, y + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def has_display() -> bool:
    """A display exists and this OpenCV build can open windows on it."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow("segstream")
        cv2.destroyWindow("segstream")
    except cv2.error:
        return False
    return True


def path_part(camera: str) -> str:
    """``camera`` as one file or folder name. Wire camera ids are printable ASCII without
    ``/``, which leaves ``.`` and ``..``: those would name this folder or its parent."""
    return camera.replace(".", "%2E") if camera in (".", "..") else camera


def messages(sub: Any, sinks: Sinks) -> Iterator[Any]:
    """The subscriber's messages. With a window, waits in short slices so that the window
    redraws and reads keys while nothing arrives (a publisher gone quiet must not freeze
    it): yields None once q / Esc was pressed; ``--timeout`` still ends the wait."""
    if not sinks.window:
        yield from sub
        return
    idle_since = time.monotonic()
    while True:
        msg = sub.receive(timeout=WINDOW_POLL_S)
        if msg is not None:
            idle_since = time.monotonic()
            yield msg
        elif not sinks.poll_window():
            yield None
            return
        elif sub.timeout is not None and time.monotonic() - idle_since > sub.timeout:
            raise sub.timeout_error()


class Timeline:
    """How many video frames each map takes so that a constant-rate video follows the
    maps' capture times: ``fps`` frames per second of stream time, the map on screen until
    the next one (a 15 fps stream in a 30 fps video: each map twice; a 60 fps stream: every
    other map skipped). A pause longer than ``max_gap_s`` is cut to that length."""

    def __init__(self, fps: float, max_gap_s: float = 2.0) -> None:
        self.fps, self.max_gap_ns = fps, int(max_gap_s * 1e9)
        self._last: dict[str, int] = {}  # camera -> capture time of its last map
        self._elapsed: dict[str, int] = {}  # camera -> stream time covered, ns
        self._frames: dict[str, int] = {}  # camera -> video frames written

    def copies(self, camera: str, t_ns: int) -> int:
        """Video frames to write for the map of ``camera`` captured at ``t_ns`` (0: skip).
        A capture time that goes backwards (publisher restart) counts as no time passed."""
        if camera in self._last:
            gap = min(max(0, t_ns - self._last[camera]), self.max_gap_ns)
            self._elapsed[camera] += gap
        else:
            self._elapsed[camera], self._frames[camera] = 0, 0
        self._last[camera] = t_ns
        due = int(self._elapsed[camera] * self.fps / 1e9 + 0.5) + 1  # frames up to this map
        n = max(0, due - self._frames[camera])
        self._frames[camera] += n
        return n


class TableWait:
    """Holds back a recording's maps whose class table has not arrived yet.

    The wire format lets a map arrive before the table it names (a new subscriber's
    table and the first maps race). A video's frame size is fixed by its first frame, and
    a map drawn without its table has fallback colours and a legend of only the ids it
    shows (another height): drawn first, it would squash the whole recording. Such maps
    are skipped per camera until the table arrives, for at most ``limit_s`` after the
    first of them (publishers repeat their tables every 2 s); after that they are drawn
    with fallback colours. Each wait starts afresh once a table has come (a restarted
    publisher's new model)."""

    def __init__(self, limit_s: float = TABLE_WAIT_S) -> None:
        self.limit_ns = int(limit_s * 1e9)
        self._since: dict[str, int] = {}  # camera -> receive time of its first held map
        self.held = 0  # maps skipped while waiting
        self.gave_up: set[str] = set()  # cameras drawn without a table after the wait

    def hold(self, camera: str, has_table: bool, t_receive_mono_ns: int) -> bool:
        """True: skip this map of ``camera`` (received at ``t_receive_mono_ns``)."""
        if has_table:  # a later table-less map (publisher restarted) waits afresh
            self._since.pop(camera, None)
            self.gave_up.discard(camera)
            return False
        if camera in self.gave_up:
            return False
        since = self._since.setdefault(camera, t_receive_mono_ns)
        if t_receive_mono_ns - since < self.limit_ns:
            self.held += 1
            return True
        self.gave_up.add(camera)
        del self._since[camera]
        print(f"segstream: [{terminal_safe(camera, 64)}] no class table within "
              f"{self.limit_ns / 1e9:g} s: recording with fallback colours", file=sys.stderr)
        return False


class Sinks:
    """Window, video writers and PNG folder for rendered frames."""

    def __init__(self, args: argparse.Namespace, window: bool) -> None:
        self.window = window
        self.save = args.save
        self.save_dir = args.save_dir
        self.fps = args.fps
        self.writers: dict[str, Mp4Writer] = {}
        self.skipped_cams: set[str] = set()
        self.written = 0
        self.timeline = Timeline(self.fps)

    def _writer(self, camera: str, size: tuple[int, int]) -> Mp4Writer | None:
        if camera in self.writers:
            return self.writers[camera]
        if "{camera}" not in self.save and self.writers:
            if camera not in self.skipped_cams:
                print(f"segstream: --save records one camera; skipping {camera} (use "
                      "--camera, or put {camera} in the file name)", file=sys.stderr)
                self.skipped_cams.add(camera)
            return None
        path = Path(self.save.replace("{camera}", path_part(camera)))
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = Mp4Writer(path, self.fps, size)
        if not writer.opened:
            raise OSError(f"cannot write video {path}: check the folder and the .mp4 suffix")
        self.writers[camera] = writer
        print(f"segstream: recording {camera} to {path}", file=sys.stderr)
        return writer

    def show(self, camera: str, seq: int, img: np.ndarray, t_ns: int = 0) -> bool:
        """Deliver one frame captured at ``t_ns`` (monotonic, publisher's clock); False when
        the user closed the window (q / Esc)."""
        delivered = self.window
        if self.save:
            size = (img.shape[1], img.shape[0])
            writer = self._writer(camera, size)
            if writer is not None:  # a video has one frame size: resized to it
                for _ in range(self.timeline.copies(camera, t_ns)):
                    writer.write(img)
                delivered = True
        if self.save_dir:
            path = self.save_dir / path_part(camera) / f"{seq:08d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), img):
                raise OSError(f"cannot write {path}: check the folder is writable")
            delivered = True
        self.written += delivered
        if self.window:
            cv2.imshow(f"segstream {camera}", img)
            return self.poll_window()
        return True

    def poll_window(self) -> bool:
        """Let the windows redraw and read a key; False when the user pressed q / Esc."""
        return not self.window or cv2.waitKey(1) & 0xFF not in (ord("q"), 27)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.release()
        if self.window:
            cv2.destroyAllWindows()


@report_errors
def run(args: argparse.Namespace) -> int:
    window = not args.no_window and has_display()
    if not window and not (args.save or args.save_dir):
        print("segstream: error: no display here; record with --save out.mp4 or "
              "--save-dir DIR (or set DISPLAY)", file=sys.stderr)
        return 2
    if args.count < 0 or not 0 <= args.alpha <= 1:
        print("segstream: error: --count must be >= 0 and --alpha in 0..1", file=sys.stderr)
        return 2
    save = args.save.replace("{camera}", "cam") if args.save else None
    if why := output_problem(save, "--save", suffixes=(".mp4", ".avi", ".mov")):
        print(f"segstream: error: {why}", file=sys.stderr)
        return 2
    try:  # a window shows the newest map per camera; recordings keep every map
        sub = open_subscriber(args, latest_only=window and not (args.save or args.save_dir),
                              frames=not args.no_frames)
    except connection_errors() as e:
        print(f"segstream: error: {e}", file=sys.stderr)
        return 2
    from stream.subscribe import FrameMessage, FramePairer, SourceEvent, SubscribeTimeoutError

    sinks = Sinks(args, window)
    pairer = FramePairer()
    table_wait = TableWait(TABLE_WAIT_S)
    code = 0
    try:
        for msg in messages(sub, sinks):
            if msg is None:  # nothing came: the window was kept responsive, q/Esc pressed
                break
            if isinstance(msg, SourceEvent):
                state, detail = terminal_safe(msg.state, 40), terminal_safe(msg.detail)
                print(f"[{msg.camera}] {state}{': ' + detail if detail else ''}",
                      file=sys.stderr)
                continue
            labels, frame = msg, None
            if isinstance(msg, FrameMessage) or pairer.frames_recent(msg.camera,
                                                                     msg.t_receive_mono_ns):
                pair = pairer.add(msg)  # with frames coming: draw the maps that have one
                if pair is None:
                    continue
                labels, frame = pair[0], pair[1].image
            if args.save and table_wait.hold(labels.camera, labels.class_table is not None,
                                             labels.t_receive_mono_ns):
                continue
            img = render(labels.labels, labels.class_table, legend=not args.no_legend,
                         frame=frame, alpha=args.alpha)
            if not sinks.show(labels.camera, labels.seq, img, labels.t_capture_mono_ns):
                break
            if args.count and sinks.written >= args.count:
                break
    except SubscribeTimeoutError as e:
        print(f"segstream: {e}", file=sys.stderr)
        code = 1
    except OSError as e:
        print(f"segstream: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        pass
    finally:
        sinks.close()
        sub.close()
    bad = f", bad camera frames {sub.stats.frames_bad}" if sub.stats.frames_bad else ""
    held = (f", skipped {table_wait.held} that came before their class table"
            if table_wait.held else "")
    print(f"segstream: {sinks.written} frames shown/saved ({pairer.paired} over camera "
          f"frames); lost {sub.stats.lost}, rejected {sub.stats.rejected}{bad}{held}",
          file=sys.stderr)
    return code
